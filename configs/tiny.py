"""Tiny CPU run for tests and smoke checks: the toy world, a random 2-layer VACE model, a few steps.

    vdot train --config configs/tiny.py --workdir /tmp/tiny          # VDOT: all four phases
    vdot train --config configs/tiny.py:flow --workdir /tmp/tiny     # flow matching (one phase)

TTUR is 2 instead of the release's 5 so the generator updates early. Compilation dominates: a minute or
more per VDOT phase on 2 busy cores the first time, seconds with a compilation cache
(``--config.train.compile_cache=DIR``).
"""

from vdot_jax.train.config import base_config


def get_config(mode: str = "vdot"):
    c = base_config()
    c.mode = mode
    c.seed = 0

    # a random 2-layer VACE model on the toy latent space (12 channels, 28-channel context, toy text width 8)
    c.model.arch.update(dim=16, ffn_dim=32, num_heads=2, num_layers=2, in_channels=12, out_channels=12,
                        text_dim=8, freq_dim=16, vace_layers=(0,), vace_in_channels=28)
    c.gan.token_dim = 8
    c.gan.num_heads = 2
    c.gan.ffn_dim = 16  # release 13824: far too wide for this toy
    c.teacher_dtype = "float32"

    c.ttur = 2
    c.optim.accumulation = 1
    c.optim.generator_lr = 1e-4
    c.optim.critic_lr = 1e-3
    c.flow.lr = 1e-3

    c.data.source = "toy"
    c.data.encoder = "toy"
    c.data.batch_size = 2
    c.data.toy.frames = 5
    c.data.toy.height = 32
    c.data.toy.width = 32
    c.data.toy.text_dim = 8
    c.data.toy.text_len = 8
    c.data.toy.task_mix.r2v = 0.0  # one latent shape (no reference frame), so each phase compiles once
    c.data.num_threads = 1
    c.data.prefetch = 2
    # manifest data at the toy size (the tests' videos): 5 frames, 32x32, taken as they are
    c.data.num_frames = 5
    c.data.height = 32
    c.data.width = 32
    c.data.fps = 0.0

    c.train.steps = 6
    c.train.checkpoint_every = 2
    c.train.keep = 2
    c.train.plot_every = 0
    c.sample.every = 0
    return c
