"""Wan's 3D rotary position embedding.

The head dimension is split into time / height / width parts: height and width get 2*(head_dim//6)
channels each and time the rest (44/42/42 for head_dim 128). Each part is a standard 1D RoPE over
its own grid position with theta 10000, frequencies computed in float64 like the reference, and the
channels are rotated in adjacent pairs (x[2i], x[2i+1]).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np


def split_dims(head_dim: int) -> tuple[int, int, int]:
    h = w = 2 * (head_dim // 6)
    return head_dim - h - w, h, w


def _angles_1d(dim: int, length: int, theta: float) -> np.ndarray:
    """[length, dim//2] rotation angles of one axis, float64."""
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim)
    return np.outer(np.arange(length, dtype=np.float64), inv)


@functools.lru_cache(maxsize=64)
def rope_angles(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> np.ndarray:
    """[F*H*W, head_dim//2] angles for a token grid (frames, height, width), token order f-major."""
    f, h, w = grid
    dt, dh, dw = split_dims(head_dim)
    at, ah, aw = _angles_1d(dt, f, theta), _angles_1d(dh, h, theta), _angles_1d(dw, w, theta)
    full = np.concatenate(
        [
            np.broadcast_to(at[:, None, None, :], (f, h, w, at.shape[1])),
            np.broadcast_to(ah[None, :, None, :], (f, h, w, ah.shape[1])),
            np.broadcast_to(aw[None, None, :, :], (f, h, w, aw.shape[1])),
        ],
        axis=-1,
    )
    return full.reshape(f * h * w, -1)


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float = 10000.0):
    """(cos, sin), each [N, head_dim//2] float32, to pass into ``apply_rope``."""
    a = rope_angles(tuple(grid), head_dim, theta)
    return jnp.asarray(np.cos(a), jnp.float32), jnp.asarray(np.sin(a), jnp.float32)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate adjacent channel pairs of x [B, N, H, D] in float32; returns x's dtype."""
    xf = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    out = jnp.stack([x1 * c - x2 * s, x1 * s + x2 * c], axis=-1)
    return out.reshape(x.shape).astype(x.dtype)
