"""What a model needs from the code that runs it on a mesh, handed in through the context.

Models (``vdot_jax.models``) know no mesh and import nothing from ``vdot_jax.parallel``. They name the axes of
their activations (``constrain(x, "batch", "seq", "embed")``) and give each attention's per-device function to
``current().attention``. Outside a mesh these are the identity and that function itself.
``vdot_jax.parallel.logical.activate(mesh, rules)``, which every caller that runs a model on a mesh already
uses, binds the sharded versions for the code traced inside it. This module sits below both packages, so
neither imports the other.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Any, Callable, Iterator


def _identity(x, *names):
    return x


def _local_attention(q, k, v, fn, *, per_shard: bool, ulysses: bool):
    return fn(q, k, v)


@dataclass(frozen=True)
class Placement:
    """``constrain(x, *logical_names)`` returns ``x`` placed by the names; ``attention(q, k, v, fn, *, per_shard,
    ulysses)`` runs ``fn``, the per-device attention, where ``per_shard`` says XLA cannot partition it (a Pallas or
    cuDNN call) and ``ulysses`` asks for sequence-parallel self-attention."""

    constrain: Callable[..., Any] = _identity
    attention: Callable[..., Any] = _local_attention


LOCAL = Placement()
_ACTIVE: contextvars.ContextVar[Placement] = contextvars.ContextVar("vdot_placement", default=LOCAL)


def current() -> Placement:
    return _ACTIVE.get()


@contextlib.contextmanager
def bind(placement: Placement) -> Iterator[None]:
    """Use ``placement`` for code traced inside the block."""
    token = _ACTIVE.set(placement)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, *names: str | None):
    """``x`` placed by logical axis names under the bound placement; the identity outside a mesh."""
    return _ACTIVE.get().constrain(x, *names)
