"""Flat views of NNX parameter trees: {path tuple: array}, the currency of key maps and checkpoints."""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx


def abstract_model(make: Callable[[], nnx.Module]) -> nnx.Module:
    """The model with ShapeDtypeStruct leaves: no memory allocated, no RNG work done."""
    return nnx.eval_shape(make)


def flat_state(model: nnx.Module) -> dict[tuple, object]:
    """{path: leaf value} of the model's Params."""
    return {tuple(p): v.get_value() if hasattr(v, "get_value") else v.value
            for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def flat_shapes(model: nnx.Module) -> dict[tuple, tuple]:
    return {p: tuple(v.shape) for p, v in flat_state(model).items()}


def assign(model: nnx.Module, flat: Mapping[tuple, object], dtype=None) -> nnx.Module:
    """Replace the model's Params by ``flat`` (same paths, same shapes); returns the model."""
    state = nnx.state(model, nnx.Param)
    items = []
    for path, var in nnx.to_flat_state(state):
        path = tuple(path)
        if path not in flat:
            raise KeyError(f"no value for parameter {'.'.join(map(str, path))}")
        value = flat[path]
        if tuple(value.shape) != tuple(var.shape):
            raise ValueError(f"parameter {'.'.join(map(str, path))}: shape {value.shape}, expected {var.shape}")
        value = value if isinstance(value, jax.Array) else jnp.asarray(value)
        items.append((path, var.replace(value.astype(dtype) if dtype is not None else value)))
    nnx.update(model, nnx.from_flat_state(items))
    return model


def path_str(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def non_finite(tree) -> list[str]:
    """Paths of the floating-point leaves of ``tree`` (a pytree or a flat {path: array}) holding a NaN or inf:
    checkpoints and exports refuse such a model. Host (numpy) leaves are checked with numpy; device leaves by one
    compiled reduction over all of them, where each lives, and one transfer of the flags."""
    import numpy as np

    leaves = [(p, x) for p, x in jax.tree_util.tree_leaves_with_path(tree)
              if jnp.issubdtype(getattr(x, "dtype", jnp.int32), jnp.inexact) and getattr(x, "size", 1)]
    host = [(p, x) for p, x in leaves if isinstance(x, np.ndarray)]
    dev = [(p, x) for p, x in leaves if not isinstance(x, np.ndarray)]
    ok = {id(x): bool(np.isfinite(x).all()) for _, x in host}
    if dev:
        flags = jax.jit(lambda xs: jnp.stack([jnp.isfinite(x).all() for x in xs]))([x for _, x in dev])
        ok.update({id(x): bool(f) for (_, x), f in zip(dev, jax.device_get(flags))})
    return [jax.tree_util.keystr(p) for p, x in leaves if not ok[id(x)]]
