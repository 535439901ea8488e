"""Stage 2 for 1.3B on one v5e host, v5e-8 (8 chips of 16 GiB).

    vdot train --config configs/wan1_3b_stage2_vace_v5e8.py --workdir runs/wan1_3b_stage2
    JAX_PLATFORMS=cpu vdot plan --config configs/wan1_3b_stage2_vace_v5e8.py --model wan2.1-vace-1.3b \\
        --topology v5e:2x4

configs/wan1_3b_stage2_vace.py (the release recipe) with the small-slice levers of docs/scaling.md: each video
split over 4 chips by sequence (``context=4``, the most VACE-1.3B's 12 heads allow), 2 videos in flight
(``fsdp=2``; global batch 2 x 3 micro-batches), the train state split over all 8 chips (ZeRO-3 over fsdp x
context), the AdamW moments and the EMA in the host's memory, and each layer's input offloaded there in the
backward. What the compiler measured is in docs/scaling.md ("Small slices").
"""

from vdot_jax.train.config import release_config


def get_config():
    c = release_config(teacher="models/wan2.1-vace-1.3b", generator="runs/wan1_3b_stage1",
                       manifest="data/vace_train.csv", precomputed="data/vace_1_3b", steps=1200,
                       mesh="fsdp=2,context=4")
    c.gan.taps = ()  # release taps for 30 layers: blocks 13, 21, 29
    c.model.remat = "offload"
    c.mesh.opt_state_memory = "host"
    c.mesh.cast_per_layer = True  # no whole-stack bf16 weight copies before the layer scans (-0.89 GiB, docs/scaling.md)
    # one fp32 gradient buffer: critic_gan fits (15.79 GiB of 16) only with it, and libtpu 0.0.42 compiles it for
    # v5e:2x4 only with its memory-space assignment off (an MSA check failure otherwise; docs/scaling.md)
    c.mesh.grad_dtype = "compute"
    c.mesh.memory_space_assignment = False
    return c
