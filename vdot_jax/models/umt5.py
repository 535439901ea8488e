"""The umT5 encoder (Wan2.1's text encoder) in Flax NNX, with transformers' module names.

Calling convention (as transformers' ``UMT5EncoderModel``)::

    model(input_ids [B, L] int, attention_mask [B, L] 0/1) -> last_hidden_state [B, L, d_model] float32

umT5 is T5 v1.1 with one difference: every layer has its own relative position bias table (T5 keeps one,
in layer 0). Attention logits are not scaled by 1/sqrt(d_kv); padded keys are masked out; padded query
rows are computed like any other (callers zero them, see ``vdot_jax.models.text_encoder``).

Numerics follow ``vdot_jax.models.wan``: the residual stream, the RMSNorms, the position bias, the
softmax and the gated-GELU product run in float32; the linear layers and the two attention matmuls run
in ``runtime.dtype``. Parameters are float32 unless loaded otherwise. Layers are stacked along a leading
axis and run with ``jax.lax.scan`` under the configured remat policy.

Parameter tree (HF key = our path with the layer index after ``encoder.block``, ``kernel``/``scale``/
``embedding`` -> ``weight``)::

    shared.embedding                                             [vocab, d_model]
    encoder.block.layer.0.SelfAttention.{q,k,v}.kernel           [L, d_model, heads*d_kv]
    encoder.block.layer.0.SelfAttention.o.kernel                 [L, heads*d_kv, d_model]
    encoder.block.layer.0.SelfAttention.relative_attention_bias.embedding  [L, buckets, heads]
    encoder.block.layer.0.layer_norm.scale                       [L, d_model]
    encoder.block.layer.1.DenseReluDense.{wi_0,wi_1}.kernel      [L, d_model, d_ff]
    encoder.block.layer.1.DenseReluDense.wo.kernel               [L, d_ff, d_model]
    encoder.block.layer.1.layer_norm.scale                       [L, d_model]
    encoder.final_layer_norm.scale                               [d_model]
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vdot_jax.models.config import Runtime
from vdot_jax.models.layers import RMSNorm, scan_layers, stack_layers
from vdot_jax.spmd import constrain

F32 = jnp.float32


@dataclass(frozen=True)
class UMT5Config:
    # Defaults: umT5-XXL as Wan2.1 uses it (wan/modules/t5.py ``umt5_xxl``; HF google/umt5-xxl config).
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"UMT5Config.{name} must be positive, got {getattr(self, name)}")
        if self.relative_attention_num_buckets < 4 or self.relative_attention_num_buckets % 4:
            raise ValueError(
                f"relative_attention_num_buckets must be a positive multiple of 4, got {self.relative_attention_num_buckets}"
            )

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "UMT5Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown UMT5Config fields {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def from_hf(cls, d: dict) -> "UMT5Config":
        """From a transformers ``UMT5Config`` config.json (encoder part; gated-gelu only)."""
        act = d.get("feed_forward_proj", "gated-gelu")
        if act != "gated-gelu":
            raise ValueError(f"only gated-gelu umT5 encoders are supported (config has feed_forward_proj={act!r})")
        if d.get("model_type", "umt5") != "umt5":
            raise ValueError(f"expected a umt5 config, got model_type={d.get('model_type')!r}")
        return cls(
            vocab_size=d.get("vocab_size", 250112),
            d_model=d.get("d_model", 512),
            d_kv=d.get("d_kv", 64),
            d_ff=d.get("d_ff", 1024),
            num_layers=d.get("num_layers", 8),
            num_heads=d.get("num_heads", 6),
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
        )

    def to_hf(self) -> dict:
        return dict(
            model_type="umt5", architectures=["UMT5EncoderModel"], feed_forward_proj="gated-gelu",
            is_encoder_decoder=False, tie_word_embeddings=False, **dataclasses.asdict(self),
        )


UMT5_XXL = UMT5Config()
UMT5_TINY = UMT5Config(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)


def relative_position_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int) -> np.ndarray:
    """[q_len, k_len] int32 bucket of (key position - query position), bidirectional T5 bucketing.

    Half the buckets hold keys after the query; within each half, distances below num_buckets/4 get a
    bucket each and larger ones share logarithmically wider buckets up to ``max_distance``. Computed in
    float32 in the same order as the reference, so the integer truncation agrees with it.
    """
    rel = np.arange(k_len, dtype=np.int64)[None, :] - np.arange(q_len, dtype=np.int64)[:, None]
    half = num_buckets // 2
    out = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    ratio = np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact)
    log_ratio = np.log(ratio) / np.float32(math.log(max_distance / max_exact)) * np.float32(half - max_exact)
    large = np.minimum(max_exact + log_ratio.astype(np.int64), half - 1)
    return (out + np.where(dist < max_exact, dist, large)).astype(np.int32)


def _normal(std: float):
    def init(key, shape, dtype=F32):
        return std * jax.random.normal(key, shape, dtype)

    return init


class Linear(nnx.Module):
    """Bias-free linear layer computing in a dtype chosen at call time (T5 has no biases)."""

    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs, std: float | None = None):
        self.kernel = nnx.Param(_normal(std if std is not None else din**-0.5)(rngs.params(), (din, dout)))

    def __call__(self, x: jax.Array, dtype=F32) -> jax.Array:
        return jnp.dot(x.astype(dtype), self.kernel[...].astype(dtype))


class Embedding(nnx.Module):
    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs, std: float = 1.0):
        self.embedding = nnx.Param(_normal(std)(rngs.params(), (num, dim)))

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding[...], ids, axis=0)


class UMT5Attention(nnx.Module):
    """Self-attention with this layer's own relative position bias; no 1/sqrt(d) scaling."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        d, inner = cfg.d_model, cfg.inner_dim
        self.q = Linear(d, inner, rngs=rngs, std=(d * cfg.d_kv) ** -0.5)
        self.k = Linear(d, inner, rngs=rngs)
        self.v = Linear(d, inner, rngs=rngs)
        self.o = Linear(inner, d, rngs=rngs, std=inner**-0.5)
        self.relative_attention_bias = Embedding(cfg.relative_attention_num_buckets, cfg.num_heads, rngs=rngs,
                                                 std=d**-0.5)
        self.num_heads, self.d_kv = cfg.num_heads, cfg.d_kv

    def __call__(self, x, buckets, key_mask, *, dtype=F32):
        """x [B,L,D]; buckets [L,L] int32; key_mask [B,L] bool (True = attend)."""
        b, n, _ = x.shape
        heads = (self.num_heads, self.d_kv)
        q = self.q(x, dtype).reshape(b, n, *heads)
        k = self.k(x, dtype).reshape(b, n, *heads)
        v = self.v(x, dtype).reshape(b, n, *heads)
        q = constrain(q, "batch", "seq", "heads", None)
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=F32)
        bias = self.relative_attention_bias(buckets).astype(F32)  # [L, L, H]
        logits = logits + bias.transpose(2, 0, 1)[None]
        logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(F32).min)
        probs = jax.nn.softmax(logits, axis=-1).astype(dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, -1)
        return self.o(out, dtype)


class UMT5LayerSelfAttention(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.SelfAttention = UMT5Attention(cfg, rngs=rngs)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(self, x, buckets, key_mask, *, dtype=F32):
        return x + self.SelfAttention(self.layer_norm(x), buckets, key_mask, dtype=dtype).astype(F32)


class UMT5DenseGatedActDense(nnx.Module):
    """wo(gelu_tanh(wi_0 x) * wi_1 x); the gate product in float32."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.wi_0 = Linear(cfg.d_model, cfg.d_ff, rngs=rngs)
        self.wi_1 = Linear(cfg.d_model, cfg.d_ff, rngs=rngs)
        self.wo = Linear(cfg.d_ff, cfg.d_model, rngs=rngs, std=cfg.d_ff**-0.5)

    def __call__(self, x, dtype=F32):
        gate = jax.nn.gelu(self.wi_0(x, dtype).astype(F32), approximate=True)
        h = gate * self.wi_1(x, dtype).astype(F32)
        return self.wo(h, dtype)


class UMT5LayerFF(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.DenseReluDense = UMT5DenseGatedActDense(cfg, rngs=rngs)
        self.layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(self, x, *, dtype=F32):
        return x + self.DenseReluDense(self.layer_norm(x), dtype).astype(F32)


class UMT5Block(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.layer = nnx.List([UMT5LayerSelfAttention(cfg, rngs=rngs), UMT5LayerFF(cfg, rngs=rngs)])

    def __call__(self, x, buckets, key_mask, *, dtype=F32):
        x = self.layer[0](x, buckets, key_mask, dtype=dtype)
        x = self.layer[1](x, dtype=dtype)
        return constrain(x, "batch", "seq", "embed")


class UMT5Stack(nnx.Module):
    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs):
        self.block = stack_layers(UMT5Block, cfg.num_layers, cfg, rngs)
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)


class UMT5EncoderModel(nnx.Module):
    """umT5 encoder: token ids and a padding mask -> final hidden states (float32)."""

    def __init__(self, cfg: UMT5Config, *, rngs: nnx.Rngs, runtime: Runtime | None = None):
        self.cfg = cfg
        self.runtime = runtime or Runtime()
        self.shared = Embedding(cfg.vocab_size, cfg.d_model, rngs=rngs)
        self.encoder = UMT5Stack(cfg, rngs=rngs)

    def set_runtime(self, **changes) -> "UMT5EncoderModel":
        self.runtime.update(**changes)
        return self

    def __call__(self, input_ids, attention_mask=None) -> jax.Array:
        cfg, rt = self.cfg, self.runtime
        dtype = rt.compute_dtype
        ids = jnp.asarray(input_ids)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {ids.shape}")
        key_mask = jnp.ones(ids.shape, bool) if attention_mask is None else jnp.asarray(attention_mask) > 0
        if key_mask.shape != ids.shape:
            raise ValueError(f"attention_mask of shape {key_mask.shape} does not match input_ids of shape {ids.shape}")
        n = ids.shape[1]
        buckets = jnp.asarray(_buckets(n, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance))

        def body(block, x, _):
            return block(x, buckets, key_mask, dtype=dtype), None

        x = constrain(self.shared(ids).astype(F32), "batch", "seq", "embed")
        x, _ = scan_layers(self.encoder.block, body, x, None, rt.remat)
        return self.encoder.final_layer_norm(x)


@functools.lru_cache(maxsize=8)
def _buckets(n: int, num_buckets: int, max_distance: int) -> np.ndarray:
    return relative_position_buckets(n, n, num_buckets, max_distance)
