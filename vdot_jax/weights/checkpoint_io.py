"""Reading and writing the tensor files users hold, one tensor at a time.

- ``*.safetensors`` (single or sharded with ``*.index.json``): read by memory-mapping the file, so
  any dtype (bfloat16 included, via ml_dtypes) comes out as a numpy view without loading the file.
- ``*.pt/*.pth/*.bin`` torch pickles: read with ``torch.load(weights_only=True)`` only (memory-mapped
  where the file allows); a pickle that would need to run code is refused. torch is needed only here.
- a directory: its safetensors index, its safetensors files, or its single torch file.

A ``TensorSource`` maps names to lazily read numpy arrays, with the wrapper prefixes that training
frameworks add (``model.``, ``_fsdp_wrapped_module.`` ...) removed.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Callable, Iterator

import ml_dtypes
import numpy as np

from vdot_jax.errors import CheckpointError

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError("header too large")
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not a readable safetensors file (its header is not a JSON object)")
    header.pop("__metadata__", None)
    for name, info in header.items():
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)
              and all(isinstance(d, int) and d >= 0 for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) and o >= 0 for o in info["data_offsets"]))
        if not ok:
            raise CheckpointError(f"{path} is not a readable safetensors file (header entry {name!r} is not "
                                  "{dtype, shape, data_offsets})")
    return header, 8 + n


class TensorSource:
    """name -> lazily loaded numpy array; ``shape(name)`` without reading the data."""

    def __init__(self, loaders: dict[str, Callable[[], np.ndarray]], shapes: dict[str, tuple], origin: str):
        self._loaders, self._shapes, self.origin = loaders, shapes, origin

    def keys(self) -> list[str]:
        return list(self._loaders)

    def __contains__(self, key: str) -> bool:
        return key in self._loaders

    def __len__(self) -> int:
        return len(self._loaders)

    def shape(self, key: str) -> tuple:
        return self._shapes[key]

    def __getitem__(self, key: str) -> np.ndarray:
        return self._loaders[key]()

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for k in self._loaders:
            yield k, self._loaders[k]()

    def renamed(self, fn: Callable[[str], str]) -> "TensorSource":
        loaders, shapes = {}, {}
        for k in self._loaders:
            nk = fn(k)
            if nk in loaders:
                raise CheckpointError(f"{self.origin}: keys collide after removing prefixes ({nk!r})")
            loaders[nk], shapes[nk] = self._loaders[k], self._shapes[k]
        return TensorSource(loaders, shapes, self.origin)


def _safetensors_entries(path: Path) -> tuple[dict, dict]:
    header, start = _read_safetensors_header(path)
    size = path.stat().st_size
    mm = np.memmap(path, dtype=np.uint8, mode="r") if size > start else np.zeros(0, np.uint8)
    loaders, shapes = {}, {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        except KeyError:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}") from None
        shape = tuple(info["shape"])
        b, e = info["data_offsets"]
        if start + e > size or e - b != dtype.itemsize * int(np.prod(shape)):
            raise CheckpointError(f"{path} is truncated or corrupt (tensor {name!r} lies outside the file)")

        def load(b=b, e=e, dtype=dtype, shape=shape):
            return np.asarray(mm[start + b : start + e]).view(dtype).reshape(shape)

        loaders[name], shapes[name] = load, shape
    return loaders, shapes


def _torch_to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


# Containers that wrap a state dict in training checkpoints, tried in this order.
_NESTING_KEYS = ("state_dict", "model", "module", "net")


def _find_state_dict(obj, path: Path, key: str | None) -> dict:
    import torch

    def is_sd(d):
        return isinstance(d, dict) and d and all(isinstance(v, torch.Tensor) for v in d.values())

    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, dict) or part not in obj:
                raise CheckpointError(f"{path} has no entry {key!r}")
            obj = obj[part]
        if not is_sd(obj):
            raise CheckpointError(f"entry {key!r} of {path} is not a dict of tensors")
        return obj
    if is_sd(obj):
        return obj
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    nested = {k: v for k, v in obj.items() if is_sd(v)}
    if len(nested) == 1:
        return next(iter(nested.values()))
    for k in _NESTING_KEYS:
        if k in nested:
            return nested[k]
    if nested:
        raise CheckpointError(
            f"{path} holds several state dicts ({', '.join(sorted(nested))}); choose one with --key"
        )
    for v in obj.values():  # one more level, e.g. {'model': {'state_dict': {...}}}
        if isinstance(v, dict):
            try:
                return _find_state_dict(v, path, None)
            except CheckpointError:
                pass
    raise CheckpointError(f"{path} contains no state dict of tensors")


def _torch_entries(path: Path, key: str | None) -> tuple[dict, dict]:
    try:
        import torch
    except ImportError:
        raise CheckpointError(
            f"reading {path} needs PyTorch (a .pt/.pth pickle); install it with `pip install torch==2.13.0` "
            "or convert the file to safetensors"
        ) from None
    import pickle

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it names {found.group(1)})" if found else ""
        raise CheckpointError(
            f"refusing to load {path}: loading it would run code stored in the file{what}, not just read tensors; "
            "if you trust it, load it yourself with torch.load(..., weights_only=False), save its state dict with "
            "safetensors.torch.save_file, and convert that file"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError) as e:
        lines = str(e).strip().splitlines()
        why = lines[0][:200] if lines else ("the file is empty" if path.stat().st_size == 0 else type(e).__name__)
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({why})") from None
    sd = _find_state_dict(obj, path, key)
    loaders = {k: (lambda t=t: _torch_to_numpy(t)) for k, t in sd.items()}
    shapes = {k: tuple(t.shape) for k, t in sd.items()}
    return loaders, shapes


def _index_entries(index: Path) -> tuple[dict, dict]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{index} is not a safetensors index (no weight_map: {e})") from None
    loaders, shapes = {}, {}
    for fname in sorted(set(weight_map.values())):
        f = index.parent / fname
        if not f.exists():
            raise CheckpointError(f"{index} lists {fname}, which is missing from {index.parent}")
        lo, sh = _safetensors_entries(f)
        for k in lo:
            if weight_map.get(k) == fname:
                loaders[k], shapes[k] = lo[k], sh[k]
    missing = sorted(set(weight_map) - set(loaders))
    if missing:
        raise CheckpointError(f"{index} lists tensors that are not in their files, e.g. {missing[:3]}")
    return loaders, shapes


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def weight_files(path: Path, stem: str | None = None) -> list[Path]:
    """The tensor files of a directory: an index if there is one, else safetensors, else one torch file."""
    pattern = f"{stem}*" if stem else "*"
    indexes = sorted(path.glob(f"{pattern}.safetensors.index.json"))
    if indexes:
        return indexes[:1]
    st = sorted(path.glob(f"{pattern}.safetensors"))
    if st:
        return st
    return sorted(p for p in path.glob(pattern) if p.suffix in TORCH_SUFFIXES)


def open_tensors(path: str | os.PathLike, key: str | None = None, stem: str | None = None) -> TensorSource:
    """Open a checkpoint file or directory as a lazy ``TensorSource`` (prefixes not yet removed)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    files = weight_files(path, stem) if path.is_dir() else [path]
    if not files and stem and path.is_dir():
        files = weight_files(path)  # a folder holding e.g. only vdot_14b.pt or model.safetensors
    if not files:
        raise CheckpointError(
            f"{path} contains no checkpoint (expected *.safetensors, *.safetensors.index.json or a .pt/.pth file)"
        )
    loaders, shapes = {}, {}
    for f in files:
        if f.name.endswith(".index.json"):
            lo, sh = _index_entries(f)
        elif f.suffix == ".safetensors":
            lo, sh = _safetensors_entries(f)
        elif f.suffix in TORCH_SUFFIXES:
            lo, sh = _torch_entries(f, key)
        else:
            raise CheckpointError(
                f"{f} is not a checkpoint file (expected .safetensors, .safetensors.index.json, .pt, .pth or .bin)"
            )
        dup = set(lo) & set(loaders)
        if dup:
            raise CheckpointError(f"tensor {sorted(dup)[0]!r} appears in more than one file under {path}")
        loaders.update(lo)
        shapes.update(sh)
    if not loaders:
        raise CheckpointError(f"{path} contains no tensors")
    return TensorSource(loaders, shapes, str(path))


# Wrapper segments that FSDP / activation checkpointing / torch.compile insert anywhere in a name.
_WRAPPERS = re.compile(r"(?:^|(?<=\.))(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
# Leading prefixes of whole-model wrappers, removed while every key shares one.
_LEADING = ("model.diffusion_model.", "diffusion_model.", "model.", "module.", "generator.", "transformer.")


def strip_prefixes(source: TensorSource, roots: tuple[str, ...]) -> TensorSource:
    """Remove wrapper segments and shared leading prefixes until the keys start at known roots."""
    src = source.renamed(lambda k: _WRAPPERS.sub("", k))
    while True:
        keys = src.keys()
        if any(k.startswith(roots) for k in keys):
            return src
        for p in _LEADING:
            if all(k.startswith(p) for k in keys):
                src = src.renamed(lambda k, p=p: k[len(p) :])
                break
        else:
            return src


def save_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write a safetensors file, streaming tensor by tensor (any numpy/ml_dtypes dtype in ``_ST_DTYPES``)."""
    header, offset = {}, 0
    for name, arr in tensors.items():
        dt = np.dtype(arr.dtype)
        if dt not in _ST_NAMES:
            raise ValueError(f"cannot store dtype {dt} in safetensors (tensor {name})")
        nbytes = dt.itemsize * int(np.prod(arr.shape))
        header[name] = {"dtype": _ST_NAMES[dt], "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in tensors.values():
            f.write(np.ascontiguousarray(arr).tobytes())
    os.replace(tmp, path)
