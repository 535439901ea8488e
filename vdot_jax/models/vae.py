"""The Wan2.1 video VAE (3D causal, stride (4, 8, 8)) in Flax NNX, with diffusers' module names.

Public API::

    vae = load_vae(path)    # vdot_jax.sources: converted dir, diffusers/pipeline folder or Wan2.1_VAE.pth
    mean = vae.encode(video)                   # [B,3,F,H,W] in [-1,1] -> posterior mean [B,16,1+(F-1)//4,H/8,W/8]
    video = vae.decode(latents)                # [B,16,f,h,w] -> [B,3,1+4(f-1),8h,8w], clipped to [-1,1]
    z = vae.normalize(mean); mean = vae.denormalize(z)   # the Wan latent mean/std, as WanPipeline does

Inputs may be numpy or jax arrays; outputs are float32 jax arrays. Parameter paths mirror diffusers'
``AutoencoderKLWan`` (``encoder.down_blocks.3.conv1.kernel`` <-> ``encoder.down_blocks.3.conv1.weight``),
with convolution kernels channels-last (``[kt, kh, kw, in, out]``), 1x1(x1) convolutions as matrices
``[in, out]`` and the RMS-norm scales as vectors ``gamma [C]``.

Time is processed in causal chunks exactly as the reference does -- encode: the first frame alone, then
chunks of 4 frames, each giving one latent frame; decode: one latent frame at a time -- with a
fixed-shape feature cache carried by ``jax.lax.scan``. The first chunk is a separate call (its shapes and
its resampling rules differ) that also creates the cache. So one encode/decode compiles once per input
shape, and memory is bounded by a chunk plus the output buffer, not by the video length.

The cache of every causal 3x3x3 convolution is the last two frames of its (padded) input; frames before
the video are zeros, which is what the reference's causal padding gives. The temporal resamplers follow
the reference's special cases: ``downsample3d`` lets the first chunk through without its time
convolution and then convolves (stride 2) over the previous chunk's last frame and the new frames;
``upsample3d`` lets the first chunk through without doubling it, and its time convolution then starts
from zeros (the reference's "Rep" marker): the first latent frame never enters it.

Numerics: RMS norms (and the SiLU after them) and attention softmax run in float32; convolutions, matmuls
and the residual stream run in ``vae.dtype`` ("float32" by default; "bfloat16" is faster on
accelerators -- measure its error with ``bench/vae.py`` before relying on it).

Spatial tiling (``vae.set_runtime(tiling=(256, 64))``, off by default): frames larger than the tile are
cut into equal tiles of ``tile`` pixels (``tile/8`` latents) overlapping by at least ``overlap`` pixels;
every tile runs the whole chunked encode/decode, and the tiles are blended with linear ramps across each
actual overlap, normalised so the weights sum to one at every pixel. Tiles run one after another inside
one ``lax.scan``, so memory is one tile plus the output. It does not reproduce diffusers' tiling bit for
bit (nor the untiled result: the mid-block attention sees a tile, not the frame).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdot_jax.models.attention import attention

F32 = jnp.float32

# diffusers' AutoencoderKLWan defaults (the Wan2.1 release values).
WAN_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

CONV_MODES = ("3d", "2d")
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the Wan2.1 VAE (field names as diffusers' ``AutoencoderKLWan`` config)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()  # encoder only, as in diffusers (its decoder has no such blocks)
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    in_channels: int = 3
    out_channels: int = 3
    latents_mean: tuple[float, ...] = WAN_LATENTS_MEAN
    latents_std: tuple[float, ...] = WAN_LATENTS_STD

    def __post_init__(self):
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "temperal_downsample", tuple(bool(b) for b in self.temperal_downsample))
        object.__setattr__(self, "attn_scales", tuple(float(s) for s in self.attn_scales))
        object.__setattr__(self, "latents_mean", tuple(float(s) for s in self.latents_mean))
        object.__setattr__(self, "latents_std", tuple(float(s) for s in self.latents_std))
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs one flag per downsampling level ({len(self.dim_mult) - 1}), "
                f"got {self.temperal_downsample}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean and latents_std need z_dim={self.z_dim} values each")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(self.temperal_downsample)

    @property
    def dec_base_dim(self) -> int:
        return self.decoder_base_dim or self.base_dim

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "VAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown VAEConfig fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_diffusers(cls, d: dict) -> "VAEConfig":
        """From a diffusers ``AutoencoderKLWan`` config.json (Wan2.1 variants only)."""
        if d.get("is_residual") or d.get("patch_size"):
            raise ValueError("this is a Wan2.2-style VAE (is_residual/patch_size); only the Wan2.1 VAE is supported")
        defaults = cls()
        z_dim = d.get("z_dim", 16)
        return cls(
            base_dim=d.get("base_dim", 96),
            decoder_base_dim=d.get("decoder_base_dim"),
            z_dim=z_dim,
            dim_mult=tuple(d.get("dim_mult", defaults.dim_mult)),
            num_res_blocks=d.get("num_res_blocks", 2),
            attn_scales=tuple(d.get("attn_scales", ())),
            temperal_downsample=tuple(d.get("temperal_downsample", defaults.temperal_downsample)),
            in_channels=d.get("in_channels", 3),
            out_channels=d.get("out_channels", 3),
            latents_mean=tuple(d.get("latents_mean") or (WAN_LATENTS_MEAN if z_dim == 16 else (0.0,) * z_dim)),
            latents_std=tuple(d.get("latents_std") or (WAN_LATENTS_STD if z_dim == 16 else (1.0,) * z_dim)),
        )

    def to_diffusers(self) -> dict:
        return dict(
            _class_name="AutoencoderKLWan",
            base_dim=self.base_dim,
            decoder_base_dim=self.decoder_base_dim,
            z_dim=self.z_dim,
            dim_mult=list(self.dim_mult),
            num_res_blocks=self.num_res_blocks,
            attn_scales=list(self.attn_scales),
            temperal_downsample=list(self.temperal_downsample),
            dropout=0.0,
            latents_mean=list(self.latents_mean),
            latents_std=list(self.latents_std),
            is_residual=False,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            patch_size=None,
            scale_factor_temporal=self.temporal_factor,
            scale_factor_spatial=self.spatial_factor,
        )


# ----------------------------------------------------------------------------------------- layers


def _uniform(key, shape, fan_in):
    bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default range for conv weights and biases
    return jax.random.uniform(key, shape, F32, -bound, bound)


def _conv(x, kernel, bias, *, dtype, mode, stride=(1, 1, 1), pad_hw=(0, 0)):
    """Convolution of [B,T,H,W,C] with kernel [kt,kh,kw,I,O]: valid in time, zero-padded in space.

    ``mode="3d"`` is one 3D convolution; ``mode="2d"`` folds time into the batch and sums ``kt`` 2D
    convolutions of time-shifted frames (the same numbers, a different kernel choice on GPUs).
    """
    x = x.astype(dtype)
    k = kernel.astype(dtype)
    kt, st = k.shape[0], stride[0]
    pad = ((pad_hw[0], pad_hw[0]), (pad_hw[1], pad_hw[1]))
    if mode == "3d":
        y = jax.lax.conv_general_dilated(
            x, k, window_strides=stride, padding=((0, 0), *pad), dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
        )
    else:
        b, t, h, w, c = x.shape
        t_out = (t - kt) // st + 1
        y = None
        for j in range(kt):
            xs = x[:, j : j + st * (t_out - 1) + 1 : st].reshape(b * t_out, h, w, c)
            yj = jax.lax.conv_general_dilated(
                xs, k[j], window_strides=stride[1:], padding=pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            y = yj if y is None else y + yj
        y = y.reshape(b, t_out, *y.shape[1:])
    return y + bias.astype(dtype)


def _rms_silu(x, gamma, silu=True):
    """diffusers' WanRMS_norm (F.normalize over channels * sqrt(C) * gamma), then SiLU, in float32."""
    xf = x.astype(F32)
    ss = jnp.sum(xf * xf, axis=-1, keepdims=True)
    y = xf * jax.lax.rsqrt(jnp.maximum(ss, 1e-24)) * (x.shape[-1] ** 0.5) * gamma.astype(F32)
    return jax.nn.silu(y) if silu else y


class RMSNorm(nnx.Module):
    def __init__(self, dim: int):
        self.gamma = nnx.Param(jnp.ones((dim,), F32))


class Pointwise(nnx.Module):
    """A 1x1 (or 1x1x1) convolution: a matrix [in, out] on the channel axis."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_uniform(rngs.params(), (din, dout), din))
        self.bias = nnx.Param(_uniform(rngs.params(), (dout,), din))

    def __call__(self, x, dtype, cols: int | None = None):
        k, b = self.kernel[...], self.bias[...]
        if cols is not None:  # only the first output channels (e.g. the posterior mean)
            k, b = k[:, :cols], b[:cols]
        return jnp.dot(x.astype(dtype), k.astype(dtype)) + b.astype(dtype)


class Conv2d(nnx.Module):
    """A per-frame 3x3 convolution, kernel [3,3,I,O]."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_uniform(rngs.params(), (3, 3, din, dout), 9 * din))
        self.bias = nnx.Param(_uniform(rngs.params(), (dout,), 9 * din))

    def __call__(self, x, dtype, stride=1, pad=1):
        b, t = x.shape[:2]
        y = jax.lax.conv_general_dilated(
            x.reshape(b * t, *x.shape[2:]).astype(dtype), self.kernel[...].astype(dtype),
            window_strides=(stride, stride), padding=((pad, pad), (pad, pad)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        ) + self.bias[...].astype(dtype)
        return y.reshape(b, t, *y.shape[1:])


class CausalConv3d(nnx.Module):
    """A convolution that is causal in time; ``__call__`` takes and returns its 2-frame feature cache."""

    def __init__(self, din, dout, kernel=(3, 3, 3), stride=(1, 1, 1), padding=(1, 1, 1), *, rngs: nnx.Rngs):
        fan_in = din * math.prod(kernel)
        self.kernel = nnx.Param(_uniform(rngs.params(), (*kernel, din, dout), fan_in))
        self.bias = nnx.Param(_uniform(rngs.params(), (dout,), fan_in))
        self.stride = tuple(stride)
        self.pad_hw = tuple(padding[1:])
        self.past = 2 * padding[0]  # frames of left context (the reference pads 2*p in front, 0 behind)

    def apply(self, x, *, dtype, mode):
        """The convolution without any time padding."""
        return _conv(x, self.kernel[...], self.bias[...], dtype=dtype, mode=mode, stride=self.stride,
                     pad_hw=self.pad_hw)

    def __call__(self, x, cache, *, dtype, mode):
        x = x.astype(dtype)
        if cache is None:  # first chunk: zeros before the video
            cache = jnp.zeros((x.shape[0], self.past, *x.shape[2:]), dtype)
        xc = jnp.concatenate([cache, x], axis=1)
        return self.apply(xc, dtype=dtype, mode=mode), xc[:, -self.past :]


class ResidualBlock(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.norm1 = RMSNorm(din)
        self.conv1 = CausalConv3d(din, dout, rngs=rngs)
        self.norm2 = RMSNorm(dout)
        self.conv2 = CausalConv3d(dout, dout, rngs=rngs)
        self.conv_shortcut = Pointwise(din, dout, rngs=rngs) if din != dout else None

    def __call__(self, x, cache, *, dtype, mode):
        c1, c2 = cache if cache is not None else (None, None)
        skip = self.conv_shortcut(x, dtype) if self.conv_shortcut is not None else x.astype(dtype)
        h, c1 = self.conv1(_rms_silu(x, self.norm1.gamma[...]), c1, dtype=dtype, mode=mode)
        h, c2 = self.conv2(_rms_silu(h, self.norm2.gamma[...]), c2, dtype=dtype, mode=mode)
        return h + skip, (c1, c2)


class AttentionBlock(nnx.Module):
    """Single-head self-attention over the pixels of each frame (no state across time)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(dim)
        self.to_qkv = Pointwise(dim, 3 * dim, rngs=rngs)
        self.proj = Pointwise(dim, dim, rngs=rngs)

    def __call__(self, x, cache, *, dtype, mode):
        b, t, h, w, c = x.shape
        qkv = self.to_qkv(_rms_silu(x, self.norm.gamma[...], silu=False), dtype).reshape(b * t, h * w, 1, 3 * c)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        o = attention(q, k, v, "xla").reshape(b, t, h, w, c)  # head dim = C (384): no flash kernel fits
        return x.astype(dtype) + self.proj(o, dtype), None


class Resample(nnx.Module):
    """Spatial x2 up/down sampling, plus the causal temporal x2 of the ``*3d`` modes."""

    def __init__(self, dim: int, mode: str, upsample_out_dim: int | None = None, *, rngs: nnx.Rngs):
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nnx.List([None, Conv2d(dim, upsample_out_dim or dim // 2, rngs=rngs)])
        else:  # index 0 is the reference's Upsample / ZeroPad2d, which has no weights
            self.resample = nnx.List([None, Conv2d(dim, dim, rngs=rngs)])
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0), rngs=rngs)
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0), rngs=rngs)
        else:
            self.time_conv = None

    def __call__(self, x, cache, *, dtype, mode):
        x = x.astype(dtype)
        new_cache = None
        if self.mode == "upsample3d":
            if cache is None:  # first chunk: not doubled; the time conv later starts from zeros
                new_cache = jnp.zeros((x.shape[0], 2, *x.shape[2:]), dtype)
            else:
                xc = jnp.concatenate([cache, x], axis=1)
                new_cache = xc[:, -2:]
                y = self.time_conv.apply(xc, dtype=dtype, mode=mode)  # [B,T,H,W,2C]: two frames per frame
                b, t, h, w, c2 = y.shape
                x = y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, c2 // 2)
        if self.mode.startswith("upsample"):
            x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)  # nearest(-exact) x2
            return self.resample[1](x, dtype, stride=1, pad=1), new_cache
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))  # ZeroPad2d((0, 1, 0, 1))
        x = self.resample[1](x, dtype, stride=2, pad=0)
        if self.mode == "downsample3d":
            if cache is None:  # first chunk passes without the time conv
                return x, x[:, -1:]
            xc = jnp.concatenate([cache, x], axis=1)
            return self.time_conv.apply(xc, dtype=dtype, mode=mode), x[:, -1:]
        return x, None


def _run(layers, x, cache, **kw):
    """Run a list of cached layers; the cache of a list is the tuple of its layers' caches."""
    cache = cache if cache is not None else (None,) * len(layers)
    new = []
    for layer, c in zip(layers, cache):
        x, c = layer(x, c, **kw)
        new.append(c)
    return x, tuple(new)


class MidBlock(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.resnets = nnx.List([ResidualBlock(dim, dim, rngs=rngs), ResidualBlock(dim, dim, rngs=rngs)])
        self.attentions = nnx.List([AttentionBlock(dim, rngs=rngs)])

    def __call__(self, x, cache, **kw):
        c0, c1 = cache if cache is not None else (None, None)
        x, c0 = self.resnets[0](x, c0, **kw)
        x, _ = self.attentions[0](x, None, **kw)
        x, c1 = self.resnets[1](x, c1, **kw)
        return x, (c0, c1)


class Encoder3d(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], rngs=rngs)
        blocks, scale = [], 1.0
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(din, dout, rngs=rngs))
                if scale in cfg.attn_scales:
                    blocks.append(AttentionBlock(dout, rngs=rngs))
                din = dout
            if i != len(cfg.dim_mult) - 1:
                mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
                blocks.append(Resample(dout, mode, rngs=rngs))
                scale /= 2.0
        self.down_blocks = nnx.List(blocks)
        self.mid_block = MidBlock(dims[-1], rngs=rngs)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, rngs=rngs)

    def __call__(self, x, cache, **kw):
        c_in, c_down, c_mid, c_out = cache if cache is not None else (None,) * 4
        x, c_in = self.conv_in(x, c_in, **kw)
        x, c_down = _run(self.down_blocks, x, c_down, **kw)
        x, c_mid = self.mid_block(x, c_mid, **kw)
        x, c_out = self.conv_out(_rms_silu(x, self.norm_out.gamma[...]), c_out, **kw)
        return x, (c_in, c_down, c_mid, c_out)


class UpBlock(nnx.Module):
    def __init__(self, din: int, dout: int, num_res_blocks: int, upsample_mode: str | None, *, rngs: nnx.Rngs):
        self.resnets = nnx.List(
            [ResidualBlock(din if j == 0 else dout, dout, rngs=rngs) for j in range(num_res_blocks + 1)]
        )
        self.upsamplers = nnx.List([Resample(dout, upsample_mode, rngs=rngs)]) if upsample_mode else None

    def __call__(self, x, cache, **kw):
        c_res, c_up = cache if cache is not None else (None, None)
        x, c_res = _run(self.resnets, x, c_res, **kw)
        if self.upsamplers is not None:
            x, c_up = _run(self.upsamplers, x, c_up, **kw)
        return x, (c_res, c_up)


class Decoder3d(nnx.Module):
    def __init__(self, cfg: VAEConfig, *, rngs: nnx.Rngs):
        dims = [cfg.dec_base_dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
        temperal_upsample = cfg.temperal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], rngs=rngs)
        self.mid_block = MidBlock(dims[0], rngs=rngs)
        blocks = []
        for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                din //= 2  # the previous level's upsampler halves the channels
            mode = None
            if i != len(cfg.dim_mult) - 1:
                mode = "upsample3d" if temperal_upsample[i] else "upsample2d"
            blocks.append(UpBlock(din, dout, cfg.num_res_blocks, mode, rngs=rngs))
        self.up_blocks = nnx.List(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, rngs=rngs)

    def __call__(self, x, cache, **kw):
        c_in, c_mid, c_up, c_out = cache if cache is not None else (None,) * 4
        x, c_in = self.conv_in(x, c_in, **kw)
        x, c_mid = self.mid_block(x, c_mid, **kw)
        x, c_up = _run(self.up_blocks, x, c_up, **kw)
        x, c_out = self.conv_out(_rms_silu(x, self.norm_out.gamma[...]), c_out, **kw)
        return x, (c_in, c_mid, c_up, c_out)


# ----------------------------------------------------------------------------------------- the VAE


def _tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Equal tiles of ``tile`` covering [0, n), neighbours overlapping by at least ``overlap``."""
    if n <= tile:
        return [0]
    count = math.ceil((n - overlap) / (tile - overlap))
    return [round(i * (n - tile) / (count - 1)) for i in range(count)]


def _tile_weights(starts: list[int], tile: int, n: int, scale: int) -> np.ndarray:
    """[len(starts), tile*scale] blend weights in output units: linear ramps across each actual overlap,
    divided by their sum so that the weights of all tiles add up to one at every output position."""
    size, total = tile * scale, n * scale
    ws = []
    for i, s in enumerate(starts):
        s, e = s * scale, (s + tile) * scale
        pos = np.arange(size) + 0.5
        w = np.ones(size)
        if i > 0 and (ov := starts[i - 1] * scale + size - s) > 0:
            w = np.minimum(w, pos / ov)
        if i + 1 < len(starts) and (ov := e - starts[i + 1] * scale) > 0:
            w = np.minimum(w, (size - pos) / ov)
        ws.append(np.clip(w, 0.0, 1.0))
    denom = np.zeros(total)
    for s, w in zip(starts, ws):
        denom[s * scale : s * scale + size] += w
    return np.stack([w / denom[s * scale : s * scale + size] for s, w in zip(starts, ws)]).astype(np.float32)


class WanVAE(nnx.Module):
    """Wan2.1 VAE: ``encode`` (posterior mean), ``decode`` (clipped video), ``normalize``/``denormalize``.

    Run-time options (``set_runtime``): ``dtype`` ("float32" | "bfloat16", compute dtype), ``conv``
    ("3d" | "2d", how causal 3D convolutions are lowered) and ``tiling`` (None or (tile_px, overlap_px)).
    """

    def __init__(self, config: VAEConfig | None = None, *, rngs: nnx.Rngs, dtype: str = "float32",
                 conv: str = "3d", tiling: tuple[int, int] | None = None):
        self.config = config = config or VAEConfig()
        self.encoder = Encoder3d(config, rngs=rngs)
        self.quant_conv = Pointwise(2 * config.z_dim, 2 * config.z_dim, rngs=rngs)
        self.post_quant_conv = Pointwise(config.z_dim, config.z_dim, rngs=rngs)
        self.decoder = Decoder3d(config, rngs=rngs)
        self.dtype, self.conv, self.tiling = "float32", "3d", None
        self.set_runtime(dtype=dtype, conv=conv, tiling=tiling)

    def set_runtime(self, **changes) -> "WanVAE":
        for k, v in changes.items():
            if k not in ("dtype", "conv", "tiling"):
                raise ValueError(f"unknown VAE runtime option {k!r}")
            if k == "dtype" and str(v) not in DTYPES:
                raise ValueError(f"VAE dtype must be one of {DTYPES}, got {v!r}")
            if k == "conv" and v not in CONV_MODES:
                raise ValueError(f"VAE conv mode must be one of {CONV_MODES}, got {v!r}")
            if k == "tiling" and v is not None:
                tile, overlap = (int(a) for a in v)
                f = self.config.spatial_factor
                if tile % f or overlap % f or not 0 <= overlap < tile:
                    raise ValueError(f"tiling=(tile, overlap) needs multiples of {f} with 0 <= overlap < tile, got {v}")
                v = (tile, overlap)
            setattr(self, k, str(v) if k == "dtype" else v)
        return self

    # ---- public API

    def encode(self, video) -> jax.Array:
        """[B,3,F,H,W] video in [-1,1] (F = 1+4k, H and W multiples of 8) -> posterior mean [B,z,f,h,w]."""
        video = jnp.asarray(video)
        cfg = self.config
        t, s = cfg.temporal_factor, cfg.spatial_factor
        if video.ndim != 5 or video.shape[1] != cfg.in_channels:
            raise ValueError(f"video must be [B, {cfg.in_channels}, F, H, W], got shape {tuple(video.shape)}")
        f, h, w = video.shape[2:]
        if (f - 1) % t:
            raise ValueError(f"the Wan VAE encodes 1 + {t}k frames (1, {1 + t}, {1 + 2 * t}, ...), got {f}")
        if h % s or w % s:
            raise ValueError(f"video height and width must be multiples of {s}, got {h}x{w}")
        graphdef, state = nnx.split(self)
        return _encode_jit(graphdef, self.dtype, state, video)

    def decode(self, latents) -> jax.Array:
        """[B,z,f,h,w] latents (raw VAE space) -> [B,3,1+4(f-1),8h,8w] video clipped to [-1,1]."""
        z = jnp.asarray(latents)
        if z.ndim != 5 or z.shape[1] != self.config.z_dim:
            raise ValueError(f"latents must be [B, {self.config.z_dim}, f, h, w], got shape {tuple(z.shape)}")
        graphdef, state = nnx.split(self)
        return _decode_jit(graphdef, self.dtype, state, z)

    def _stats(self, z):
        shape = (1, -1) + (1,) * (z.ndim - 2)
        mean = jnp.asarray(self.config.latents_mean, F32).reshape(shape)
        inv_std = (1.0 / jnp.asarray(self.config.latents_std, F32)).reshape(shape)
        return mean, inv_std

    def normalize(self, z) -> jax.Array:
        """Raw VAE latents -> the DiT's latent space: (z - mean) / std (as WanVACEPipeline computes it)."""
        z = jnp.asarray(z, F32)
        mean, inv_std = self._stats(z)
        return (z - mean) * inv_std

    def denormalize(self, z) -> jax.Array:
        """The DiT's latent space -> raw VAE latents: z * std + mean (as WanPipeline computes it)."""
        z = jnp.asarray(z, F32)
        mean, inv_std = self._stats(z)
        return z / inv_std + mean

    # ---- traced implementations (channels-last inside)

    def _kw(self):
        return dict(dtype=jnp.dtype(self.dtype), mode=self.conv)

    def _encode_untiled(self, video):
        """[B,C,F,H,W] -> posterior mean [B,f,h,w,z] float32 (channels-last)."""
        kw = self._kw()
        cfg = self.config
        t, z = cfg.temporal_factor, cfg.z_dim

        def chunk(start, n):
            x = jax.lax.dynamic_slice_in_dim(video, start, n, axis=2)
            return jnp.transpose(x, (0, 2, 3, 4, 1)).astype(kw["dtype"])

        def mean_of(y):
            return self.quant_conv(y, kw["dtype"], cols=z).astype(F32)

        y0, cache = self.encoder(chunk(0, 1), None, **kw)
        m0 = mean_of(y0)
        k = (video.shape[2] - 1) // t
        if k == 0:
            return m0

        def body(cache, i):
            y, cache = self.encoder(chunk(1 + t * i, t), cache, **kw)
            return cache, mean_of(y)

        _, ms = jax.lax.scan(body, cache, jnp.arange(k))  # [k, B, 1, h, w, z]
        ms = jnp.moveaxis(ms[:, :, 0], 0, 1)
        return jnp.concatenate([m0, ms], axis=1)

    def _decode_untiled(self, z, clip=True):
        """[B,f,h,w,z] channels-last latents -> [B,3,F,H,W] float32, written chunk by chunk."""
        kw = self._kw()
        cfg = self.config
        t = cfg.temporal_factor
        b, f = z.shape[:2]
        x = self.post_quant_conv(z, kw["dtype"])

        def frames(y):  # decoder chunk [B,T,H,W,C] -> [B,C,T,H,W] float32
            y = jnp.transpose(y.astype(F32), (0, 4, 1, 2, 3))
            return jnp.clip(y, -1.0, 1.0) if clip else y

        y0, cache = self.decoder(x[:, :1], None, **kw)
        y0 = frames(y0)
        out = jnp.zeros((b, y0.shape[1], 1 + t * (f - 1), *y0.shape[3:]), F32)
        out = jax.lax.dynamic_update_slice_in_dim(out, y0, 0, axis=2)
        if f == 1:
            return out

        def body(carry, i):
            cache, out = carry
            y, cache = self.decoder(jax.lax.dynamic_slice_in_dim(x, i + 1, 1, axis=1), cache, **kw)
            out = jax.lax.dynamic_update_slice_in_dim(out, frames(y), 1 + t * i, axis=2)
            return (cache, out), None

        (_, out), _ = jax.lax.scan(body, (cache, out), jnp.arange(f - 1))
        return out

    def _plan(self, h_lat: int, w_lat: int):
        """Tile starts (latent units) along H and W, or None when no tiling applies."""
        if self.tiling is None:
            return None
        s = self.config.spatial_factor
        tile, overlap = self.tiling[0] // s, self.tiling[1] // s
        if h_lat <= tile and w_lat <= tile:
            return None
        th, tw = min(tile, h_lat), min(tile, w_lat)
        return (th, _tile_starts(h_lat, th, overlap)), (tw, _tile_starts(w_lat, tw, overlap))

    @staticmethod
    def _tiled(run, inp, out_shape, plan, in_scale, out_scale, n_out):
        """Run ``run`` on each spatial tile of ``inp`` (sizes/starts in latent units times ``in_scale``)
        and blend the [B,C,T,th,tw] results into a float32 buffer of ``out_shape`` (channels-first)."""
        (th, ys), (tw, xs) = plan
        wy = _tile_weights(ys, th, n_out[0], out_scale)
        wx = _tile_weights(xs, tw, n_out[1], out_scale)
        grid = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
        iy = np.array([ys[i] for i, _ in grid], np.int32)
        ix = np.array([xs[j] for _, j in grid], np.int32)
        weights = (jnp.asarray(wy[[i for i, _ in grid]]), jnp.asarray(wx[[j for _, j in grid]]))

        def body(acc, xs_):
            y0, x0, wy_, wx_ = xs_
            tile_in = jax.lax.dynamic_slice(
                inp, (0, 0, 0, y0 * in_scale, x0 * in_scale), (*inp.shape[:3], th * in_scale, tw * in_scale)
            )
            out = run(tile_in) * wy_[:, None] * wx_[None, :]
            start = (0, 0, 0, y0 * out_scale, x0 * out_scale)
            cur = jax.lax.dynamic_slice(acc, start, out.shape)
            return jax.lax.dynamic_update_slice(acc, cur + out, start), None

        acc, _ = jax.lax.scan(body, jnp.zeros(out_shape, F32), (jnp.asarray(iy), jnp.asarray(ix), *weights))
        return acc

    def _encode_traced(self, video):
        """[B,C,F,H,W] -> [B,z,f,h,w] float32."""
        s = self.config.spatial_factor
        b, _, f, h, w = video.shape
        plan = self._plan(h // s, w // s)
        if plan is None:
            return jnp.transpose(self._encode_untiled(video), (0, 4, 1, 2, 3))
        run = lambda v: jnp.transpose(self._encode_untiled(v), (0, 4, 1, 2, 3))  # noqa: E731
        shape = (b, self.config.z_dim, 1 + (f - 1) // self.config.temporal_factor, h // s, w // s)
        return self._tiled(run, video, shape, plan, s, 1, (h // s, w // s))

    def _decode_traced(self, z):
        """[B,z,f,h,w] -> [B,3,F,H,W] float32 in [-1,1]."""
        cfg = self.config
        s, t = cfg.spatial_factor, cfg.temporal_factor
        b, _, f, h, w = z.shape
        plan = self._plan(h, w)
        if plan is None:
            return self._decode_untiled(jnp.transpose(z, (0, 2, 3, 4, 1)))
        run = lambda zt: self._decode_untiled(jnp.transpose(zt, (0, 2, 3, 4, 1)), clip=False)  # noqa: E731
        shape = (b, cfg.out_channels, 1 + t * (f - 1), h * s, w * s)
        return jnp.clip(self._tiled(run, z, shape, plan, 1, s, (h, w)), -1.0, 1.0)


def _cast_params(state, dtype: str):
    """Cast conv/matmul weights to the compute dtype once, outside the chunk loop; norm scales stay."""
    if dtype == "float32":
        return state
    flat = [(p, v if p[-1] == "gamma" else v.replace(v[...].astype(dtype))) for p, v in nnx.to_flat_state(state)]
    return nnx.from_flat_state(flat)


def _encode_fn(graphdef, dtype, state, video):
    return nnx.merge(graphdef, _cast_params(state, dtype))._encode_traced(video)


def _decode_fn(graphdef, dtype, state, z):
    return nnx.merge(graphdef, _cast_params(state, dtype))._decode_traced(z)


# One compiled program per (architecture + run-time options, dtype, input shape).
_encode_jit = jax.jit(_encode_fn, static_argnums=(0, 1))
_decode_jit = jax.jit(_decode_fn, static_argnums=(0, 1))
