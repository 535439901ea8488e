"""The Wan2.1 video DiT and its VACE variant, in Flax NNX, with diffusers' module names.

Calling convention (as diffusers)::

    model(latents [B,16,F,H,W], timestep [B], text_embeds [B,L,4096],
          vace_context=[B,96,F,H,W] or None, vace_scale=1.0) -> flow prediction [B,16,F,H,W]

Numerics: the residual stream, LayerNorms, RMSNorms, the modulation tables, rotary embedding, the
time embedder and the gated residual adds run in float32; linear layers and attention run in
``runtime.dtype`` (bfloat16 on accelerators). Parameters are float32 unless loaded otherwise.
``runtime.residual_dtype="bfloat16"`` stores the residual streams (main and VACE) in bf16 between blocks, as
the VDOT release's bf16 models do (docs/release_parity.md), each block still computing in float32: what a
remat policy saves per layer is then half the size.

Main blocks are stacked along a leading layer axis and run with ``jax.lax.scan`` under the
configured remat policy. VACE context blocks depend only on the patch-embedded video, not on the main
blocks, so they run first (scanned as well) and their hints are added inside the main scan by a
per-layer index; the GAN taps are written into a buffer by the same scan: neither breaks scanning.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdot_jax.models.attention import attention, local_impl
from vdot_jax.models.config import Runtime, WanConfig
from vdot_jax.models.layers import F32, Dense, LayerNorm, RMSNorm, layer_norm, scan_layers, stack_layers, uniform_init
from vdot_jax.models.rope import apply_rope, rope_tables
from vdot_jax.spmd import constrain


class PatchEmbed(nnx.Module):
    """Conv3d with kernel == stride, written as a patch reshape and one matmul (kernel in DHWIO)."""

    def __init__(self, cin: int, dim: int, patch: tuple[int, int, int], *, rngs: nnx.Rngs):
        bound = 1.0 / math.sqrt(cin * math.prod(patch))
        self.kernel = nnx.Param(uniform_init(bound)(rngs.params(), (*patch, cin, dim)))
        self.bias = nnx.Param(uniform_init(bound)(rngs.params(), (dim,)))
        self.patch = tuple(patch)

    def __call__(self, x: jax.Array, dtype=F32) -> jax.Array:
        """x [B, C, F, H, W] -> tokens [B, f*h*w, dim]."""
        b, c, f, h, w = x.shape
        pt, ph, pw = self.patch
        x = x.astype(dtype).reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
        y = jnp.einsum("bcfihjwk,ijkcd->bfhwd", x, self.kernel[...].astype(dtype))
        y = y + self.bias[...].astype(dtype)
        # placed as every token activation: left to propagation, the kernel's embed split (fsdp) wins and each
        # device computes a slice of the features for the whole global batch
        return constrain(y.reshape(b, -1, y.shape[-1]), "batch", "seq", None)


class Attention(nnx.Module):
    """Multi-head attention with RMSNorm over all heads of q and k (Wan's qk norm)."""

    def __init__(self, dim: int, num_heads: int, eps: float, *, rngs: nnx.Rngs):
        self.to_q = Dense(dim, dim, rngs=rngs)
        self.to_k = Dense(dim, dim, rngs=rngs)
        self.to_v = Dense(dim, dim, rngs=rngs)
        self.to_out = nnx.List([Dense(dim, dim, rngs=rngs)])
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.num_heads = num_heads

    def __call__(self, x, context=None, rope=None, *, dtype=F32, impl="xla"):
        context = x if context is None else context
        b, n, d = x.shape
        heads = (self.num_heads, d // self.num_heads)
        q = self.norm_q(self.to_q(x, dtype)).reshape(b, n, *heads)
        k = self.norm_k(self.to_k(context, dtype)).reshape(b, context.shape[1], *heads)
        v = self.to_v(context, dtype).reshape(b, context.shape[1], *heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        q = constrain(q, "batch", "seq", "heads", None)
        # Text cross-attention reads all text tokens on every device; only self-attention is sequence-parallel.
        out = attention(q, k, v, impl if context is x else local_impl(impl)).reshape(b, n, d)
        return self.to_out[0](out, dtype)


class GeluProj(nnx.Module):
    """Linear followed by tanh-approximated GELU (diffusers' ``GELU(approximate="tanh")``)."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.proj = Dense(din, dout, rngs=rngs)

    def __call__(self, x, dtype=F32):
        return jax.nn.gelu(self.proj(x, dtype), approximate=True)


class FeedForward(nnx.Module):
    def __init__(self, dim: int, ffn_dim: int, *, rngs: nnx.Rngs):
        # Index 1 is the reference's dropout, kept empty so keys read ``ffn.net.0.proj`` / ``ffn.net.2``.
        self.net = nnx.List([GeluProj(dim, ffn_dim, rngs=rngs), None, Dense(ffn_dim, dim, rngs=rngs)])

    def __call__(self, x, dtype=F32):
        return self.net[2](self.net[0](x, dtype), dtype)


class WanBlock(nnx.Module):
    """Self-attention with 3D RoPE, text cross-attention, GELU FFN; adaLN-modulated, gated residuals."""

    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
        d = cfg.dim
        self.attn1 = Attention(d, cfg.num_heads, cfg.eps, rngs=rngs)
        self.attn2 = Attention(d, cfg.num_heads, cfg.eps, rngs=rngs)
        self.norm2 = LayerNorm(d, cfg.eps) if cfg.cross_attn_norm else None
        self.ffn = FeedForward(d, cfg.ffn_dim, rngs=rngs)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (1, 6, d), F32) / d**0.5)
        self.eps = cfg.eps

    def __call__(self, x, text, mod, rope, *, dtype=F32, impl="xla"):
        """x [B,N,D] residual stream (float32, or bf16 as stored between blocks: ``Runtime.residual_dtype``),
        computed on in float32 and returned in float32; mod [B,6,D] float32 time projection."""
        x = x.astype(F32)
        shift, scale, gate, c_shift, c_scale, c_gate = jnp.split(self.scale_shift_table[...] + mod, 6, axis=1)
        h = (layer_norm(x, self.eps) * (1 + scale) + shift).astype(dtype)
        x = x + self.attn1(h, rope=rope, dtype=dtype, impl=impl).astype(F32) * gate
        h = (self.norm2(x) if self.norm2 is not None else x).astype(dtype)
        x = x + self.attn2(h, text, dtype=dtype, impl=impl).astype(F32)
        h = (layer_norm(x, self.eps) * (1 + c_scale) + c_shift).astype(dtype)
        x = x + self.ffn(h, dtype).astype(F32) * c_gate
        return constrain(x, "batch", "seq", None)


class VaceBlock(WanBlock):
    """A Wan block on the context stream that also emits a (zero-initialised) hint projection."""

    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.proj_out = Dense(cfg.dim, cfg.dim, rngs=rngs, zero_init=True)

    def __call__(self, c, text, mod, rope, *, dtype=F32, impl="xla"):
        c = super().__call__(c, text, mod, rope, dtype=dtype, impl=impl)
        return c, self.proj_out(c, dtype)


class TimestepEmbedding(nnx.Module):
    def __init__(self, din: int, dim: int, *, rngs: nnx.Rngs):
        self.linear_1 = Dense(din, dim, rngs=rngs)
        self.linear_2 = Dense(dim, dim, rngs=rngs)

    def __call__(self, x):
        return self.linear_2(jax.nn.silu(self.linear_1(x)))


class TextProjection(nnx.Module):
    def __init__(self, din: int, dim: int, *, rngs: nnx.Rngs):
        self.linear_1 = Dense(din, dim, rngs=rngs)
        self.linear_2 = Dense(dim, dim, rngs=rngs)

    def __call__(self, x, dtype=F32):
        return self.linear_2(jax.nn.gelu(self.linear_1(x, dtype), approximate=True), dtype)


def timestep_sinusoid(t: jax.Array, dim: int, dtype: str = "float32") -> jax.Array:
    """[B] timesteps (0..1000 scale) -> [B, dim] float32 features, cosines first (as Wan). ``dtype="bfloat16"``
    computes them as the VDOT release's training copy of Wan does (timesteps, frequencies, their product and the
    cos/sin in bf16: 25-44 % relative error at t >= 500; docs/release_parity.md)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=F32) / half)
    dt = jnp.dtype(dtype)
    args = t.astype(dt)[:, None] * freqs.astype(dt)[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1).astype(F32)


class ConditionEmbedder(nnx.Module):
    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs):
        self.time_embedder = TimestepEmbedding(cfg.freq_dim, cfg.dim, rngs=rngs)
        self.time_proj = Dense(cfg.dim, 6 * cfg.dim, rngs=rngs)
        self.text_embedder = TextProjection(cfg.text_dim, cfg.dim, rngs=rngs)
        self.freq_dim = cfg.freq_dim

    def time(self, t, features_dtype: str = "float32"):
        """-> temb [B,D] and the block modulation [B,6,D], both float32."""
        temb = self.time_embedder(timestep_sinusoid(t, self.freq_dim, features_dtype))
        mod = self.time_proj(jax.nn.silu(temb))
        return temb, mod.reshape(mod.shape[0], 6, -1)


class WanModel(nnx.Module):
    """Wan2.1 text-to-video DiT; with ``cfg.vace_layers`` set, the VACE variant."""

    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs, runtime: Runtime | None = None):
        self.cfg = cfg
        self.runtime = runtime or Runtime()
        d = cfg.dim
        self.patch_embedding = PatchEmbed(cfg.in_channels, d, cfg.patch_size, rngs=rngs)
        self.condition_embedder = ConditionEmbedder(cfg, rngs=rngs)
        self.blocks = stack_layers(WanBlock, cfg.num_layers, cfg, rngs)
        self.proj_out = Dense(d, cfg.out_channels * math.prod(cfg.patch_size), rngs=rngs)
        self.scale_shift_table = nnx.Param(jax.random.normal(rngs.params(), (1, 2, d), F32) / d**0.5)
        if cfg.is_vace:
            self.vace_patch_embedding = PatchEmbed(cfg.vace_in_channels, d, cfg.patch_size, rngs=rngs)
            self.vace_proj_in = Dense(d, d, rngs=rngs, zero_init=True)
            self.vace_blocks = stack_layers(VaceBlock, len(cfg.vace_layers), cfg, rngs)

    def set_runtime(self, **changes) -> "WanModel":
        self.runtime.update(**changes)
        return self

    def __call__(self, latents, timestep, text_embeds, vace_context=None, vace_scale=1.0, taps=()):
        """Flow prediction [B, out_channels, F, H, W].

        With ``taps`` (main block indices), returns ``(prediction, features, temb)``: the token states
        [B, N, D] after each tapped block (hint included, in the stream's stored dtype) and the time embedding
        [B, D] -- what the GAN head of the critic reads, written into a buffer by the one scan over the main blocks.
        """
        cfg, rt = self.cfg, self.runtime
        dtype = rt.compute_dtype
        x = jnp.asarray(latents)
        b, c, f, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        if c != cfg.in_channels or f % pt or h % ph or w % pw:
            raise ValueError(
                f"latents of shape {x.shape} do not fit the model: expected [B, {cfg.in_channels}, F, H, W] "
                f"with F, H, W divisible by the patch size {cfg.patch_size}"
            )
        grid = (f // pt, h // ph, w // pw)
        rope = rope_tables(grid, cfg.head_dim, cfg.rope_theta)
        t = jnp.broadcast_to(jnp.asarray(timestep, F32).reshape(-1), (b,))

        tokens = self.patch_embedding(x, dtype)
        temb, mod = self.condition_embedder.time(t, self.runtime.timestep_features_dtype)
        text = self.condition_embedder.text_embedder(jnp.asarray(text_embeds), dtype)
        kw = dict(dtype=dtype, impl=rt.attention)

        hints, hint_index = None, np.full((cfg.num_layers,), -1, np.int32)
        if vace_context is not None:
            if not cfg.is_vace:
                raise ValueError("vace_context was given but this is a text-to-video model without VACE blocks")
            hints = self._vace_hints(tokens, jnp.asarray(vace_context), text, mod, rope, vace_scale, grid, kw)
            hint_index[list(cfg.vace_layers)] = np.arange(len(cfg.vace_layers))

        taps = tuple(sorted(int(i) for i in taps))
        if taps and (taps[0] < 0 or taps[-1] >= cfg.num_layers):
            raise ValueError(f"tap layers {taps} must lie in [0, {cfg.num_layers})")
        # Each block writes its output into a slot of ``features``: a tapped block into its own, the others into
        # a scratch slot. One scan over the whole stack: cutting it at the taps sliced (copied) the differentiated
        # weight stack per segment and gave each segment its own accumulator of the hints' cotangent.
        tapped = sorted(set(taps))  # a tap named twice reads the one slot twice
        slot = np.full((cfg.num_layers,), len(tapped), np.int32)
        slot[tapped] = np.arange(len(tapped))

        def main_body(block, hs, x, features=None):
            idx, k = x
            stored = hs.dtype
            hs = block(hs, text, mod, rope, **kw)
            if hints is not None:
                hint = hints[jnp.maximum(idx, 0)].astype(F32)
                hs = jnp.where(idx >= 0, hs + hint, hs)
            hs = hs.astype(stored)
            if features is None:
                return hs, None
            return (hs, jax.lax.dynamic_update_index_in_dim(features, hs, k, 0)), None

        hs = constrain(tokens.astype(rt.residual_dtype), "batch", "seq", None)
        xs = (jnp.asarray(hint_index), jnp.asarray(slot))
        if taps:
            features = constrain(jnp.zeros((len(tapped) + 1, *hs.shape), hs.dtype), None, "batch", "seq", None)
            (hs, features), _ = scan_layers(self.blocks, main_body, hs, xs, rt.remat, written=features)
            features = [features[slot[i]] for i in taps]
        else:
            hs, _ = scan_layers(self.blocks, main_body, hs, xs, rt.remat)

        shift, scale = jnp.split(self.scale_shift_table[...] + temb[:, None, :], 2, axis=1)
        hs = (layer_norm(hs, cfg.eps) * (1 + scale) + shift).astype(dtype)
        out = self.proj_out(hs, dtype).astype(F32)
        out = out.reshape(b, *grid, pt, ph, pw, cfg.out_channels)
        out = out.transpose(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, cfg.out_channels, f, h, w)
        return (out, features, temb) if taps else out

    def _vace_hints(self, tokens, context, text, mod, rope, vace_scale, grid, kw):
        """[n_vace, B, N, D] hints (already multiplied by their scales) from the VACE context."""
        cfg = self.cfg
        n = len(cfg.vace_layers)
        b, cc, cf, ch, cw = context.shape
        pt, ph, pw = cfg.patch_size
        if cc != cfg.vace_in_channels or (ch // ph, cw // pw) != grid[1:] or cf // pt > grid[0]:
            raise ValueError(
                f"vace_context of shape {context.shape} does not fit latents with token grid {grid}: expected "
                f"[B, {cfg.vace_in_channels}, F, H, W] with the latents' H and W and at most their F"
            )
        scale = jnp.broadcast_to(jnp.asarray(vace_scale, F32).reshape(-1), (n,))
        c = self.vace_patch_embedding(context, kw["dtype"])
        # Fewer context frames than latent frames: the missing tokens are zeros (as the reference pads).
        c = jnp.pad(c, ((0, 0), (0, tokens.shape[1] - c.shape[1]), (0, 0)))
        c = (self.vace_proj_in(c, kw["dtype"]) + tokens).astype(self.runtime.residual_dtype)
        c = constrain(c, "batch", "seq", None)

        def body(block, cs, s):
            stored = cs.dtype
            cs, hint = block(cs, text, mod, rope, **kw)
            return cs.astype(stored), hint * s.astype(hint.dtype)

        _, hints = scan_layers(self.vace_blocks, body, c, scale, self.runtime.remat)
        return hints
