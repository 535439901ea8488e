"""Sample videos during training: the hook's interface and the default sampler.

The trainer calls ``sampler(ctx)`` every ``config.sample.every`` steps with a ``SampleContext``; a sampler may
write anything under ``ctx.outdir``. ``vdot demo`` passes its own; ``train(..., sampler=None)`` turns samples off.

The default sampler takes the first ``sample.num`` rows of the step's first micro-batch, generates from fresh noise
with the model being trained (vdot: the generator, its EMA if kept; flow: the model, its EMA if kept) using
``vdot_jax.sampling.solvers.sample`` (``sample.solver/steps/shift``, classifier-free guidance ``sample.guidance``
with the negative prompt), decodes, and writes ``write_samples`` columns condition | real | generated. Decoding
needs the toy VAE (``data.encoder = "toy"``) or a Wan VAE (``model.vae``); single-process runs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@dataclass
class SampleContext:
    step: int  # completed training steps
    state: Any  # the train state (TrainState or FlowState); do not donate or modify it
    trainer: Any  # the Distiller or FlowTrainer (graphdefs)
    mode: str  # "vdot" or "flow"
    config: Any
    arrays: dict  # this host's batch of the step: {key: numpy [A, b, ...]}
    info: dict  # {"task": [...], "caption": [...], ...} over A x b (micro-batch major)
    outdir: Path  # WORKDIR/samples/step_<N>


Sampler = Callable[[SampleContext], Any]


def model_params(ctx: SampleContext):
    """(graphdef, params) of the network being trained (EMA when kept)."""
    s = ctx.state
    if ctx.mode == "vdot":
        return ctx.trainer.gen_def, (s.ema if s.ema is not None else s.generator)
    return ctx.trainer.model_def, (s.ema if s.ema is not None else s.params)


def generate_latents(graphdef, params, noise, text, neg_text, context, *, solver: str, steps: int, shift: float,
                     guidance: float):
    """Sampled latents from ``noise`` with the model ``merge(graphdef, params)`` (compiled once per setting)."""
    from vdot_jax.sampling.model_sampler import model_sampler

    fn = model_sampler(graphdef, steps=steps, shift=shift, guidance=guidance, solver=solver)
    return fn(params, noise, text, neg_text, context)


class DefaultSampler:
    """Generate and write condition | real | generated for a few rows of the step's batch (module docstring)."""

    def __init__(self, config):
        self.config = config
        self._decoder = None

    def _decode(self, z: np.ndarray) -> np.ndarray:
        """Normalised latents [N, z, f, h, w] -> video [N, 3, T, H, W]."""
        c = self.config
        if self._decoder is None:
            if c.data.encoder == "toy":
                from vdot_jax.data.pipeline import toy_vae_config
                from vdot_jax.models.toy_vae import ToyVAE

                vae = ToyVAE(toy_vae_config(c))
            else:
                from vdot_jax.sources import load_vae

                vae = load_vae(c.model.vae)
            self._decoder = lambda x: np.asarray(vae.decode(vae.denormalize(jnp.asarray(x))), np.float32)
        return self._decoder(z)

    def available(self) -> str | None:
        """None when samples can be made, else why not."""
        if jax.process_count() > 1:
            return "the default sampler runs in single-process runs only"
        if self.config.data.encoder != "toy" and not self.config.model.vae:
            return "decoding samples needs config.model.vae (a Wan VAE)"
        return None

    def __call__(self, ctx: SampleContext) -> dict:
        from vdot_jax.train.logging import write_samples

        s = self.config.sample
        a = ctx.arrays
        n = max(1, min(int(s.num), a["latents"].shape[1]))
        pick = lambda k: None if k not in a else jnp.asarray(a[k][0, :n])  # noqa: E731
        latents, text, neg, context = pick("latents"), pick("text"), pick("neg_text"), pick("context")
        graphdef, params = model_params(ctx)
        noise = jax.random.normal(jax.random.key(int(s.seed)), latents.shape, jnp.float32)
        out = generate_latents(graphdef, params, noise, text, neg, context, solver=s.solver, steps=int(s.steps),
                               shift=float(s.shift), guidance=float(s.guidance))
        frames = self._frames()
        refs = latents.shape[2] - frames if frames is not None else 0
        columns = {}
        if context is not None and self.config.data.encoder == "toy":
            zd = latents.shape[1]
            cond = np.asarray(context)[:, :zd, refs:] + np.asarray(context)[:, zd:2 * zd, refs:]
            # inactive + reactive parts of the frames: the toy VAE is linear, so decode(sum) = F
            columns["condition"] = self._decode_sum(cond)
        columns["real"] = self._decode(np.asarray(latents)[:, :, refs:])
        columns["generated"] = self._decode(np.asarray(out)[:, :, refs:])
        written = write_samples(ctx.outdir, columns, fps=float(s.fps))
        (ctx.outdir / "captions.txt").write_text(
            "".join(f"{t}\t{c}\n" for t, c in zip(ctx.info["task"][:n], ctx.info["caption"][:n])))
        return written

    def _frames(self) -> int | None:
        c = self.config
        if c.data.encoder == "toy" and c.data.source == "toy":
            return int(c.data.toy.frames)
        from vdot_jax.conditions import latent_frames

        try:
            return latent_frames(int(c.data.num_frames), None if c.data.encoder == "wan" else _ToyStride())
        except ValueError:
            return None

    def _decode_sum(self, z_sum: np.ndarray) -> np.ndarray:
        """Decode inactive + reactive normalised latents of the toy VAE: each is (enc - mean)/std, so their sum is
        (enc(F) - 2 mean)/std; add mean/std back once before the usual denormalise-decode."""
        from vdot_jax.data.pipeline import toy_vae_config

        cfg = toy_vae_config(self.config)
        shift = (np.asarray(cfg.latents_mean, np.float32) / np.asarray(cfg.latents_std, np.float32))
        return self._decode(z_sum + shift.reshape(1, -1, 1, 1, 1))


class _ToyStride:
    z_dim = 12
    stride = (1, 2, 2)


def default_sampler(config) -> DefaultSampler:
    return DefaultSampler(config)
