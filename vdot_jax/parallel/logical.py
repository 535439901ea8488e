"""Logical axis names for activations, mapped to mesh axes by rules that are set from config.

Models call ``constrain(x, "batch", "seq", "embed")``; with no rules active (tests, one device) it is
the identity, so models never depend on a mesh being present.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator, Mapping, Sequence

import jax
from jax.sharding import PartitionSpec as P

# logical name -> mesh axis name, tuple of mesh axes, or None (replicated)
Rules = Mapping[str, str | tuple[str, ...] | None]

_ACTIVE: contextvars.ContextVar[Rules | None] = contextvars.ContextVar("vdot_logical_rules", default=None)


@contextlib.contextmanager
def axis_rules(rules: Rules) -> Iterator[None]:
    """Activate logical->mesh rules for code traced inside the block."""
    token = _ACTIVE.set(dict(rules))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_rules() -> Rules | None:
    return _ACTIVE.get()


def logical_to_spec(names: Sequence[str | None], rules: Rules) -> P:
    """Map logical names to a PartitionSpec; a mesh axis is used at most once (first come wins)."""
    used: set[str] = set()
    out = []
    for name in names:
        axes = rules.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        axes = tuple(a for a in axes if a not in used)
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else (axes or None))
    return P(*out)


def constrain(x: jax.Array, *names: str | None) -> jax.Array:
    """Sharding constraint by logical names; the identity when no rules are active."""
    rules = _ACTIVE.get()
    if rules is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, rules))
