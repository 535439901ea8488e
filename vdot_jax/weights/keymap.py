"""Declarative key maps between our parameter trees and external (PyTorch) layouts.

Two kinds of data live here:

- ``RenameTable``: full-key patterns between two external layouts, e.g. original Wan names and
  diffusers names (``blocks.{i}.self_attn.q.{p}`` <-> ``blocks.{i}.attn1.to_q.{p}``). Each row is a
  whole-key pattern, not a substring replacement; the table works in both directions.
- ``KeyMap``: one ``Entry`` per external tensor, derived from the abstract parameter tree of our model:
  where the tensor goes (path, and layer index for stacked blocks), its external name and shape, and the
  layout change between them (``linear``: [out,in] <-> [in,out]; ``conv``: [O,I,*k] <-> [*k,I,O]).
  A layout ``"<base>@N"`` says the external tensor also carries N trailing singleton axes that ours does
  not (PyTorch norm scales ``[C,1,1,1]`` stored as ``[C]``: ``copy@3``; 1x1 conv kernels ``[O,I,1,1]``
  stored as matrices ``[I,O]``: ``linear@2``).

``convert_tensors`` streams an external source into our layout and raises one error that names every
missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import ml_dtypes
import numpy as np

from vdot_jax.weights.checkpoint_io import CheckpointError, TensorSource

Path_ = tuple  # a path into an nnx state: str and int components


class RenameTable:
    """Whole-key rename rules between two layouts, usable both ways.

    Rows are ``(left, right)`` templates. A field ``{name}`` matches one dotted component (``[^.]+``),
    ``{name:a|b}`` one of the listed alternatives; the right side names fields as plain ``{name}`` and
    the left side's constraint applies in both directions. A key that matches no row gives None.
    """

    _FIELD = re.compile(r"\{(\w+)(?::([^}]*))?\}")

    def __init__(self, rows: Iterable[tuple[str, str]]):
        self.rows = list(rows)
        self._fwd, self._bwd = [], []
        for left, right in self.rows:
            constraints = {m.group(1): m.group(2) for m in self._FIELD.finditer(left) if m.group(2)}
            plain_left = self._FIELD.sub(lambda m: "{" + m.group(1) + "}", left)
            self._fwd.append((self._compile(left, constraints), right))
            self._bwd.append((self._compile(right, constraints), plain_left))

    @classmethod
    def _compile(cls, template: str, constraints: dict) -> re.Pattern:
        out, pos = [], 0
        for m in cls._FIELD.finditer(template):
            out.append(re.escape(template[pos : m.start()]))
            name = m.group(1)
            out.append(f"(?P<{name}>{constraints.get(name) or '[^.]+'})")
            pos = m.end()
        out.append(re.escape(template[pos:]))
        return re.compile("".join(out) + r"\Z")

    @staticmethod
    def _apply(rules, key: str) -> str | None:
        for rx, out in rules:
            m = rx.match(key)
            if m:
                return out.format(**m.groupdict())
        return None

    def forward(self, key: str) -> str | None:
        return self._apply(self._fwd, key)

    def backward(self, key: str) -> str | None:
        return self._apply(self._bwd, key)


@dataclass(frozen=True)
class Entry:
    path: Path_  # where the tensor lives in our state
    layer: int | None  # index along the stacked leading axis, or None
    key: str  # external name
    layout: str  # "linear" | "conv" | "copy", optionally "@N" (N trailing singleton axes outside)
    shape: tuple  # external shape

    def to_ours(self, a: np.ndarray) -> np.ndarray:
        base, n = _split_layout(self.layout)
        if n:
            if a.shape[a.ndim - n :] != (1,) * n:
                raise ValueError(f"{self.key}: expected {n} trailing singleton axes, got shape {a.shape}")
            a = a.reshape(a.shape[: a.ndim - n])
        if base == "linear":
            return a.T
        if base == "conv":
            return np.moveaxis(a, (0, 1), (-1, -2))  # [O,I,*k] -> [*k,I,O]
        return a

    def to_external(self, a: np.ndarray) -> np.ndarray:
        base, n = _split_layout(self.layout)
        if base == "linear":
            a = a.T
        elif base == "conv":
            a = np.moveaxis(a, (-1, -2), (0, 1))
        return a.reshape(a.shape + (1,) * n) if n else a


def _split_layout(layout: str) -> tuple[str, int]:
    base, _, n = layout.partition("@")
    return base, int(n or 0)


def _external_shape(layout: str, shape: tuple) -> tuple:
    base, n = _split_layout(layout)
    if base == "linear":
        shape = shape[::-1]
    elif base == "conv":
        shape = (shape[-1], shape[-2], *shape[:-2])
    return tuple(shape) + (1,) * n


class KeyMap:
    """All external tensors of one model, one ``Entry`` each."""

    def __init__(self, entries: Iterable[Entry], stacked: Mapping[str, int]):
        self.entries = list(entries)
        self.stacked = dict(stacked)
        self.by_key = {e.key: e for e in self.entries}
        if len(self.by_key) != len(self.entries):
            raise AssertionError("two parameters map to the same external key")

    @classmethod
    def from_abstract(
        cls,
        flat_shapes: Mapping[Path_, tuple],
        *,
        stacked: Mapping[str, int],
        path_to_key: Callable[[Path_], str],
        layout_of: Callable[[Path_, tuple], str],
    ) -> "KeyMap":
        """Entries from our flat {path: shape}.

        ``stacked`` names the modules that carry a leading layer axis, with their layer counts: a
        top-level name (``"blocks"``) or a dotted path to a nested module (``"encoder.block"``). The
        layer index is inserted into the path right after that module before ``path_to_key``.
        """
        prefixes = [(tuple(name.split(".")), n) for name, n in stacked.items()]
        entries = []
        for path, shape in flat_shapes.items():
            depth, n = next(((len(pre), n) for pre, n in prefixes if tuple(map(str, path[: len(pre)])) == pre), (0, None))
            per_layer = tuple(shape[1:]) if n is not None else tuple(shape)
            layout = layout_of(path, per_layer)
            ext = _external_shape(layout, per_layer)
            for layer in range(n) if n is not None else (None,):
                full = path if layer is None else (*path[:depth], layer, *path[depth:])
                entries.append(Entry(path, layer, path_to_key(full), layout, ext))
        return cls(entries, stacked)

    def external_shapes(self) -> dict[str, tuple]:
        return {e.key: e.shape for e in self.entries}

    def export(self, flat: Mapping[Path_, object], rename: Callable[[str], str] = lambda k: k):
        """Our flat params -> (external name, numpy array) pairs, one tensor at a time (the inverse of
        ``convert_tensors``); ``rename`` maps the keymap's names to another layout's."""
        for e in self.entries:
            value = np.asarray(flat[e.path] if e.layer is None else flat[e.path][e.layer])
            yield rename(e.key), e.to_external(value)


STORED_DTYPES = ("float32", "bfloat16")


def check_dtype(dtype: str) -> str:
    """A parameter dtype name we store and load (one clear error otherwise)."""
    if dtype not in STORED_DTYPES:
        raise ValueError(f"dtype must be one of {STORED_DTYPES}, got {dtype!r}")
    return dtype


def np_dtype(name: str):
    return {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[str(name)]


def convert_tensors(
    source: TensorSource,
    keymap: KeyMap,
    flat_shapes: Mapping[Path_, tuple],
    *,
    dtype: str = "float32",
    rename: Callable[[str], str | None] = lambda k: k,
    what: str = "checkpoint",
    progress: Callable[[Iterable], Iterable] = lambda it: it,
) -> dict[Path_, np.ndarray]:
    """Stream ``source`` tensor by tensor into freshly allocated arrays of our layout.

    ``rename`` maps a source key to the external key of ``keymap`` (None = unknown). Memory is one copy
    of the target in ``dtype`` plus one source tensor at a time.
    """
    target = np_dtype(dtype)
    out = {p: np.empty(s, target) for p, s in flat_shapes.items()}
    filled: set[tuple[Path_, int | None]] = set()
    unexpected, misshaped = [], []
    for skey in progress(source.keys()):
        ekey = rename(skey)
        entry = keymap.by_key.get(ekey) if ekey is not None else None
        if entry is None:
            unexpected.append(skey)
            continue
        if tuple(source.shape(skey)) != entry.shape:
            misshaped.append(f"{skey} has shape {tuple(source.shape(skey))}, expected {entry.shape}")
            continue
        value = entry.to_ours(np.asarray(source[skey])).astype(target)
        if entry.layer is None:
            out[entry.path][...] = value
        else:
            out[entry.path][entry.layer] = value
        filled.add((entry.path, entry.layer))
    missing = [e.key for e in keymap.entries if (e.path, e.layer) not in filled]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped tensor(s): {_few(misshaped)}")
    if problems:
        raise CheckpointError(f"{source.origin} does not match the {what}: " + "; ".join(problems))
    return out


def _few(items: list[str], n: int = 5) -> str:
    s = ", ".join(items[:n])
    return s + (f" and {len(items) - n} more" if len(items) > n else "")
