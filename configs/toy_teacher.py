"""The toy VACE teacher shipped in vdot_jax/assets/toy_teacher: flow matching on the procedural world, on CPU.

    vdot train --config configs/toy_teacher.py --workdir runs/toy_teacher
    vdot export --ckpt runs/toy_teacher --ema --format diffusers --transformer-only --out vdot_jax/assets/toy_teacher

A 4-layer VACE DiT (dim 64, 2 heads of 32, VACE hints at blocks 0 and 2) on the toy VAE's latent space
(12 channels, stride 1x2x2; 5 frames at 32x32 -> 5x16x16 latents, 320 tokens; more with reference images),
text from ToyTextEncoder (width 32), every task of the world. Captions are dropped 10% of the time for
classifier-free guidance. The shipped weights are the EMA at step 4,000 of exactly this config (1.9 MB, float32).

Measured on the shared 2-core CPU (jax 0.10.2, batch 8): 0.4 s per step, 4,000 steps in 32 minutes; the flow
loss falls from 1.7 to 0.25 (mean over steps 3,000-4,000). The result is a weak teacher: it follows colours,
the given frames and the control maps in part (per-task figures in the README's demo table), but shapes
sampled from noise are often fragmented. A longer run should help (a continuation's mean loss was 0.238 over
steps 5,000-6,000; its samples were not evaluated); this length keeps the shipped weights reproducible in half
an hour on 2 cores. Not a release config.
"""

from vdot_jax.demo import TOY_WORLD
from vdot_jax.train.config import base_config


def get_config():
    c = base_config()
    c.mode = "flow"
    c.seed = 0

    c.model.arch.update(dim=64, ffn_dim=256, num_heads=2, num_layers=4, in_channels=12, out_channels=12,
                        text_dim=32, freq_dim=64, vace_layers=(0, 2), vace_in_channels=28)
    c.model.init_seed = 0
    c.model.vace_zero_init = False  # from scratch: draw VACE's context/hint projections (they start at 0 in VACE)

    c.flow.lr = 1e-3
    c.flow.b1 = 0.9
    c.flow.b2 = 0.99
    c.flow.weight_decay = 0.01
    c.flow.clip_norm = 1.0
    c.flow.warmup_steps = 100
    c.flow.schedule = "cosine"
    c.flow.final_lr_fraction = 0.05
    c.flow.timestep_shift = 3.0
    c.flow.text_dropout = 0.1
    c.flow.ema_decay = 0.999
    c.flow.ema_start = 100
    c.optim.accumulation = 1

    c.data.source = "toy"
    c.data.encoder = "toy"
    c.data.batch_size = 8
    for k, v in TOY_WORLD.items():  # the world the demo distils and evaluates in (one definition)
        setattr(c.data.toy, k, v)
    c.data.num_threads = 2
    c.data.prefetch = 4

    c.mesh.ici = ""
    c.train.steps = 4000
    c.train.log_every = 10
    c.train.checkpoint_every = 250
    c.train.keep = 2
    c.train.plot_every = 250

    c.sample.every = 1000
    c.sample.num = 4
    c.sample.solver = "unipc"
    c.sample.steps = 20
    c.sample.shift = 3.0
    c.sample.guidance = 3.0
    return c
