"""Stage 2 for 1.3B: VDOT on multi-task VACE data, from the stage-1 generator.

    vdot convert --src Wan-AI/Wan2.1-VACE-1.3B-diffusers --dst models/wan2.1-vace-1.3b
    vdot precompute --config configs/wan1_3b_stage2_vace.py --out data/vace_1_3b
    vdot train --config configs/wan1_3b_stage2_vace.py --workdir runs/wan1_3b_stage2

Release values: 1,200 steps on multi-task data, 832x480, 81 frames, 16 fps, batch 1 per GPU, accumulation 3,
0.2 DMD + 0.8 OT (Sinkhorn eps 0.1, 60 iterations, 2x2 pooling) alternating with the GAN terms, TTUR 5,
AdamW (0, 0.999), generator lr 2e-6, critic lr 4e-7, clipping 5 (all distillation defaults).
Teacher and critic: Wan2.1-VACE-1.3B. Generator: the stage-1 generator (a text-to-video Wan) fills the main
blocks; the VACE blocks start from the VACE teacher's (how a T2V stage-1 result becomes a VACE student here).
The manifest has the release's columns: task, src_video, src_mask, src_ref_images, caption, plus video.

Mesh and remat are the ones docs/scaling.md compiled for TPU v5e-64, the smallest v5e slice (16 GiB chips)
that holds this run: ``fsdp=16,context=4`` with ``model.remat=offload`` (every program fits, peak 14.8 GiB); the
launcher: ``launch/tpu_pod.sh run --accelerator v5litepod-64 --config configs/wan1_3b_stage2_vace.py ...``. On
another device count give the mesh, e.g. 8 GPUs: ``--config.mesh.ici=fsdp=-1 --config.model.remat=full``.
"""

from vdot_jax.train.config import release_config


def get_config():
    c = release_config(teacher="models/wan2.1-vace-1.3b", generator="runs/wan1_3b_stage1",
                       manifest="data/vace_train.csv", precomputed="data/vace_1_3b", steps=1200,
                       mesh="fsdp=16,context=4")  # release: 1,200 steps
    c.model.remat = "offload"  # docs/scaling.md: the remat that fits every phase on v5e-64
    c.train.checkpoint_every_minutes = 30.0  # a preempted Spot slice loses at most ~30 min (plus one step)
    c.gan.taps = ()  # release taps for 30 layers: blocks 13, 21, 29
    return c
