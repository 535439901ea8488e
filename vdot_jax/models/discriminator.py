"""The GAN head that VDOT puts on the critic (fake score), as in the release (docs/method.md, "GAN term").

Release: training/wan/modules/model.py (``GanAttentionBlock``, ``MLPProj``, ``RegisterTokens``,
``WanGanCrossAttention``), training/utils/wan_wrapper_2.py (``adding_cls_branch``) and
training/wan/modules/vace_gan_model.py (the taps and the classifier input).

* Register tokens: one learned ``[n_taps, token_dim]`` array, init N(0, 0.02^2), RMSNorm'ed (eps 1e-6);
  token i goes to tap i.
* Per tap, one block: the video tokens are projected down by an MLP (LayerNorm, Linear(dim, dim), GELU,
  Linear(dim, token_dim), LayerNorm; torch's default LayerNorm eps 1e-5, exact GELU); the register token is the
  single *query* of a cross-attention over them (q/k RMSNorm over all heads, eps 1e-6); token = register +
  attention output; y = FFN(LayerNorm without affine (eps 1e-6)(token)) + token, FFN = Linear(token_dim,
  ffn_dim), tanh-GELU, Linear(ffn_dim, token_dim); out = the up-projection MLP (LayerNorm, Linear(token_dim,
  token_dim), GELU, Linear(token_dim, dim), LayerNorm) of y.
* Classifier: the tap outputs and 10x the critic's time embedding, concatenated ([B, (n_taps + 1) dim]),
  LayerNorm (eps 1e-5), Linear(., dim), SiLU, Linear(dim, 1).

Parameter count per tap: 46,974,976 at dim 5120 (14B), 19,428,352 at dim 1536 (1.3B), with token_dim 512 and
ffn_dim 13824 (tested). Parameter names follow diffusers' conventions (``attn.to_q``, ``ffn.net.0.proj``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vdot_jax.models.layers import F32, Dense, LayerNorm, RMSNorm, layer_norm
from vdot_jax.models.wan import Attention, FeedForward

# Blocks tapped by the release's head: 13/21/29 of 30 (1.3B) and 23/31/39 of 40 (14B).
RELEASE_TAPS = {30: (13, 21, 29), 40: (23, 31, 39)}
TIME_EMBED_SCALE = 10.0  # release: the time embedding enters the classifier multiplied by 10
TORCH_LN_EPS = 1e-5  # release: torch.nn.LayerNorm's default, in the MLP projections and the classifier
EPS = 1e-6  # release: register/q/k RMSNorm and the FFN's affine-free LayerNorm


def default_taps(num_layers: int) -> tuple[int, ...]:
    """The release's taps, or the same relative depths (~0.45, 0.72, 0.98) for other depths."""
    if num_layers in RELEASE_TAPS:
        return RELEASE_TAPS[num_layers]
    return tuple(sorted({min(num_layers - 1, max(0, round(f * num_layers) - 1)) for f in (0.47, 0.73, 1.0)}))


class MLPProj(nnx.Module):
    """LayerNorm, Linear(din, din), GELU (exact), Linear(din, dout), LayerNorm (the release's ``MLPProj``)."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.norm_in = LayerNorm(din, TORCH_LN_EPS)
        self.linear_1 = Dense(din, din, rngs=rngs)
        self.linear_2 = Dense(din, dout, rngs=rngs)
        self.norm_out = LayerNorm(dout, TORCH_LN_EPS)

    def __call__(self, x, dtype=F32):
        h = jax.nn.gelu(self.linear_1(self.norm_in(x), dtype), approximate=False)
        return self.norm_out(self.linear_2(h, dtype))


class GanBlock(nnx.Module):
    """One tap: the release's ``GanAttentionBlock``."""

    def __init__(self, dim: int, token_dim: int, num_heads: int, ffn_dim: int, *, rngs: nnx.Rngs):
        self.proj_in = MLPProj(dim, token_dim, rngs=rngs)
        # the register token is the query, the projected video tokens the keys/values; q/k RMSNorm as in Wan
        self.attn = Attention(token_dim, num_heads, EPS, rngs=rngs)
        self.ffn = FeedForward(token_dim, ffn_dim, rngs=rngs)  # Linear, tanh-GELU, Linear
        self.proj_out = MLPProj(token_dim, dim, rngs=rngs)

    def __call__(self, x, token, *, dtype=F32, impl="xla"):
        """x [B, N, dim] video token states, token [B, 1, token_dim] -> [B, dim] float32."""
        video = self.proj_in(x, dtype).astype(dtype)
        tok = token + self.attn(token, video, dtype=dtype, impl=impl).astype(F32)
        y = self.ffn(layer_norm(tok, EPS), dtype).astype(F32) + tok  # the release's norm2: no affine
        return self.proj_out(y[:, 0], dtype).astype(F32)


class GanHead(nnx.Module):
    def __init__(self, dim: int, taps: tuple[int, ...], *, token_dim: int = 512, num_heads: int = 8,
                 ffn_dim: int = 13824, rngs: nnx.Rngs):
        self.taps = tuple(taps)
        self.register_tokens = nnx.Param(0.02 * jax.random.normal(rngs.params(), (len(self.taps), token_dim), F32))
        self.register_norm = RMSNorm(token_dim, EPS)
        # Not "blocks": that name marks stacked (scanned) layers for the sharding rules.
        self.gan_blocks = nnx.List([GanBlock(dim, token_dim, num_heads, ffn_dim, rngs=rngs) for _ in self.taps])
        width = dim * (len(self.taps) + 1)
        self.norm = LayerNorm(width, TORCH_LN_EPS)
        self.linear_1 = Dense(width, dim, rngs=rngs)
        self.linear_2 = Dense(dim, 1, rngs=rngs)

    def __call__(self, features, temb, *, dtype=F32, impl="xla"):
        """features: one [B, N, dim] array per tap; temb [B, dim] -> logits [B] float32."""
        b = temb.shape[0]
        registers = self.register_norm(self.register_tokens[...])
        outs = [blk(f, jnp.broadcast_to(registers[i], (b, 1, registers.shape[-1])), dtype=dtype, impl=impl)
                for i, (blk, f) in enumerate(zip(self.gan_blocks, features))]
        h = jnp.concatenate([*outs, TIME_EMBED_SCALE * temb.astype(F32)], axis=-1)
        h = jax.nn.silu(self.linear_1(self.norm(h), dtype))
        return self.linear_2(h, dtype).astype(F32)[:, 0]
