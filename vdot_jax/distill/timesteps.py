"""Timesteps of VDOT training: the loss draws and the generator's 4-step rollout schedule.

Conventions: t in [0, 1000], sigma s = t / 1000, x_t = (1 - s) x0 + s noise, v = noise - x0.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from vdot_jax.sampling.schedules import shift_sigma, unipc_flow_schedule, warp_timesteps


def sample_shifted(key, batch: int, *, low: int, high: int, shift: float, clamp=(20.0, 980.0)) -> jax.Array:
    """t = integer u ~ U{low, ..., high-1} (the release's ``torch.randint``), shifted as a sigma by ``shift``,
    clamped: one float32 timestep per example (continuous after the shift, as in the release)."""
    u = jax.random.randint(key, (batch,), int(low), int(high)).astype(jnp.float32)
    t = 1000.0 * shift_sigma(u / 1000.0, shift)
    return jnp.clip(t, *clamp)


def sample_loss_timesteps(key, batch: int, shift: float = 5.0) -> jax.Array:
    """DMD, OT and critic flow loss: integer U[20, 980), shift 5, clamp [20, 980] (release: model/bi_dmd_gan.py)."""
    return sample_shifted(key, batch, low=20, high=980, shift=shift)


def sample_gan_timesteps(key, batch: int, shift: float = 12.0) -> jax.Array:
    """GAN terms: integer U[0, 1000), shift 12, clamp [20, 980] (release: model/bi_dmd_gan.py)."""
    return sample_shifted(key, batch, low=0, high=1000, shift=shift)


def add_noise(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
    s = (t / 1000.0).reshape(-1, *([1] * (x0.ndim - 1)))
    return (1.0 - s) * x0 + s * noise


def x0_from_velocity(x_t: jax.Array, v: jax.Array, t: jax.Array) -> jax.Array:
    s = (t / 1000.0).reshape(-1, *([1] * (x_t.ndim - 1)))
    return x_t - s * v


@dataclass(frozen=True)
class RolloutSchedule:
    """The student's steps during training.

    ``told``: timestep the generator is given at step i (and with which its x0 is computed);
    ``sigmas``: noise level of the generator's input at step i (step 0 is pure noise).
    """

    told: tuple[float, ...]
    sigmas: tuple[float, ...]

    def __post_init__(self):
        if len(self.told) != len(self.sigmas):
            raise ValueError("told timesteps and input sigmas must have the same length")

    @property
    def steps(self) -> int:
        return len(self.told)


def wan_unipc_timesteps(num_steps: int, shift: float) -> np.ndarray:
    """Wan's own ``FlowUniPCMultistepScheduler`` table (sigma_max 0.999, integer timesteps, truncated):
    ``int(1000 * shift_sigma(0.999 * (1 - i / num_steps)))``. 4 steps at shift 16: [999, 979, 941, 841]
    (diffusers' UniPC, which starts at sigma 1, gives 842 for the last one)."""
    sigmas = np.linspace(0.999, 0.0, num_steps + 1)[:-1]
    return (1000.0 * shift_sigma(sigmas, float(shift))).astype(np.int64)


def release_schedule() -> RolloutSchedule:
    """The release's (inconsistent) schedule, reproduced on purpose.

    The generator is told [1000, 750, 500, 250] warped with shift 8 = [1000, 960, 888.9, 727.3]
    (release: pipeline/bi_training_vace.py), but the inputs of steps 1..3 are re-noised to entries
    [250, 500, 750] of Wan's 1000-step shift-16 table (model/base.py ``warp_denoising_step``), i.e. the
    integer timesteps [979, 941, 841] (sigmas .979, .941, .841), which are also the 4-step inference table.
    """
    table = wan_unipc_timesteps(1000, 16.0)
    renoise = table[[1000 - t for t in (750, 500, 250)]]
    return RolloutSchedule(tuple(float(t) for t in warp_timesteps((1000, 750, 500, 250), 8.0)),
                           (1.0, *(float(t) / 1000.0 for t in renoise)))


def consistent_schedule(num_steps: int = 4, shift: float = 16.0) -> RolloutSchedule:
    """Training told and noised exactly as the UniPC inference schedule (the option the release lacks)."""
    sig, ts = unipc_flow_schedule(num_steps, shift)
    return RolloutSchedule(tuple(float(t) for t in ts), (1.0, *(float(s) for s in sig[1:num_steps])))


def student_schedule(name: str, shift: float) -> RolloutSchedule:
    """The rollout schedule named by the config: "release" (fixed, shift 16) or "consistent" at ``shift``."""
    if name == "release":
        return release_schedule()
    if name == "consistent":
        return consistent_schedule(4, shift)
    raise ValueError(f"unknown rollout schedule {name!r}; use 'release' or 'consistent'")


def rollout(gen_apply, params, noise: jax.Array, exit_index: jax.Array, schedule: RolloutSchedule, key) -> jax.Array:
    """Backward simulation: the sample x^ of the generator's step ``exit_index``.

    ``gen_apply(params, x, t) -> v``. Steps before the exit run without gradient (predict x0, re-noise it with
    fresh noise to the next step's sigma); the exit step runs with gradient and its x0 is returned.
    ``exit_index`` is traced, so one compiled program serves every exit; it must be the same on all
    hosts (draw it from a replicated key).
    """
    told = jnp.asarray(schedule.told, jnp.float32)
    sigmas = jnp.asarray(schedule.sigmas + (0.0,), jnp.float32)
    b = noise.shape[0]
    keys = jax.random.split(key, schedule.steps)

    frozen = jax.lax.stop_gradient(params)

    def no_grad_step(i, x):
        t = jnp.full((b,), told[i])
        x0 = x0_from_velocity(x, gen_apply(frozen, x, t), t)
        fresh = jax.random.normal(keys[i], x.shape, x.dtype)
        return add_noise(x0, fresh, jnp.full((b,), 1000.0 * sigmas[i + 1]))

    # The loop sees the parameters only through stop_gradient, so reverse mode never enters it.
    x = jax.lax.fori_loop(0, exit_index, no_grad_step, noise)
    t = jnp.full((b,), told[exit_index])
    return x0_from_velocity(x, gen_apply(params, x, t), t)
