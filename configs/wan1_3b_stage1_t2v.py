"""Stage 1 for 1.3B (AccWanInit): distil Wan2.1-T2V-1.3B into a 4-step text-to-video generator.

    vdot convert --src Wan-AI/Wan2.1-T2V-1.3B-Diffusers --dst models/wan2.1-t2v-1.3b   (+ vae, text encoder)
    vdot precompute --config configs/wan1_3b_stage1_t2v.py --out data/t2v_1_3b
    vdot train --config configs/wan1_3b_stage1_t2v.py --workdir runs/wan1_3b_stage1

Release values: 1,500 steps on text-to-video data, 832x480, 81 frames, 16 fps, batch 1 per GPU, gradient
accumulation 3; the losses, TTUR, optimiser and schedule are the distillation defaults (release). The release
does not use different loss terms for this stage (docs/release_parity.md), so the generator loss is the release's
0.2 DMD + 0.8 OT with the GAN alternation; DMD only is `--config.loss.ot_weight=0 --config.loss.use_gan=false`.
The manifest needs `caption` and `video` per row (the ground truth is the GAN term's real data).
"""

from vdot_jax.train.config import release_config


def get_config():
    c = release_config(teacher="models/wan2.1-t2v-1.3b", generator="", manifest="data/t2v_train.csv",
                       precomputed="data/t2v_1_3b", steps=1500, mesh="fsdp=-1")  # release: 1,500 steps
    c.gan.taps = ()  # release taps for 30 layers: blocks 13, 21, 29
    return c
