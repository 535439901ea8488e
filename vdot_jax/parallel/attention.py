"""Attention on a mesh: the one place where Pallas and cuDNN kernels are wrapped in ``jax.shard_map``.

XLA cannot partition those custom calls, so under a mesh they run per shard: batch split over the axes the
logical rules give ``batch`` (``data``/``fsdp``), heads over those of ``heads`` (``tensor``), and the query
sequence over those of ``seq`` (``context``), while keys/values are gathered whole. That covers self-attention,
text cross-attention (queries sequence-sharded, text replicated) and the GAN head (one broadcast query token per
example, video keys batch-sharded) alike. XLA attention needs no wrapping: XLA partitions it. Ulysses
(``parallel.ulysses``) runs the kernel inside its own shard_map.

The kernels and the ``impl`` grammar live in ``vdot_jax.models.attention``; ``parallel.logical.activate`` gives
``attention`` below to the models through ``vdot_jax.spmd``.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from vdot_jax.parallel.ulysses import ulysses_attention

AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def shard_specs(q_spec: P | None) -> tuple[P, P] | None:
    """(q/out spec, k/v spec) of the shard_map around a kernel, from the queries' activation spec; None where
    nothing needs wrapping (no mesh or rules, one device, or already inside a shard_map). Dimensions that do not
    divide are whole in ``q_spec`` already (e.g. the GAN head's single query token)."""
    mesh = jax.sharding.get_abstract_mesh()
    if q_spec is None or mesh is None or mesh.empty or mesh.size == 1:
        return None
    if any(t == AxisType.Manual for t in mesh.axis_types):
        return None  # already per device (inside a shard_map)
    qb, qs, qh, _ = (tuple(q_spec) + (None,) * 4)[:4]
    # k/v share the query's batch and head split; their sequence is whole on every device
    return P(qb, qs, qh, None), P(qb, None, qh, None)


def kernel_per_shard(fn: AttentionFn, q: jax.Array, k: jax.Array, v: jax.Array, q_spec: P | None) -> jax.Array:
    """``fn`` on per-device shards under the current mesh; ``fn`` itself without one."""
    specs = shard_specs(q_spec)
    if specs is None:
        return fn(q, k, v)
    q_spec, kv_spec = specs
    return jax.shard_map(fn, in_specs=(q_spec, kv_spec, kv_spec), out_specs=q_spec, check_vma=False)(q, k, v)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, fn: AttentionFn, *, per_shard: bool, ulysses: bool,
              q_spec: P | None) -> jax.Array:
    """``fn`` (the per-device attention) placed on the mesh: inside a shard_map when ``per_shard`` (a kernel),
    as Ulysses when ``ulysses``; ``q_spec`` is the queries' activation spec (batch, seq, heads, head_dim)."""
    local = functools.partial(kernel_per_shard, fn, q_spec=q_spec) if per_shard else fn
    if ulysses:
        return ulysses_attention(q, k, v, fn, q_spec, fallback=local)
    return local(q, k, v)
