"""DMD, GAN and flow-matching losses of VDOT (METHOD.md section 4), as small pure functions.

Surrogate losses of the form 0.5 * reduce((x - sg(x - g))^2) have gradient g (times 1/numel for a mean)
with respect to x: they are how a direction computed without autodiff is pushed into the generator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

NORMALIZATIONS = ("release", "dmd")


def surrogate_loss(x: jax.Array, direction: jax.Array, reduction: str = "mean") -> jax.Array:
    """0.5 * reduce((x - sg(x - direction))^2); its gradient w.r.t. x is ``direction`` (/numel for mean)."""
    x = x.astype(jnp.float32)
    target = jax.lax.stop_gradient(x - direction.astype(jnp.float32))
    sq = jnp.square(x - target)
    if reduction == "mean":
        return 0.5 * jnp.mean(sq)
    if reduction == "sum":
        return 0.5 * jnp.sum(sq)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def dmd_direction(x0_fake, x0_real, x_hat, t, normalization: str = "release") -> jax.Array:
    """The DMD (reverse-KL) gradient on the generator sample, per example.

    release: (x0_fake - x0_real) * t/1000. dmd: (x0_fake - x0_real) / mean|x^ - x0_real| (DMD/DMD2).
    """
    diff = (x0_fake - x0_real).astype(jnp.float32)
    shape = (-1,) + (1,) * (diff.ndim - 1)
    if normalization == "release":
        return diff * (t.astype(jnp.float32) / 1000.0).reshape(shape)
    if normalization == "dmd":
        axes = tuple(range(1, diff.ndim))
        scale = jnp.mean(jnp.abs(x_hat.astype(jnp.float32) - x0_real), axis=axes, keepdims=True)
        return diff / jax.lax.stop_gradient(scale)
    raise ValueError(f"DMD normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def cfg_velocity(v_cond: jax.Array, v_uncond: jax.Array, scale: float) -> jax.Array:
    return v_uncond + scale * (v_cond - v_uncond)


def flow_loss(v_pred: jax.Array, noise: jax.Array, x0: jax.Array) -> jax.Array:
    """Flow matching: mean |v - (noise - x0)|^2."""
    return jnp.mean(jnp.square(v_pred.astype(jnp.float32) - (noise - x0).astype(jnp.float32)))


def gan_generator_loss(d_fake: jax.Array, d_real: jax.Array, weight: float = 0.1) -> jax.Array:
    """Relativistic: weight * softplus(-(D(fake) - D(real)))."""
    return weight * jnp.mean(jax.nn.softplus(-(d_fake - d_real)))


def gan_discriminator_loss(d_real: jax.Array, d_fake: jax.Array, weight: float = 0.1) -> jax.Array:
    """Relativistic: weight * softplus(-(D(real) - D(fake)))."""
    return weight * jnp.mean(jax.nn.softplus(-(d_real - d_fake)))
