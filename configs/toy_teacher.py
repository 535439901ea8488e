"""The toy VACE teacher: flow matching on the procedural world (every task), on CPU.

    vdot train --config configs/toy_teacher.py --workdir runs/toy_teacher

A 4-layer VACE DiT (dim 64, 2 heads of 32, VACE hints at blocks 0 and 2) on the toy VAE's latent space
(12 channels, stride 1x2x2; 9 frames at 32x32 -> 9x16x16 latents, 576 tokens; 640 with a reference image),
text from ToyTextEncoder (width 32). Captions are dropped 10% of the time for classifier-free guidance.
The demo can distil from this run's EMA (``model.teacher = WORKDIR``, ``model.teacher_ema = True``; or
``restore_model(WORKDIR, ema=True)``). Not a release config: sizes and schedule were chosen for 2 CPU cores.

Measured on the shared 2-core CPU (jax 0.10.2, batch 8): ~0.85 s per step, so 4,000 steps take about an hour.
At 500-800 steps the loss is ~0.35-0.45 (from 1.7): captions' colours are learnt and mid-noise denoising works,
but samples from pure noise are still token-level noise and the VACE context is barely used (predictions with and
without it differ little) -- the context pathway learns slowly from scratch, hence ``vace_zero_init = False``.
Train longer (or tune) before shipping a teacher.
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
