"""Rectified-flow noise schedules (sigma and timestep tables), computed in numpy.

Convention (docs/method.md, "Sampling"): x_t = (1 - s) x0 + s noise with s = t / 1000, and the
network is told the timestep t in the 0..1000 scale. A schedule of ``n`` steps is a pair
``(sigmas, timesteps)``: ``sigmas`` has n + 1 float32 entries ending in 0 (the sigma each
step starts from, plus the terminal clean sample) and ``timesteps`` has n float32 entries,
the values the network sees at each step.

The tables reproduce diffusers' schedulers value for value, because the teacher (50 UniPC
steps) and the released student (4 UniPC steps) were run with them:

* ``unipc_flow_schedule`` == ``UniPCMultistepScheduler(prediction_type="flow_prediction",
  use_flow_sigmas=True, flow_shift=k).set_timesteps(n)``.  Its quirks, kept on purpose:
  the unshifted grid is ``linspace(1, 1/1000, n + 1)[:-1]`` (it never reaches 0, so the
  last step starts above the plain ``k``-shift of ``1/n``), the first sigma is nudged to
  ``1 - 1e-6``, and the timesteps are ``int64(sigma * 1000)`` in float64, i.e. truncated,
  so the first one is 999, not 1000.
* ``euler_flow_schedule`` == ``FlowMatchEulerDiscreteScheduler(shift=k).set_timesteps(n)``.
  Its quirk: the grid runs linearly from 1000 down to 1000 * sigma_min, where sigma_min is
  the *already shifted* smallest training sigma, and is then shifted again, so the last
  sigma is shifted twice (shift 16, 4 steps ends at t = 204, not near 0).  Its timesteps
  are float32 ``sigma * 1000`` (not truncated).
"""

from __future__ import annotations

import numpy as np

NUM_TRAIN_TIMESTEPS = 1000

# The released 4-step student (docs/method.md, "Sampling"): UniPC, 4 steps, shift 16, no CFG.
STUDENT_NUM_STEPS = 4
STUDENT_SHIFT = 16.0


def shift_sigma(s, shift):
    """Timestep shift s' = k s / (1 + (k - 1) s); works on floats, numpy and jax arrays.

    k > 1 moves every sigma towards 1 (more time spent at high noise), which is what
    high-resolution video needs; it maps 0 -> 0 and 1 -> 1.
    """
    return shift * s / (1 + (shift - 1) * s)


def unipc_flow_schedule(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """Sigmas [n+1] and timesteps [n] (float32) of diffusers' flow-sigma UniPC scheduler.

    The timesteps are whole numbers (diffusers stores them as int64); they are returned as
    float32, which holds them exactly, because the network takes a float timestep.
    """
    sigmas = np.linspace(1.0, 1.0 / num_train_timesteps, num_steps + 1)[:-1]  # float64
    sigmas = shift_sigma(sigmas, float(shift))
    if abs(sigmas[0] - 1.0) < 1e-6:  # diffusers keeps the first step off sigma = 1 exactly
        sigmas[0] -= 1e-6
    timesteps = (sigmas * num_train_timesteps).astype(np.int64)  # truncation, as torch .to(int64)
    sigmas = np.append(sigmas, 0.0).astype(np.float32)
    return sigmas, timesteps.astype(np.float32)


def _euler_sigma_min(shift: float, num_train_timesteps: int) -> float:
    """diffusers' sigma_min: the smallest training sigma, shifted, computed in float32."""
    s = np.float32(1.0) / np.float32(num_train_timesteps)
    k = np.float32(shift)
    return float(k * s / (np.float32(1.0) + (k - np.float32(1.0)) * s))


def euler_flow_schedule(num_steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
    """Sigmas [n+1] and timesteps [n] (float32) of diffusers' FlowMatchEulerDiscreteScheduler."""
    sigma_min = _euler_sigma_min(shift, num_train_timesteps)
    # sigma_max is shift(1) == 1 exactly.
    t = np.linspace(float(num_train_timesteps), sigma_min * num_train_timesteps, num_steps)
    sigmas = shift_sigma(t / num_train_timesteps, float(shift)).astype(np.float32)
    timesteps = sigmas * np.float32(num_train_timesteps)  # float32 product, as torch does
    return np.append(sigmas, np.float32(0.0)), timesteps


def flow_schedule(solver: str, num_steps: int, shift: float):
    """The schedule diffusers pairs with ``solver`` ("unipc" or "euler")."""
    if solver == "unipc":
        return unipc_flow_schedule(num_steps, shift)
    if solver == "euler":
        return euler_flow_schedule(num_steps, shift)
    raise ValueError(f"unknown solver {solver!r}; expected 'unipc' or 'euler'")


def warp_timesteps(base=(1000, 750, 500, 250), shift: float = 8.0) -> np.ndarray:
    """Shift a timestep list: t' = 1000 * shift_sigma(t / 1000, shift), float32.

    This is the plain shift of a given grid (no diffusers quirks): the timesteps a student
    is told when trained on the base grid at a shift, e.g. shift 8 gives
    [1000, 960, 888.9, 727.3].
    """
    t = np.asarray(base, dtype=np.float64) / NUM_TRAIN_TIMESTEPS
    return (NUM_TRAIN_TIMESTEPS * shift_sigma(t, float(shift))).astype(np.float32)


def student_schedule():
    """The released 4-step student's schedule: diffusers UniPC, 4 steps, shift 16.

    Exact values (checked against diffusers in tests):
      timesteps = [999, 979, 941, 842]
      sigmas    = [0.999999, 0.9796185, 0.9412871, 0.8426359, 0]  (float32, rounded here)
    diffusers' grid starts at sigma 1: linspace(1, 0.001, 5) = [1, .75025, .5005, .25075], and shift 16 of
    .25075 is .84264, so the last timestep is 842. The release samples with Wan's own scheduler, whose grid starts
    at sigma_max 0.999 and whose timesteps are truncated to integers: [999, 979, 941, 841]
    (``vdot_jax.distill.timesteps.wan_unipc_timesteps``). Both are right for their scheduler.
    """
    return unipc_flow_schedule(STUDENT_NUM_STEPS, STUDENT_SHIFT)
