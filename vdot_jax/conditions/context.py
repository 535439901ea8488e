"""The VAE side of a VCU: the VACE context (``vace_context``), latent shapes and the zero-latent cache.

**The context** (the same numbers as diffusers' ``WanVACEPipeline`` ``prepare_video_latents`` + ``prepare_masks`` +
concatenation): ``inactive = F * (1 - M)``, ``reactive = F * M``, each VAE-encoded (posterior mean) and
normalised (``(z - mean) / std``) -> ``2z`` channels. Each reference image is encoded alone as a one-frame video,
given ``z`` zero channels and prepended in time, in the order given (the VACE release's order; diffusers
reverses several references, see ``REFERENCE_ORDERS``). The pixel mask is space-to-depth'ed by the VAE's
spatial stride: channel ``sy * sw + sx`` of latent pixel ``(i, j)`` is pixel ``(i*sh + sy, j*sw + sx)``; in time it
is nearest-exact resized from T to the latent frame count f: latent frame k takes pixel frame
``floor((k + 1/2) * T / f)`` (for T = 17, f = 5: frames 1, 5, 8, 11, 15 -- not the VAE's own causal
grouping, but what the release and diffusers feed the pretrained model). Reference frames get zero masks.
Channel order: ``[inactive (z), reactive (z), mask (sh*sw)]``: 96 channels for Wan (16 + 16 + 64).

**Known content is not re-encoded.** When ``inactive`` or ``reactive`` of a sample is all zeros
(text-to-video, control videos' inactive part, the reactive part of the builders' extension and greyed
inpainting) its latent is the encode of zeros, computed once per (VAE, shape) and cached (``ZERO_LATENTS``);
results are identical, and at four sampling steps the VAE is most of the run time.
"""

from __future__ import annotations

import weakref

import jax.numpy as jnp
import numpy as np

from vdot_jax.conditions.vcu import VCU, WAN_STRIDE, ConditionError, check_num_frames

# The VACE release prepends reference latents in the order given ([r1, r2, ..., video]); diffusers'
# WanVACEPipeline prepends each in turn, which reverses them ([rR, ..., r1, video]). Same for one reference.
REFERENCE_ORDERS = ("release", "diffusers")


def vae_geometry(vae) -> tuple[int, tuple[int, int, int]]:
    """(z_dim, (stride_t, stride_h, stride_w)) of a VAE: its ``z_dim``/``stride`` attributes, else its
    ``config`` (``z_dim``, ``temporal_factor``, ``spatial_factor``), else Wan's (16, (4, 8, 8))."""
    cfg = getattr(vae, "config", None)
    z = getattr(vae, "z_dim", None) or getattr(cfg, "z_dim", None) or 16
    stride = getattr(vae, "stride", None)
    if stride is None and cfg is not None and hasattr(cfg, "temporal_factor") and hasattr(cfg, "spatial_factor"):
        stride = (cfg.temporal_factor, cfg.spatial_factor, cfg.spatial_factor)
    stride = tuple(int(s) for s in (stride or WAN_STRIDE))
    return int(z), stride


def latent_frames(num_frames: int, vae=None) -> int:
    """Latent frames of a ``num_frames`` video: 1 + (num_frames - 1) / stride_t (1 + 4k -> 1 + k for Wan)."""
    st = vae_geometry(vae)[1][0] if vae is not None else WAN_STRIDE[0]
    return 1 + (check_num_frames(num_frames, st) - 1) // st


def latent_shape(vae, num_frames: int, height: int, width: int, num_refs: int = 0,
                 batch_size: int = 1) -> tuple[int, int, int, int, int]:
    """[B, z, R + f, H / sh, W / sw]: the noise / latent shape, reference frames included."""
    z, (st, sh, sw) = vae_geometry(vae)
    if height % sh or width % sw:
        raise ConditionError(f"height and width must be multiples of the VAE stride {sh}x{sw}, got {height}x{width}.")
    return (int(batch_size), z, int(num_refs) + latent_frames(num_frames, vae), height // sh, width // sw)


def noise_shape(vcu: VCU, vae) -> tuple[int, int, int, int, int]:
    """The shape of the noise for a VCU: it covers the reference frames too (drop them before decoding)."""
    return latent_shape(vae, vcu.num_frames, vcu.height, vcu.width, vcu.num_refs, vcu.batch_size)


def drop_reference_frames(latents, num_refs: int):
    """[B, C, R + f, h, w] -> [B, C, f, h, w]: the generated video's latents, ready to decode."""
    if latents.ndim != 5 or latents.shape[2] < num_refs:
        raise ConditionError(f"latents must be [B, C, R + f, h, w] with at least {num_refs} frames, "
                             f"got shape {tuple(latents.shape)}.")
    return latents[:, :, int(num_refs):]


class ZeroLatentCache:
    """Normalised latents of all-zero videos, one per (VAE, frames, height, width).

    Keyed by the VAE object's identity (held weakly where possible) and its run-time dtype, so a
    different or changed VAE never sees another's entries."""

    def __init__(self):
        self._entries: dict[int, tuple] = {}
        self.hits = 0
        self.misses = 0

    def _table(self, vae) -> dict:
        key = id(vae)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is vae:
            return entry[1]
        try:
            ref = weakref.ref(vae, lambda _r, k=key: self._entries.pop(k, None))
        except TypeError:  # not weak-referenceable: hold it (the cache then keeps the VAE alive)
            ref = (lambda v=vae: v)
        table: dict = {}
        self._entries[key] = (ref, table)
        return table

    def get(self, vae, shape: tuple[int, int, int], encode_fn):
        table = self._table(vae)
        key = (tuple(int(s) for s in shape), str(getattr(vae, "dtype", "")))
        if key not in table:
            self.misses += 1
            table[key] = encode_fn()
        else:
            self.hits += 1
        return table[key]

    def clear(self):
        self._entries.clear()
        self.hits = self.misses = 0


ZERO_LATENTS = ZeroLatentCache()


def _encode_normalized(vae, x: np.ndarray, cache: ZeroLatentCache | None) -> np.ndarray:
    """[N, 3, T, H, W] -> normalised latents [N, z, f, h, w] (float32 numpy); all-zero samples from the cache."""
    def enc(v):
        return np.asarray(vae.normalize(vae.encode(v)), np.float32)

    if cache is None:
        return enc(x)
    nonzero = np.any(x.reshape(x.shape[0], -1) != 0, axis=1)
    if nonzero.all():
        return enc(x)
    zero = cache.get(vae, x.shape[2:], lambda: enc(np.zeros((1,) + x.shape[1:], np.float32)))
    out = np.broadcast_to(zero, (x.shape[0],) + zero.shape[1:]).copy()
    if nonzero.any():
        out[nonzero] = enc(x[nonzero])
    return out


def pack_mask(masks, stride=WAN_STRIDE) -> np.ndarray:
    """[B, 1, T, H, W] pixel mask -> [B, sh*sw, f, H/sh, W/sw]: space-to-depth (channel ``sy*sw + sx``) and a
    nearest-exact resize in time to f = ceil(T / st) frames (frame k <- floor((k + 1/2) T / f))."""
    m = np.asarray(masks, np.float32)
    st, sh, sw = (int(s) for s in stride)
    b, c, t, h, w = m.shape
    if c != 1 or h % sh or w % sw:
        raise ConditionError(f"masks must be [B, 1, T, H, W] with H, W multiples of {sh}x{sw}, got {m.shape}.")
    f = (t + st - 1) // st
    m = m.reshape(b, t, h // sh, sh, w // sw, sw).transpose(0, 3, 5, 1, 2, 4).reshape(b, sh * sw, t, h // sh, w // sw)
    idx = np.minimum((2 * np.arange(f) + 1) * t // (2 * f), t - 1)
    return np.ascontiguousarray(m[:, :, idx])


def vace_context(vcu: VCU, vae, zero_cache: ZeroLatentCache | None = ZERO_LATENTS, reference_order: str = "release"):
    """The VACE context of a VCU: float32 [B, 2z + sh*sw, R + f, h, w] (a jax array).

    See the module docstring for the layout. ``vae`` needs ``encode`` (video in [-1, 1] -> posterior mean)
    and ``normalize``; ``z_dim``/``stride`` are read by ``vae_geometry``. ``zero_cache=None`` encodes
    everything (the cache gives the same numbers). ``reference_order="diffusers"`` reverses the references
    as ``WanVACEPipeline`` does (see ``REFERENCE_ORDERS``)."""
    if reference_order not in REFERENCE_ORDERS:
        raise ConditionError(f"reference_order must be one of {REFERENCE_ORDERS}, got {reference_order!r}.")

    z, stride = vae_geometry(vae)
    st, sh, sw = stride
    check_num_frames(vcu.num_frames, st, what="the VCU's frame count")
    if vcu.height % sh or vcu.width % sw:
        raise ConditionError(f"the VCU's frames are {vcu.height}x{vcu.width}, "
                             f"not multiples of the VAE stride {sh}x{sw}.")
    m = vcu.masks  # binary (VCU binarises at 0.5)
    inactive = _encode_normalized(vae, vcu.frames * (1.0 - m), zero_cache)
    reactive = _encode_normalized(vae, vcu.frames * m, zero_cache)
    if inactive.shape[1] != z:
        raise ConditionError(f"the VAE returned {inactive.shape[1]} latent channels, its z_dim says {z}.")
    latents = np.concatenate([inactive, reactive], axis=1)
    b, r = vcu.batch_size, vcu.num_refs
    mask = pack_mask(m, stride)
    if mask.shape[2:] != latents.shape[2:]:
        raise ConditionError(f"the VAE's latents {latents.shape[2:]} do not match the mask grid {mask.shape[2:]} "
                             f"for stride {stride}.")
    if r:
        refs = vcu.refs if reference_order == "release" else vcu.refs[:, ::-1]
        ref_lat = _encode_normalized(vae, refs.reshape(b * r, 3, 1, vcu.height, vcu.width), zero_cache)
        ref_lat = ref_lat.reshape(b, r, z, *ref_lat.shape[3:]).transpose(0, 2, 1, 3, 4)
        ref_lat = np.concatenate([ref_lat, np.zeros_like(ref_lat)], axis=1)
        latents = np.concatenate([ref_lat, latents], axis=2)
        mask = np.concatenate([np.zeros((b, sh * sw, r) + mask.shape[3:], np.float32), mask], axis=2)
    return jnp.asarray(np.concatenate([latents, mask], axis=1))
