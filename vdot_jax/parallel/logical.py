"""Logical axis names, in one place, and their mapping onto mesh axes.

Parameters and activations are described by logical names (``embed``, ``heads``, ``mlp``, ``batch``,
``seq`` ...). Rules -- set from config -- give each logical name an ordered list of mesh axes. A
dimension takes the longest prefix of its list whose sizes divide it and that no earlier dimension of
the same array has taken; anything else is replicated. That is the fallback: 12 heads on ``tensor=8``
stay replicated instead of failing, and a batch of 1 is not split over ``data``.

Models call ``vdot_jax.spmd.constrain(x, "batch", "seq", "embed")`` and never import this module: the rules
activated here (``activate(mesh, rules)`` sets the mesh too) bind ``PLACEMENT`` -- ``constrain`` below and the
attention dispatch of ``parallel.attention`` -- for the code traced inside. Without both a mesh and rules,
``constrain`` is the identity.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Iterator, Mapping, Sequence

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vdot_jax import spmd
from vdot_jax.parallel import attention as parallel_attention
from vdot_jax.parallel.mesh import current_mesh_shape

Rules = Mapping[str, Sequence[str] | str | None]

# Release-scale default: batch over data x fsdp, video tokens over context (Ulysses), Megatron-style tensor
# parallelism on heads and MLP width, and ZeRO-3 style state: the embed dimension of every weight (and so of its
# gradient, AdamW moments and EMA) split over fsdp AND context -- every device of a data replica holds a
# different slice of the same model, gathered one layer at a time inside the scans. ``data`` keeps full
# replicas: it is the axis that may span slices over DCN, where a per-layer gather would be slow (a run that
# wants the state split over more chips of a slice puts them on fsdp). Activations have their own name for the
# embed dimension (``embed``), so a token's features are never split over context, only the weights'.
DEFAULT_RULES: dict[str, tuple[str, ...]] = {
    "batch": ("data", "fsdp"),
    "seq": ("context",),
    "heads": ("tensor",),
    "mlp": ("tensor",),
    "embed": ("fsdp",),  # activations (the text encoder's hidden states)
    "param_embed": ("fsdp", "context"),  # parameters
    "vocab": ("tensor", "fsdp"),
    "layers": (),
}

# Parameter path (dotted, per layer: without the stacked-layer axis) -> logical names, first match wins.
# Paths of every model in vdot_jax are covered; a 2D kernel with no specific rule is split (fsdp, context) on
# whichever dimension divides.
PARAM_AXES: list[tuple[str, tuple[str | None, ...]]] = [
    (r"(^|\.)attn\d?\.to_[qkv]\.kernel$", ("param_embed", "heads")),
    (r"(^|\.)attn\d?\.to_[qkv]\.bias$", ("heads",)),
    (r"(^|\.)attn\d?\.to_out\.0\.kernel$", ("heads", "param_embed")),
    (r"(^|\.)attn\d?\.norm_[qk]\.scale$", ("heads",)),
    (r"(^|\.)ffn\.net\.0\.proj\.kernel$", ("param_embed", "mlp")),
    (r"(^|\.)ffn\.net\.0\.proj\.bias$", ("mlp",)),
    (r"(^|\.)ffn\.net\.2\.kernel$", ("mlp", "param_embed")),
    (r"scale_shift_table$", (None, None, "param_embed")),
    (r"(^|\.)(vace_)?patch_embedding\.kernel$", (None, None, None, None, "param_embed")),
    (r"\.kernel$", ("param_embed", "param_embed")),
    (r".*", ()),  # biases and norm scales: small, replicated
]
STACKED = ("blocks", "vace_blocks")

_ACTIVE: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("vdot_logical_rules", default=None)


def _axes(rule) -> tuple[str, ...]:
    if rule is None:
        return ()
    return (rule,) if isinstance(rule, str) else tuple(rule)


def spec_for(shape: Sequence[int], names: Sequence[str | None], rules: Rules, mesh_shape: Mapping[str, int]) -> P:
    """PartitionSpec for an array of ``shape`` whose dimensions carry logical ``names``."""
    used: set[str] = set()
    out = []
    for dim, name in zip(shape, names):
        chosen, size = [], 1
        for axis in _axes(rules.get(name)) if name else ():
            n = mesh_shape.get(axis, 1)
            if axis in used or axis not in mesh_shape:
                continue
            if n == 1:
                continue
            if dim % (size * n):
                break
            chosen.append(axis)
            size *= n
        used.update(chosen)
        out.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*out)


def param_names(path: tuple) -> tuple[str | None, ...]:
    """Logical names of a parameter from its path; stacked layers get a leading ``layers`` axis.

    Stacked modules are recognised anywhere in the path, so models nested in others (the critic's
    ``model.blocks``) shard like top-level ones."""
    stacked = any(p in STACKED for p in path)
    dotted = ".".join(str(p) for p in path)
    for pattern, names in PARAM_AXES:
        if re.search(pattern, dotted):
            return (("layers",) if stacked else ()) + tuple(names)
    raise AssertionError("PARAM_AXES ends with a catch-all")


def param_shardings(flat_shapes: Mapping[tuple, Sequence[int]], mesh: Mesh, rules: Rules | None = None) -> dict:
    """{path: NamedSharding} for every parameter."""
    rules = DEFAULT_RULES if rules is None else rules
    out = {}
    for path, shape in flat_shapes.items():
        names = param_names(path)
        names = names + (None,) * (len(shape) - len(names))
        out[path] = NamedSharding(mesh, spec_for(shape, names[: len(shape)], rules, dict(mesh.shape)))
    return out


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[None]:
    """Activate logical->mesh rules, and ``PLACEMENT`` for the models, for code traced inside the block."""
    token = _ACTIVE.set(dict(rules))
    try:
        with spmd.bind(PLACEMENT):
            yield
    finally:
        _ACTIVE.reset(token)


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules | None = None) -> Iterator[Mesh]:
    """Set ``mesh`` as the current mesh and the rules as active, for tracing and running."""
    with jax.set_mesh(mesh), axis_rules(DEFAULT_RULES if rules is None else rules):
        yield mesh


def active_rules() -> Rules | None:
    return _ACTIVE.get()


def activation_spec(shape: Sequence[int], names: Sequence[str | None]) -> P | None:
    """The spec ``constrain`` would apply, or None when no mesh/rules are active."""
    rules, mesh_shape = _ACTIVE.get(), current_mesh_shape()
    if rules is None or not mesh_shape:
        return None
    return spec_for(shape, names, rules, mesh_shape)


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """Sharding constraint by logical names; the identity when no mesh or rules are active."""
    spec = activation_spec(x.shape, names)
    if spec is None:
        return x
    return jax.lax.with_sharding_constraint(x, spec)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, fn, *, per_shard: bool, ulysses: bool) -> jax.Array:
    """The models' attention under the active rules: ``parallel.attention.attention`` with the queries' spec."""
    q_spec = activation_spec(q.shape, ("batch", "seq", "heads", None))
    return parallel_attention.attention(q, k, v, fn, per_shard=per_shard, ulysses=ulysses, q_spec=q_spec)


# What the models (vdot_jax.spmd) use while rules are active.
PLACEMENT = spmd.Placement(constrain=constrain, attention=attention)
