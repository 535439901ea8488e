"""Flow-matching sampling: diffusers-exact schedules (numpy) and jit-able solvers (jax)."""

from vdot_jax.sampling.schedules import (
    NUM_TRAIN_TIMESTEPS,
    STUDENT_NUM_STEPS,
    STUDENT_SHIFT,
    euler_flow_schedule,
    flow_schedule,
    shift_sigma,
    student_schedule,
    unipc_flow_schedule,
    warp_timesteps,
)
from vdot_jax.sampling.solvers import (
    UniPCCoefficients,
    classifier_free_guidance,
    guidance_context,
    sample,
    sample_with_sigmas,
    unipc_coefficients,
)

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "STUDENT_NUM_STEPS",
    "STUDENT_SHIFT",
    "UniPCCoefficients",
    "classifier_free_guidance",
    "euler_flow_schedule",
    "flow_schedule",
    "guidance_context",
    "sample",
    "sample_with_sigmas",
    "shift_sigma",
    "student_schedule",
    "unipc_coefficients",
    "unipc_flow_schedule",
    "warp_timesteps",
]
