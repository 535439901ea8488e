"""Stage 2 for 14B on the smallest v5p slice, v5p-8 (4 chips, one host), as the release trains on 4 GPUs.

    vdot train --config configs/wan14b_stage2_vace_v5p8.py --workdir runs/wan14b_stage2
    JAX_PLATFORMS=cpu vdot plan --config configs/wan14b_stage2_vace_v5p8.py --model wan2.1-vace-14b \\
        --topology v5p:2x2x1 --mesh fsdp=1,context=4 --hbm-gib 76

configs/wan14b_stage2_vace.py (the release recipe) with every lever of docs/scaling.md for a small slice: one
video split over the 4 chips by sequence (``context=4``, Ulysses over 40 heads; global batch 1 x 3
micro-batches), the train state split over all 4 chips (ZeRO-3 over fsdp x context), the AdamW moments (in
bf16) and the EMA in the host's memory, the frozen teacher there too (brought in a layer at a time), the float32
gradient accumulator there too (added into a layer at a time), and each layer's input (stored in bf16, as the
release's) offloaded there in the backward. What the compiler measured for each program is in docs/scaling.md
("Small slices"): every program under 76 GiB per chip (74.1 at most), 71.5 GiB per chip in host memory.
"""

from vdot_jax.train.config import release_config


def get_config():
    c = release_config(teacher="models/wan2.1-vace-14b", generator="runs/wan14b_stage1",
                       manifest="data/vace_train.csv", precomputed="data/vace_14b", steps=1200,
                       mesh="fsdp=1,context=4")
    c.gan.taps = ()  # release taps for 40 layers: blocks 23, 31, 39
    c.model.remat = "offload"
    c.mesh.opt_state_memory = "host"
    c.mesh.grad_dtype = "compute"  # one fp32 gradient buffer, not two (docs/scaling.md)
    c.mesh.teacher_memory = "host"  # the frozen bf16 teacher (8.1 GiB per chip) streamed in a layer at a time
    c.optim.moment_dtype = "bfloat16"  # AdamW mu/nu in bf16 as the release's: host 102.6 -> 78.1 GiB per chip
    c.model.residual_dtype = "bfloat16"  # the streams stored in bf16 between blocks, as the release's: half the
    # offloaded layer inputs (host -9 to -16 GiB per chip; docs/scaling.md)
    c.mesh.grad_memory = "host"  # the fp32 gradient accumulator (16 GiB per chip) in host memory: HBM -23 to -27
    c.gan.separate_real = True  # generator_gan: the critic's backward over the fake videos only: host -7.5 GiB
    return c
