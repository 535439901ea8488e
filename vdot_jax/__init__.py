"""vdot-jax: VDOT distillation of Wan2.1-VACE into a 4-step unified video generator, in JAX/Flax.

The Python API (README "Using the model from Python"): ``load_transformer``, ``Runtime``, ``WanConfig``,
``load_vae``, ``generate``, ``Pipeline``, and ``VdotError`` (the base of every error a user can cause).
"""

__version__ = "0.1.0"

from vdot_jax.errors import VdotError  # noqa: E402,F401

# Lazy: `import vdot_jax` (and so `vdot --help`) stays light; each name loads its module on first use.
_LAZY = {
    "generate": "vdot_jax.sampling.pipeline",
    "Pipeline": "vdot_jax.sampling.pipeline",
    "load_transformer": "vdot_jax.sources",
    "load_vae": "vdot_jax.sources",
    "Runtime": "vdot_jax.models.config",
    "WanConfig": "vdot_jax.models.config",
}
__all__ = ["VdotError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vdot_jax' has no attribute {name!r}")
