"""Stage 1 for 14B (AccWanInit): distil Wan2.1-T2V-14B into a 4-step text-to-video generator.

    vdot train --config configs/wan14b_stage1_t2v.py --workdir runs/wan14b_stage1

As configs/wan1_3b_stage1_t2v.py (release: 1,500 steps, 832x480, 81 frames, 16 fps, batch 1 per GPU,
accumulation 3), with the 14B teacher and GAN taps at blocks 23, 31, 39. Memory: the fp32 generator and critic
with their AdamW moments need 16+ H100s or fsdp=8 on H200s (docs/scaling.md); add context=2 (Ulysses, which attention "auto" picks
when context > 1: --config.mesh.ici=fsdp=-1,context=2) to halve activations.
"""

from vdot_jax.train.config import release_config


def get_config():
    c = release_config(teacher="models/wan2.1-t2v-14b", generator="", manifest="data/t2v_train.csv",
                       precomputed="data/t2v_14b", steps=1500, mesh="fsdp=-1")  # release: 1,500 steps
    c.gan.taps = ()  # release taps for 40 layers: blocks 23, 31, 39
    return c
