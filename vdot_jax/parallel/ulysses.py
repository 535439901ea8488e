"""Ulysses sequence parallelism for self-attention over the ``context`` mesh axis.

Video tokens are sharded over ``context``. Attention needs every token, so before it an all-to-all
trades the sequence shard for a head shard (each device then holds all tokens of H/c heads), the
inner attention runs locally, and a second all-to-all trades back. Communication is two all-to-alls
of q/k/v/out; memory stays 1/c of the sequence. Heads must divide by the context size (times any
tensor-parallel split of heads). Cross-attention on text needs none of this and stays local.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.sharding import PartitionSpec as P

from vdot_jax.parallel.mesh import current_mesh_shape

AXIS = "context"
AttentionFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def ulysses_attention(q: jax.Array, k: jax.Array, v: jax.Array, inner: AttentionFn, spec: P | None,
                      fallback: AttentionFn | None = None) -> jax.Array:
    """``inner(q, k, v)`` is the attention each device runs on its [b, S, h/c, d] slice, inside this shard_map
    (a kernel is fine); ``spec`` is the queries' activation spec under the active rules (None without rules).
    Without sequence parallelism (no mesh or rules, or ``context`` 1) ``fallback`` runs instead (default
    ``inner``); the caller makes it safe under a mesh."""
    c = current_mesh_shape().get(AXIS, 1)
    if c == 1 or spec is None:
        return (fallback or inner)(q, k, v)
    b_axes, seq_axes, head_axes, _ = (tuple(spec) + (None,) * 4)[:4]
    if seq_axes != AXIS:
        raise ValueError(
            f"Ulysses attention needs the {q.shape[1]} video tokens divisible by the context axis size {c}"
        )
    mesh_shape = current_mesh_shape()
    local_heads = q.shape[2] // (mesh_shape.get(head_axes, 1) if isinstance(head_axes, str) else 1)
    if local_heads % c:
        raise ValueError(
            f"Ulysses attention needs the number of attention heads per device ({local_heads}) divisible by "
            f"the context axis size {c}"
        )
    qkv_spec = P(b_axes, AXIS, head_axes, None)

    def local(q, k, v):
        # [b, S/c, h, d] -> [b, S, h/c, d]
        q, k, v = (jax.lax.all_to_all(a, AXIS, split_axis=2, concat_axis=1, tiled=True) for a in (q, k, v))
        out = inner(q, k, v)
        return jax.lax.all_to_all(out, AXIS, split_axis=1, concat_axis=2, tiled=True)

    return jax.shard_map(local, in_specs=(qkv_spec,) * 3, out_specs=qkv_spec, check_vma=False)(q, k, v)
