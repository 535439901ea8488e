"""Stage 2 for 14B: VDOT on multi-task VACE data from the 14B stage-1 generator (the released vdot_14b recipe).

    vdot train --config configs/wan14b_stage2_vace.py --workdir runs/wan14b_stage2

As configs/wan1_3b_stage2_vace.py (release: 1,200 steps, 832x480, 81 frames, 16 fps, batch 1 per GPU,
accumulation 3, the distillation defaults) with Wan2.1-VACE-14B as teacher and critic, GAN taps at blocks
23, 31, 39, and the same memory notes as configs/wan14b_stage1_t2v.py.

Mesh and remat are the ones docs/scaling.md compiled for TPU v5p-128 (``v5p:4x4x4``, 64 chips):
``fsdp=16,context=4`` with ``model.remat=offload`` (every program fits; largest peak 73.4 GiB of 95, 92.2 GiB
with full remat); the launcher: ``launch/tpu_pod.sh run --accelerator v5p-128 --config
configs/wan14b_stage2_vace.py ...`` (a v5p-N slice has N TensorCores, N/2 chips). The smallest slice that fits is
v5p-16: configs/wan14b_stage2_vace_v5p16.py. On another device count give the mesh, e.g. 16 H100s:
``--config.mesh.ici=fsdp=16 --config.model.remat=full``.
"""

from vdot_jax.train.config import release_config


def get_config():
    c = release_config(teacher="models/wan2.1-vace-14b", generator="runs/wan14b_stage1",
                       manifest="data/vace_train.csv", precomputed="data/vace_14b", steps=1200,
                       mesh="fsdp=16,context=4")  # release: 1,200 steps
    c.model.remat = "offload"  # docs/scaling.md: the remat that fits every phase on v5p-128
    c.train.checkpoint_every_minutes = 30.0  # a preempted Spot slice loses at most ~30 min (plus one step)
    c.gan.taps = ()  # release taps for 40 layers: blocks 23, 31, 39
    return c
