"""vdot-jax: VDOT distillation of Wan2.1-VACE into a 4-step unified video generator, in JAX/Flax."""

__version__ = "0.1.0"

from vdot_jax.models.vae import load_vae  # noqa: E402,F401

_LAZY = {"generate": "vdot_jax.sampling.pipeline", "Pipeline": "vdot_jax.sampling.pipeline"}


def __getattr__(name):  # lazy: `import vdot_jax` stays light; vdot_jax.generate loads the pipeline on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vdot_jax' has no attribute {name!r}")
