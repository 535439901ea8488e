"""The GAN head that VDOT puts on the critic (fake score): register-token cross-attention taps.

At each tapped main block of the critic's trunk, a learned register token (RMSNorm) cross-attends to
the video tokens projected down to ``token_dim`` (LayerNorm, Linear, GELU, Linear, LayerNorm) with
q/k RMSNorm, then passes an FFN, and is projected back to the model width. The tap outputs and 10x the
critic's time embedding are concatenated, LayerNorm'ed, and an MLP (Linear, SiLU, Linear) gives one
logit per example. Defaults follow the VDOT release (token dim 512, 8 heads).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vdot_jax.models.attention import attention, local_impl
from vdot_jax.models.wan import F32, Dense, LayerNorm, RMSNorm

# Blocks tapped by the release's head: 13/21/29 of 30 (1.3B) and 23/31/39 of 40 (14B).
RELEASE_TAPS = {30: (13, 21, 29), 40: (23, 31, 39)}
TIME_EMBED_SCALE = 10.0  # release: the time embedding enters the final MLP multiplied by 10


def default_taps(num_layers: int) -> tuple[int, ...]:
    """The release's taps, or the same relative depths (~0.45, 0.72, 0.98) for other depths."""
    if num_layers in RELEASE_TAPS:
        return RELEASE_TAPS[num_layers]
    return tuple(sorted({min(num_layers - 1, max(0, round(f * num_layers) - 1)) for f in (0.47, 0.73, 1.0)}))


class GanTap(nnx.Module):
    def __init__(self, dim: int, token_dim: int, num_heads: int, ffn_mult: int, eps: float, *, rngs: nnx.Rngs):
        self.norm_in = LayerNorm(dim, eps)
        self.linear_in_1 = Dense(dim, token_dim, rngs=rngs)
        self.linear_in_2 = Dense(token_dim, token_dim, rngs=rngs)
        self.norm_video = LayerNorm(token_dim, eps)
        self.token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, token_dim), F32) / token_dim**0.5)
        self.norm_token = RMSNorm(token_dim, eps)
        self.to_q = Dense(token_dim, token_dim, rngs=rngs)
        self.to_k = Dense(token_dim, token_dim, rngs=rngs)
        self.to_v = Dense(token_dim, token_dim, rngs=rngs)
        self.norm_q = RMSNorm(token_dim, eps)
        self.norm_k = RMSNorm(token_dim, eps)
        self.to_out = Dense(token_dim, token_dim, rngs=rngs)
        self.norm_ffn = RMSNorm(token_dim, eps)
        self.ffn_1 = Dense(token_dim, ffn_mult * token_dim, rngs=rngs)
        self.ffn_2 = Dense(ffn_mult * token_dim, token_dim, rngs=rngs)
        self.proj_out = Dense(token_dim, dim, rngs=rngs)
        self.num_heads = num_heads

    def __call__(self, x, *, dtype=F32, impl="xla"):
        """x [B, N, dim] token states -> [B, dim] float32."""
        b, n, _ = x.shape
        v_in = jax.nn.gelu(self.linear_in_1(self.norm_in(x), dtype), approximate=False)
        video = self.norm_video(self.linear_in_2(v_in, dtype)).astype(dtype)
        tok = jnp.broadcast_to(self.token[...], (b, 1, self.token.shape[-1]))
        heads = (self.num_heads, tok.shape[-1] // self.num_heads)
        q = self.norm_q(self.to_q(self.norm_token(tok), dtype)).reshape(b, 1, *heads)
        k = self.norm_k(self.to_k(video, dtype)).reshape(b, n, *heads)
        v = self.to_v(video, dtype).reshape(b, n, *heads)
        att = attention(q, k, v, local_impl(impl)).reshape(b, 1, -1)
        r = tok + self.to_out(att, dtype).astype(F32)
        r = r + self.ffn_2(jax.nn.gelu(self.ffn_1(self.norm_ffn(r), dtype), approximate=False), dtype).astype(F32)
        return self.proj_out(r[:, 0], dtype).astype(F32)


class GanHead(nnx.Module):
    def __init__(self, dim: int, taps: tuple[int, ...], *, token_dim: int = 512, num_heads: int = 8,
                 ffn_mult: int = 4, eps: float = 1e-6, rngs: nnx.Rngs):
        self.taps = tuple(taps)
        self.tap_heads = nnx.List([GanTap(dim, token_dim, num_heads, ffn_mult, eps, rngs=rngs) for _ in self.taps])
        width = dim * (len(self.taps) + 1)
        self.norm = LayerNorm(width, eps)
        self.linear_1 = Dense(width, dim, rngs=rngs)
        self.linear_2 = Dense(dim, 1, rngs=rngs)

    def __call__(self, features, temb, *, dtype=F32, impl="xla"):
        """features: one [B, N, dim] array per tap; temb [B, dim] -> logits [B] float32."""
        outs = [head(f, dtype=dtype, impl=impl) for head, f in zip(self.tap_heads, features)]
        h = jnp.concatenate([*outs, TIME_EMBED_SCALE * temb.astype(F32)], axis=-1)
        h = jax.nn.silu(self.linear_1(self.norm(h), dtype))
        return self.linear_2(h, dtype).astype(F32)[:, 0]
