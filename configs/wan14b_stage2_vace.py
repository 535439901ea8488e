"""Stage 2 for 14B: VDOT on multi-task VACE data from the 14B stage-1 generator (the released vdot_14b recipe).

    vdot train --config configs/wan14b_stage2_vace.py --workdir runs/wan14b_stage2

As configs/wan1_3b_stage2_vace.py (release: 1,200 steps, 832x480, 81 frames, 16 fps, batch 1 per GPU,
accumulation 3, the distillation defaults) with Wan2.1-VACE-14B as teacher and critic, GAN taps at blocks
23, 31, 39, and the same memory notes as configs/wan14b_stage1_t2v.py.

On TPU v5p-64 (``--config.mesh.ici=fsdp=16,context=4``) every program compiles and fits; add
``--config.model.remat=offload`` for headroom (largest peak 92.2 -> 73.4 GiB of 95: docs/scaling.md).
"""

from vdot_jax.train.config import release_config


def get_config():
    c = release_config(teacher="models/wan2.1-vace-14b", generator="runs/wan14b_stage1",
                       manifest="data/vace_train.csv", precomputed="data/vace_14b", steps=1200,
                       mesh="fsdp=-1")  # release: 1,200 steps
    c.gan.taps = ()  # release taps for 40 layers: blocks 23, 31, 39
    return c
