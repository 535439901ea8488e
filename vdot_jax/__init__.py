"""vdot-jax: VDOT distillation of Wan2.1-VACE into a 4-step unified video generator, in JAX/Flax."""

__version__ = "0.1.0"

from vdot_jax.models.vae import load_vae  # noqa: E402,F401
