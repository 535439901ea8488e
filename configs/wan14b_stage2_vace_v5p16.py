"""Stage 2 for 14B on v5p-16 (8 chips, two hosts): twice v5p-8's batch, with room in HBM and host memory.

    vdot train --config configs/wan14b_stage2_vace_v5p16.py --workdir gs://BUCKET/runs/wan14b_stage2
    JAX_PLATFORMS=cpu vdot plan --config configs/wan14b_stage2_vace_v5p16.py --model wan2.1-vace-14b \\
        --topology v5p:2x2x2 --mesh fsdp=2,context=4

configs/wan14b_stage2_vace_v5p8.py (every small-slice lever: ZeRO-3 over all chips, bf16 moments and the EMA in
host memory, the teacher and the fp32 gradient accumulator there too, offloaded bf16 layer inputs) on twice the
chips: two videos in flight (``fsdp=2``), each split over 4 chips by sequence (``context=4``), so each chip holds
half the train state of v5p-8 and the same activations. Global batch 2 x 3 micro-batches; a checkpoint every 30
minutes (Spot). The compiled figures are in docs/scaling.md ("Recommended meshes").
"""

from pathlib import Path

from vdot_jax.train.config import load_config


def get_config():
    c = load_config(Path(__file__).with_name("wan14b_stage2_vace_v5p8.py"))
    c.mesh.ici = "fsdp=2,context=4"
    c.gan.separate_real = False  # not needed here, and not compiled with fsdp=2 (libtpu crashed on it for v5e-8)
    c.train.checkpoint_every_minutes = 30.0  # a preempted Spot slice loses at most ~30 min (plus one step)
    return c
