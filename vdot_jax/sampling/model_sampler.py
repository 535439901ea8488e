"""A compiled sampler for an NNX DiT given as (graphdef, params): used for samples during training and
for the demo's evaluation, where many parameter sets of one architecture are sampled with one program."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from vdot_jax.sampling.solvers import classifier_free_guidance, sample


@functools.lru_cache(maxsize=32)
def model_sampler(graphdef, *, steps: int, shift: float, guidance: float, solver: str = "unipc"):
    """jitted ``(params, noise, text, neg_text, context) -> latents``, one per setting (and input shape).

    ``context`` may be None (text-to-video). With ``guidance`` != 1, cond and uncond (``neg_text``) run
    as one batch (classifier-free guidance on the velocity)."""

    def run(params, noise, text, neg_text, context):
        model = nnx.merge(graphdef, params)
        if guidance == 1.0:
            fn = lambda x, t: model(x, t, text, context)  # noqa: E731
        else:
            both_ctx = None if context is None else jnp.concatenate([context, context])
            both_text = jnp.concatenate([text, neg_text])
            fn = classifier_free_guidance(lambda x, t: model(x, t, both_text, both_ctx), guidance)
        return sample(fn, noise, num_steps=steps, shift=shift, solver=solver)

    return jax.jit(run)
