"""VDOT distillation: losses, OT term, training steps."""

from vdot_jax.distill.ot import OTConfig, ot_cost, ot_direction, ot_loss  # noqa: F401
