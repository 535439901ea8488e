"""The toy world's latent space: a fixed, exactly invertible linear "VAE" with the Wan VAE's interface.

Public API (as ``vdot_jax.models.vae``)::

    vae = ToyVAE()                             # no parameters, nothing to load
    z = vae.encode(video)                      # [B,3,T,H,W] in [-1,1] -> [B,12,T,H/2,W/2]  (any T; H, W even)
    video = vae.decode(z)                      # [B,12,T,h,w] -> [B,3,T,2h,2w], clipped to [-1,1] (clip=False: not)
    z = vae.normalize(z); z = vae.denormalize(z)   # per-channel (z - mean) / std with the world's statistics
    vae.z_dim == 12; vae.stride == (1, 2, 2); vae.config.spatial_factor == 2; vae.config.temporal_factor == 1

**The map.** Space-to-depth with stride 2 (channel ``4 c + 2 dy + dx`` holds colour c at offset (dy, dx) of each
2x2 block), then a fixed orthonormal 12x12 mix ``MIX = kron(COLOUR, HAAR)``: COLOUR rotates RGB to
(luminance-like (R+G+B)/sqrt 3, (R-G)/sqrt 2, (R+G-2B)/sqrt 6) and HAAR is the orthonormal 2x2 Haar basis (mean,
horizontal, vertical and diagonal detail, each /2). So latent channel ``4 k + j`` is colour component k,
Haar band j: channel 0 is twice the block's mean luminance-like value, channels 1-3 its detail, and so on.
Orthonormal means decode is the transpose, ``decode(encode(x)) == x`` up to float32 rounding (~1e-7), and
Euclidean distances (hence MSE) are the same in both spaces. No temporal compression: T latent frames for T
video frames (the world's clips are 1 + 4k frames only for parity with Wan). Encode and decode are pure jnp
(einsum at HIGHEST precision, so no TF32 on GPUs) and jittable; numpy or jax arrays in, float32 jax arrays out.

**Normalisation.** ``TOY_LATENTS_MEAN`` / ``TOY_LATENTS_STD`` are the per-channel mean and standard deviation of
``encode(clip)`` over the default world (``ToyWorld()``: 9 frames, 32x32, default task mix; 4096 clips from
seed 0; ``latent_stats()`` recomputes them and a test checks they still agree). Detail bands are mostly 0
(flat background, object edges only), so their std is small (0.04..0.16) and ``normalize`` amplifies them:
normalised detail values are heavy-tailed (1-3 % beyond 4, up to ~23 at sharp object edges). To tame that,
pass your own statistics, e.g. ``ToyVAE(ToyVAEConfig(latents_std=tuple(np.maximum(TOY_LATENTS_STD, 0.25))))``.

**VACE packing note.** Wan's mask packing is an 8x8 space-to-depth (64 channels); with this VAE it is 2x2
(4 channels), so the toy VACE context has 12 + 12 + 4 = 28 channels instead of 96.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["ToyVAE", "ToyVAEConfig", "MIX", "TOY_LATENTS_MEAN", "TOY_LATENTS_STD", "latent_stats",
           "space_to_depth", "depth_to_space"]

_COLOUR = np.array([[1, 1, 1] / np.sqrt(3), [1, -1, 0] / np.sqrt(2), [1, 1, -2] / np.sqrt(6)])
_HAAR = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]]) / 2.0  # index 2 dy + dx
MIX = np.kron(_COLOUR, _HAAR).astype(np.float32)  # [12 out, 12 in], orthonormal

# Statistics of encode(clip) over ToyWorld() (see the module docstring); recompute with latent_stats().
TOY_LATENTS_MEAN = (
    -0.8296, -0.0000, -0.0000, 0.0000, 0.0008, -0.0002, 0.0000, 0.0000,
    0.0705, -0.0001, 0.0001, -0.0000,
)
TOY_LATENTS_STD = (
    0.6770, 0.0764, 0.0770, 0.0381, 0.5408, 0.1253, 0.1253, 0.0626,
    0.6937, 0.1626, 0.1627, 0.0815,
)


@dataclass(frozen=True)
class ToyVAEConfig:
    """The fields of ``vdot_jax.models.vae.VAEConfig`` that callers read."""

    z_dim: int = 12
    in_channels: int = 3
    spatial_factor: int = 2
    temporal_factor: int = 1
    latents_mean: tuple[float, ...] = TOY_LATENTS_MEAN
    latents_std: tuple[float, ...] = TOY_LATENTS_STD

    def __post_init__(self):
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim={self.z_dim} values each")
        if min(self.latents_std) <= 0:
            raise ValueError("latents_std must be positive")


def space_to_depth(video: jax.Array, s: int = 2) -> jax.Array:
    """[B,C,T,H,W] -> [B,C*s*s,T,H/s,W/s], channel c*s*s + dy*s + dx."""
    b, c, t, h, w = video.shape
    x = video.reshape(b, c, t, h // s, s, w // s, s)
    x = x.transpose(0, 1, 4, 6, 2, 3, 5)  # b c dy dx t h w
    return x.reshape(b, c * s * s, t, h // s, w // s)


def depth_to_space(z: jax.Array, s: int = 2) -> jax.Array:
    """Inverse of ``space_to_depth``."""
    b, cs, t, h, w = z.shape
    c = cs // (s * s)
    x = z.reshape(b, c, s, s, t, h, w).transpose(0, 1, 4, 5, 2, 6, 3)  # b c t h dy w dx
    return x.reshape(b, c, t, h * s, w * s)


def _mix(m: np.ndarray, x: jax.Array) -> jax.Array:
    return jnp.einsum("kc,bcthw->bkthw", jnp.asarray(m), x, precision=jax.lax.Precision.HIGHEST)


class ToyVAE:
    """Exact linear latent space for the toy world (module docstring). Stateless; safe to close over in jit."""

    def __init__(self, config: ToyVAEConfig | None = None):
        self.config = config or ToyVAEConfig()

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def stride(self) -> tuple[int, int, int]:
        return (self.config.temporal_factor, self.config.spatial_factor, self.config.spatial_factor)

    def latent_shape(self, video_shape) -> tuple[int, ...]:
        """[B,3,T,H,W] -> [B,12,T,H/2,W/2]."""
        b, _, t, h, w = video_shape
        return (b, self.z_dim, t, h // 2, w // 2)

    def encode(self, video) -> jax.Array:
        """[B,3,T,H,W] video in [-1,1] (H, W even) -> latents [B,12,T,H/2,W/2] (raw, not normalised)."""
        x = jnp.asarray(video, jnp.float32)
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, T, H, W], got shape {tuple(x.shape)}")
        if x.shape[3] % 2 or x.shape[4] % 2:
            raise ValueError(f"video height and width must be even for the toy VAE, got {x.shape[3]}x{x.shape[4]}")
        return _mix(MIX, space_to_depth(x, 2))

    def decode(self, latents, clip: bool = True) -> jax.Array:
        """[B,12,T,h,w] raw latents -> [B,3,T,2h,2w] video, clipped to [-1,1] like the Wan VAE (clip=False: exact
        linear inverse, for any latents)."""
        z = jnp.asarray(latents, jnp.float32)
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"latents must be [B, {self.z_dim}, T, h, w], got shape {tuple(z.shape)}")
        x = depth_to_space(_mix(MIX.T, z), 2)
        return jnp.clip(x, -1.0, 1.0) if clip else x

    def _stats(self, z):
        shape = (1, -1) + (1,) * (z.ndim - 2)
        mean = jnp.asarray(self.config.latents_mean, jnp.float32).reshape(shape)
        std = jnp.asarray(self.config.latents_std, jnp.float32).reshape(shape)
        return mean, std

    def normalize(self, z) -> jax.Array:
        """Raw latents -> the DiT's latent space: (z - mean) / std."""
        z = jnp.asarray(z, jnp.float32)
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z) -> jax.Array:
        """The DiT's latent space -> raw latents: z * std + mean."""
        z = jnp.asarray(z, jnp.float32)
        mean, std = self._stats(z)
        return z * std + mean


def latent_stats(n: int = 4096, seed: int = 0, batch: int = 512, world=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of ``encode(clip)`` over ``n`` clips of ``world`` (default ``ToyWorld()``, default
    task mix: target clips only), float64 -- how TOY_LATENTS_MEAN / TOY_LATENTS_STD were made."""
    from vdot_jax.data.toy_world import ToyWorld

    world = world or ToyWorld()
    vae = ToyVAE()
    s1 = np.zeros(vae.z_dim)
    s2 = np.zeros(vae.z_dim)
    count = 0
    rng = np.random.default_rng(seed)
    done = 0
    while done < n:
        k = min(batch, n - done)
        z = np.asarray(vae.encode(world.sample_batch(rng, k).video), np.float64)
        s1 += z.sum((0, 2, 3, 4))
        s2 += (z * z).sum((0, 2, 3, 4))
        count += z.size // vae.z_dim
        done += k
    mean = s1 / count
    return mean, np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
