"""Converted model directories: one sub-directory per component, each an orbax checkpoint plus config.

    DIR/vdot_model.json            {"format": "vdot-jax", "components": {"transformer": "transformer", ...},
                                    "sampling": {"kind": "student", "steps": 4, "shift": 16.0, "guide_scale": 1.0}}
    DIR/<component>/config.json    {"component": ..., "class": ..., "dtype": ..., "config": {...}}
    DIR/<component>/params/        orbax checkpoint of the parameter tree (nested dict, str keys)

Restoring goes straight into the requested dtype and shardings (abstract targets), so a large model
is never materialised replicated on one host. Reading works on any ``etils.epath`` path, a ``gs://`` bucket
included (the JSON through epath, the arrays through orbax's tensorstore); writing is local.

``load_component`` is the one loading algorithm of every component (transformer, VAE, umT5): a converted
directory is restored in place, anything else goes through the component's reader (``weights/convert``,
``wan_vae``, ``text_encoder``). Dtype names: ``param_dtype`` is the dtype the parameters are stored/loaded in;
``dtype``, where a loader takes one, is the compute dtype.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from vdot_jax import errors
from vdot_jax.errors import disk_full_error, is_disk_full
from vdot_jax.weights.checkpoint_io import CheckpointError
from vdot_jax.weights.keymap import check_dtype, np_dtype
from vdot_jax.weights.params import abstract_model, assign, flat_state, non_finite

FORMAT = "vdot-jax"
INDEX = "vdot_model.json"
# How a model samples by default, recorded in the index by vdot convert / export and read by vdot generate and
# vdot ui when a setting is not given: the released 4-step student (UniPC, shift 16, no CFG) and the VACE
# teacher (the release's inference script: 50 steps, shift 16, CFG 5).
SAMPLING = {"student": dict(steps=4, shift=16.0, guide_scale=1.0),
            "teacher": dict(steps=50, shift=16.0, guide_scale=5.0)}


def _nest(flat: Mapping[tuple, object]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(str(p), {})
        node[str(path[-1])] = v
    return tree


def _unnest(tree: Mapping, paths) -> dict:
    out = {}
    for path in paths:
        node = tree
        for p in path:
            node = node[str(p)]
        out[tuple(path)] = node
    return out


def save_component(
    root: str | os.PathLike, name: str, *, cls: str, config: dict, flat_params: Mapping[tuple, object],
    dtype: str, extra: dict | None = None,
) -> Path:
    """Write DIR/<name>/{config.json, params} atomically (a half-written component is never left)."""
    root = Path(root)
    final = root / name
    bad = non_finite(dict(flat_params))  # a NaN model is never written as if it were one (convert, export, save_*)
    if bad:
        raise CheckpointError(f"the {name} to write to {root} has non-finite values in {len(bad)} tensor(s) "
                              f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); nothing was written")
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # a failure (a full disk: orbax's ValueError RESOURCE_EXHAUSTED) leaves no partial hidden folder
        tmp.mkdir(parents=True)
        meta = {"component": name, "class": cls, "dtype": dtype, "config": config, **(extra or {})}
        (tmp / "config.json").write_text(json.dumps(meta, indent=2))
        tree = _nest({p: np.asarray(v) if not isinstance(v, jax.Array) else v for p, v in flat_params.items()})
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save((tmp / "params").absolute(), tree)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_full(e):
            raise disk_full_error(final) from None
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    index_path = root / INDEX
    index = read_json(index_path, "model index") if index_path.exists() else {"format": FORMAT, "components": {}}
    index["components"][name] = name
    index_path.write_text(json.dumps(index, indent=2))
    return final


def sampling_record(kind: str, **override) -> dict:
    """The index's ``sampling`` entry of a ``kind`` ("student" or "teacher") model, ``override`` replacing values."""
    if kind not in SAMPLING:
        raise ValueError(f"sampling kind must be one of {', '.join(SAMPLING)}, got {kind!r}")
    return {"kind": kind, **SAMPLING[kind], **override}


def write_sampling(root: str | os.PathLike, record: dict) -> None:
    """Record the sampling defaults in ROOT's index (created if absent), replacing any earlier record."""
    index_path = Path(root) / INDEX
    index = read_json(index_path, "model index") if index_path.exists() else {"format": FORMAT, "components": {}}
    index["sampling"] = _checked_sampling(record, index_path)
    tmp = index_path.with_name(f".{INDEX}.tmp")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, index_path)


def _checked_sampling(record, where) -> dict:
    try:
        kind, steps = record["kind"], record["steps"]
        shift, guide = float(record["shift"]), float(record["guide_scale"])
        ok = (kind in SAMPLING and isinstance(steps, int) and steps >= 1 and math.isfinite(shift) and shift > 0
              and math.isfinite(guide) and guide >= 0)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"{where}: sampling must be {{kind: student or teacher, steps >= 1, shift > 0, "
                              f"guide_scale >= 0}}, got {record!r}")
    return {"kind": kind, "steps": steps, "shift": shift, "guide_scale": guide}


def read_sampling(path: str | os.PathLike) -> dict | None:
    """The sampling defaults a model directory records ({kind, steps, shift, guide_scale}), or None (a model
    directory from before they were recorded, a diffusers folder, a single component, a checkpoint file)."""
    index_path = epath.Path(path) / INDEX
    if not index_path.exists():
        return None
    record = read_json(index_path, "model index").get("sampling")
    return None if record is None else _checked_sampling(record, index_path)


def save_module(root: str | os.PathLike, name: str, module, *, cls: str, config: dict, dtype: str | None = None,
                extra: dict | None = None) -> Path:
    """Save an in-memory NNX module's parameters as DIR/<name> (cast to ``dtype`` if given)."""
    flat = {p: np.asarray(v) for p, v in flat_state(module).items()}
    if dtype is not None:
        flat = {p: v.astype(np_dtype(dtype)) for p, v in flat.items()}
    dtype = dtype or str(next(iter(flat.values())).dtype)
    return save_component(root, name, cls=cls, config=config, flat_params=flat, dtype=dtype, extra=extra)


def component_dir(path: str | os.PathLike, name: str) -> Path:
    """DIR/<name> of a model directory, or DIR itself when it is that component."""
    path = epath.Path(path)
    if (path / "config.json").exists():
        meta = read_meta(path)
        if meta.get("component") == name:
            return path
    if (path / name / "config.json").exists():
        return path / name
    if (path / INDEX).exists():
        have = sorted(read_json(path / INDEX, "model index").get("components", {}))
        raise CheckpointError(f"model directory {path} has no {name} (it has: {', '.join(have) or 'nothing'})")
    raise CheckpointError(f"{path} is not a converted vdot-jax model directory (no {INDEX} or {name}/config.json)")


def read_json(path, what: str = "file") -> dict:
    return errors.read_json(path, what, CheckpointError)


def read_meta(component) -> dict:
    meta = read_json(component / "config.json", "component config")
    if "component" not in meta or "config" not in meta:
        raise CheckpointError(f"{component}/config.json is not a vdot-jax component config")
    return meta


def is_model_dir(path: str | os.PathLike) -> bool:
    path = epath.Path(path)
    return (path / INDEX).exists() or ((path / "config.json").exists() and (path / "params").exists())


def restore_params(component, abstract_flat: Mapping[tuple, jax.ShapeDtypeStruct]) -> dict:
    """Restore {path: jax.Array} with each leaf's shape, dtype and sharding taken from ``abstract_flat``."""
    params = (component / "params").absolute()
    if not params.exists():
        raise CheckpointError(f"{component} has no params/ checkpoint")
    target = _nest(abstract_flat)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            restored = ckptr.restore(params, target)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{params} does not match the model its config describes ({str(e)[:300]})") from None
    return _unnest(restored, abstract_flat.keys())


def load_component(
    path: str | os.PathLike, name: str, *, config_type, build: Callable[[object], nnx.Module],
    read: Callable[..., tuple[object, dict]], param_dtype: str | None = None,
    shardings: Mapping[tuple, jax.sharding.Sharding] | None = None, config=None, key: str | None = None,
) -> nnx.Module:
    """Component ``name`` as a module: ``build(cfg)`` (evaluated abstractly, so nothing is allocated twice) filled
    with its parameters in ``param_dtype`` (default: as stored in a converted directory, else float32).

    From a converted model directory, the config comes from DIR/<name>/config.json (``config_type.from_dict``) and
    each parameter is restored straight into ``shardings[path]`` (default device when absent). Anything else is
    read by ``read(path, param_dtype, config, key) -> (cfg, flat numpy params)`` (``config`` overrides the
    architecture found there, ``key`` picks an entry of a nested checkpoint), then placed by ``shardings``."""
    shardings = shardings or {}
    if is_model_dir(path):
        comp = component_dir(path, name)  # an epath: local or gs://
        meta = read_meta(comp)
        cfg = config_type.from_dict(meta["config"])
        dtype = check_dtype(param_dtype or meta["dtype"])
        model = abstract_model(lambda: build(cfg))
        abstract = {p: jax.ShapeDtypeStruct(v.shape, dtype, sharding=shardings.get(p))
                    for p, v in flat_state(model).items()}
        return assign(model, restore_params(comp, abstract))
    cfg, flat = read(Path(path), check_dtype(param_dtype or "float32"), config, key)
    model = abstract_model(lambda: build(cfg))
    flat = {p: jax.device_put(v, shardings[p]) if p in shardings else v for p, v in flat.items()}
    return assign(model, flat)
