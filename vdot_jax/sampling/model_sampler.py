"""Denoising programs: the whole sampling loop of an NNX DiT given as (graphdef, params), one jitted program per
setting, and the one cache of them and of their ahead-of-time compilations. Used by ``Pipeline.denoise``
(``vdot generate``), samples during training, the demo's evaluation (many parameter sets of one architecture
sampled with one program) and ``vdot plan``."""

from __future__ import annotations

import functools
from typing import Callable

import jax
from flax import nnx

from vdot_jax.models.layers import to_device
from vdot_jax.parallel.sharding import compile_program
from vdot_jax.sampling.solvers import classifier_free_guidance, guidance_context, sample


class DenoiseProgram:
    """``(params, noise, text, neg_text, context) -> latents`` for one setting: callable (jit), or compiled ahead
    of time once per argument signature and mesh (``compile``) when the caller wants the compile time apart."""

    def __init__(self, jitted):
        self.jitted = jitted
        self.compiled: dict = {}  # (mesh, argument signature) -> compiled program

    def __call__(self, params, noise, text, neg_text, context):
        return self.jitted(params, noise, text, neg_text, context)

    def compile(self, *args, mesh=None, log: Callable[[str], None] | None = None):
        """(compiled, CompileReport, or None when it was compiled before) for these arguments, traced under
        ``mesh`` (with the default logical rules) when given."""
        leaves, treedef = jax.tree.flatten(args)
        key = (mesh, treedef, tuple((tuple(a.shape), str(a.dtype), getattr(a, "sharding", None)) for a in leaves))
        if key in self.compiled:
            return self.compiled[key], None
        compiled, report = compile_program(self.jitted, *args, name="denoising program", mesh=mesh, log=log)
        self.compiled[key] = compiled
        return compiled, report


def _denoise_fn(graphdef, steps, shift, solver, guidance, context_scale, on_step):
    """The whole sampling loop as one function of (params, noise, text, negative text, VACE context)."""

    def run(params, noise, text, neg_text, context):
        model = nnx.merge(graphdef, to_device(params, keep_stacks=True))  # a host-kept teacher: layers stream in
        text_b, ctx_b = guidance_context((text, context), (neg_text, context), guidance)

        def model_fn(x, t):
            v = model(x, t, text_b, ctx_b, context_scale) if ctx_b is not None else model(x, t, text_b)
            if on_step is not None:
                jax.debug.callback(on_step, v.reshape(-1)[:1])
            return v

        return sample(classifier_free_guidance(model_fn, guidance), noise, num_steps=steps, shift=shift,
                      solver=solver)

    return run


@functools.lru_cache(maxsize=32)
def model_sampler(graphdef, *, steps: int, shift: float, guidance: float, solver: str = "unipc",
                  context_scale: float = 1.0, on_step: Callable | None = None) -> DenoiseProgram:
    """The denoising program of one setting (and architecture and run-time options: the graphdef), built once.

    ``context`` may be None (text-to-video). With ``guidance`` != 1, cond and uncond (``neg_text``) run as one
    batch (classifier-free guidance on the velocity). ``context_scale`` scales the VACE hints. ``on_step``, a
    module-level function (it is part of the cache key), is called on the host after every network evaluation
    (through ``jax.debug.callback``) with a one-element probe of the velocity."""
    return DenoiseProgram(jax.jit(_denoise_fn(graphdef, int(steps), float(shift), solver, float(guidance),
                                              float(context_scale), on_step)))

