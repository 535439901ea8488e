"""One attention function for every model, with a registry of implementations.

Layout everywhere: q [B, Sq, H, D], k and v [B, Skv, H, D] -> [B, Sq, H, D]; no mask (Wan attends to
everything, text padding included -- padded text embeddings are zero, as Wan makes them).

- ``xla``: plain XLA. Runs everywhere; materialises the [B, H, Sq, Skv] scores, so it is for tests and
  small shapes (at 32k video tokens it needs ~72 GB).
- ``cudnn``: cuDNN flash attention through ``jax.nn.dot_product_attention``; bf16/fp16 only, so fp32
  inputs are cast down and the result cast back.
- ``splash``: Pallas splash attention for TPU. Sequence lengths are padded to the block size and the
  padding is masked with segment ids. ``splash_interpret`` runs the same kernel in Pallas interpret mode
  on any backend, which is how CPU tests check it.

``ulysses:INNER`` (e.g. ``ulysses:cudnn``) is sequence-parallel self-attention over the ``context`` mesh
axis (``vdot_jax.parallel.ulysses``) running INNER locally; ``local_impl`` gives INNER for attention that
needs no sequence parallelism (text cross-attention).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
_REGISTRY: dict[str, AttentionFn] = {}


def register(name: str):
    def wrap(fn: AttentionFn) -> AttentionFn:
        _REGISTRY[name] = fn
        return fn

    return wrap


def available() -> list[str]:
    return sorted(_REGISTRY)


def local_impl(impl: str) -> str:
    """The implementation that runs on each device (``ulysses:cudnn`` -> ``cudnn``)."""
    return impl.partition(":")[2] or "xla" if impl.startswith("ulysses") else impl


def attention(q: jax.Array, k: jax.Array, v: jax.Array, impl: str = "xla") -> jax.Array:
    """Softmax attention with scale 1/sqrt(head_dim), dispatched by ``impl``."""
    if impl.startswith("ulysses"):
        from vdot_jax.parallel.ulysses import ulysses_attention

        return ulysses_attention(q, k, v, local_impl(impl))
    try:
        fn = _REGISTRY[impl]
    except KeyError:
        raise ValueError(
            f"unknown attention implementation {impl!r}; choose one of {available()} or ulysses:<one of them>"
        ) from None
    return fn(q, k, v)


@register("xla")
def _xla(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, implementation="xla")


@register("cudnn")
def _cudnn(q, k, v):
    dtype = q.dtype
    if dtype not in (jnp.bfloat16, jnp.float16):
        q, k, v = (a.astype(jnp.bfloat16) for a in (q, k, v))
    return jax.nn.dot_product_attention(q, k, v, implementation="cudnn").astype(dtype)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def _splash(q, k, v, *, interpret: bool, block: int = 128):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, sq, h, d = q.shape
    skv = k.shape[1]
    pq, pkv = _round_up(sq, block), _round_up(skv, block)
    mask = sm.MultiHeadMask([sm.FullMask((pq, pkv)) for _ in range(h)])
    sizes = sk.BlockSizes(
        block_q=block, block_kv_compute=block, block_kv=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )
    kernel = sk.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
    # Splash takes [H, S, D] per example and does not scale q itself.
    qh = jnp.pad(q * (d**-0.5), ((0, 0), (0, pq - sq), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    kh = jnp.pad(k, ((0, 0), (0, pkv - skv), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    vh = jnp.pad(v, ((0, 0), (0, pkv - skv), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    # Padded keys get segment 0 and real queries segment 1, so padding is never attended to.
    seg = sk.SegmentIds(q=(jnp.arange(pq) < sq).astype(jnp.int32), kv=(jnp.arange(pkv) < skv).astype(jnp.int32))
    out = jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=seg))(qh, kh, vh)
    return out.transpose(0, 2, 1, 3)[:, :sq]


register("splash")(functools.partial(_splash, interpret=False))
register("splash_interpret")(functools.partial(_splash, interpret=True))
