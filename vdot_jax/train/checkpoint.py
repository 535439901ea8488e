"""Training checkpoints: orbax ``CheckpointManager`` over the whole train state, the data iterator and the config.

Layout of a workdir::

    WORKDIR/checkpoints/<step>/state/   the train state as a nested dict (orbax StandardSave, OCDBT): every
                                        field of TrainState/FlowState -- generator, critic (trunk + GAN head),
                                        teacher, both optimizer states, EMA, step, RNG key data, skipped count
    WORKDIR/checkpoints/<step>/data/    JSON: the data pipeline's state (grain iterator, start step, host layout)
                                        and the unreadable samples seen so far
    WORKDIR/checkpoints/<step>/meta/    JSON: format, step, mode, the state's signature (every leaf's path,
                                        shape, dtype), the model architectures and the full config

Saves are asynchronous (the arrays are copied off the device before ``save`` returns; the files are written
in the background) and atomic (orbax writes a temporary directory and renames it when complete, so a run
killed mid-save leaves the previous checkpoint as the latest). The newest ``keep`` are kept.

Restoring goes straight into the target shardings (abstract arrays carrying ``NamedSharding``s), so a
checkpoint written on one mesh restores onto any other mesh or device count. Before anything is written in
a workdir that already holds checkpoints, the latest one's signature is compared with the state the config
builds; any difference (another architecture, mode, EMA on/off, ...) refuses the workdir with a message naming
the differences, and nothing in it is touched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vdot_jax.train.paths import workdir_path

from vdot_jax.errors import CheckpointError, VdotError, disk_full_error, is_disk_full

FORMAT = "vdot-train-v1"


class CheckpointMismatch(VdotError, ValueError):
    """A workdir whose checkpoints were written by an incompatible config."""


# ----------------------------------------------------------------------------- state trees


def _key(k) -> str:
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def leaf_paths(tree) -> list[tuple[tuple[str, ...], Any]]:
    """[(path of string keys, leaf)] in flattening order."""
    return [(tuple(_key(k) for k in path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def to_nested(tree) -> dict:
    """Any pytree -> nested dict of its leaves keyed by their path (what orbax stores)."""
    out: dict = {}
    for path, leaf in leaf_paths(tree):
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    return out


def from_nested(nested: Mapping, like) -> Any:
    """The inverse of ``to_nested``: a tree shaped like ``like`` with leaves taken from ``nested``."""
    leaves = []
    for path, _ in leaf_paths(like):
        node = nested
        for p in path:
            node = node[p]
        leaves.append(node)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), leaves)


def signature(tree) -> dict[str, list]:
    """{"a/b/c": [shape, dtype]} for every leaf (of arrays or abstract arrays)."""
    return {"/".join(path): [list(leaf.shape), str(np.dtype(leaf.dtype))] for path, leaf in leaf_paths(tree)}


def signature_diff(saved: Mapping[str, list], current: Mapping[str, list], limit: int = 4) -> list[str]:
    """Human-readable differences between two signatures: an example from each state field first."""
    diffs: dict[str, list[str]] = {}
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if a is None:
            d = f"{k} is new ({b[1]}{tuple(b[0])})"
        elif b is None:
            d = f"{k} is not in this config ({a[1]}{tuple(a[0])} in the checkpoint)"
        elif list(a[0]) != list(b[0]) or a[1] != b[1]:
            d = f"{k} is {a[1]}{tuple(a[0])} in the checkpoint, {b[1]}{tuple(b[0])} here"
        else:
            continue
        diffs.setdefault(k.split("/", 1)[0], []).append(d)
    total = sum(len(v) for v in diffs.values())
    shown = [v[0] for v in diffs.values()][:limit]
    if total > len(shown):
        shown.append(f"{total} differences in all")
    return shown


# ----------------------------------------------------------------------------- shardings


def state_shardings(abstract_state, field_models: Mapping[str, str], model_param_shardings: Mapping[str, Mapping],
                    mesh: Mesh):
    """A tree of NamedShardings for a train state: each parameter (and the optimizer moments and EMA that mirror
    it) gets its model's parameter sharding (logical rules); everything else (step, RNG, counts) is replicated.

    ``field_models`` maps a state field to a model name (``{"generator": "generator", "generator_opt":
    "generator", ...}``); ``model_param_shardings[name]`` maps parameter paths (as ``flat_state`` writes them,
    string keys) to shardings."""
    replicated = NamedSharding(mesh, PartitionSpec())
    lookup = {name: {tuple(str(p) for p in path): s for path, s in table.items()}
              for name, table in model_param_shardings.items()}
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state)
    out = []
    for path, leaf in flat:
        keys = [_key(k) for k in path]
        model = field_models.get(keys[0])
        sharding = replicated
        if model is not None and getattr(leaf, "ndim", 0) > 0:
            # the parameter path is the trailing run of dict keys (before nnx's ".value")
            tail = list(path)
            if tail and isinstance(tail[-1], jax.tree_util.GetAttrKey) and tail[-1].name == "value":
                tail = tail[:-1]
            run = []
            for k in reversed(tail):
                if not isinstance(k, jax.tree_util.DictKey):
                    break
                run.append(str(k.key))
            sharding = lookup[model].get(tuple(reversed(run)), replicated)
        out.append(sharding)
    return jax.tree_util.tree_unflatten(treedef, out)


def abstract_with_shardings(abstract_state, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def state_bytes(abstract_state) -> int:
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(abstract_state))


# ----------------------------------------------------------------------------- the manager


def _options(keep: int, async_: bool, read_only: bool = False) -> ocp.CheckpointManagerOptions:
    return ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                        enable_async_checkpointing=async_, cleanup_tmp_directories=not read_only,
                                        save_root_metadata=False)


ITEMS = ("state", "data", "meta")


def checkpoint_dir(workdir):
    """WORKDIR/checkpoints as an ``epath.Path`` (local, or on a gs:// bucket)."""
    return workdir_path(workdir) / "checkpoints"


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200] + ("..." if len(text) > 200 else "")


def _warn(text: str) -> None:
    print(f"warning: {text}", file=sys.stderr, flush=True)


def step_problem(root, step: int) -> str | None:
    """Why checkpoint ``step`` under ``root`` is visibly incomplete (an item or the state's index missing), or None.
    Damage inside the state's data files shows only when it is restored (``Checkpointer.restore_intact``)."""
    d = root / str(step)
    for item in ITEMS:
        if not (d / item).is_dir():
            return f"its {item}/ is missing"
    if not (d / "state" / "_METADATA").is_file():
        return "its state/ has no _METADATA"
    return None


def latest_meta(workdir, warn=_warn) -> tuple[int, dict] | None:
    """(step, meta) of the newest intact checkpoint in ``workdir``, read without writing anything; None if there
    is none. A newer checkpoint that is incomplete or unreadable is named in a warning and skipped (never
    deleted)."""
    root = checkpoint_dir(workdir)
    if not root.is_dir():
        return None
    with _reader(root) as mngr:
        for step in sorted(mngr.all_steps(), reverse=True):
            problem = step_problem(root, step)
            if problem is None:
                try:
                    restored = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
                    return step, dict(restored["meta"])
                except Exception as e:  # noqa: BLE001 - any failure to read it means this step is damaged
                    problem = f"its meta cannot be read: {_short(e)}"
            warn(f"checkpoint step {step} in {root} is incomplete or unreadable ({problem}); using an older step. "
                 "It was left in place.")
    return None


def meta_at(workdir, step: int) -> dict:
    """The meta of checkpoint ``step`` in ``workdir``, read without writing anything; a step that is not there is a
    ``CheckpointMismatch`` naming the steps that are."""
    root = checkpoint_dir(workdir)
    steps: list[int] = []
    if root.is_dir():
        with _reader(root) as mngr:
            steps = sorted(mngr.all_steps())
            if step in steps:
                return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    have = ", ".join(map(str, steps)) or "none"
    raise CheckpointMismatch(f"{root} has no checkpoint at step {step} (it has: {have}).")


def _reader(root) -> ocp.CheckpointManager:
    """A read-only manager of ``root`` (creates and cleans up nothing)."""
    return ocp.CheckpointManager(root, item_names=ITEMS, options=_options(1, False, read_only=True))


# What a training run writes at the top of its workdir (train/loop.py, train/logging.py).
LOCK = ".vdot-train.lock"  # flock'ed by the run that uses the workdir; holds "pid N on HOST" for the message
WORKDIR_ENTRIES = frozenset({LOCK, "checkpoints", "config.json", "metrics.jsonl", "metrics.jsonl.tmp", "train.log",
                             "tb", "plots", "samples", "unreadable_checkpoints"})




class WorkdirBusy(VdotError):
    """Another live run holds the workdir's lock."""


@contextlib.contextmanager
def lock_workdir(workdir):
    """Hold WORKDIR/.vdot-train.lock (``fcntl.flock``, exclusive, non-blocking) while training: a second run on the
    same workdir is refused in one line. The kernel drops the lock when the process dies, so a crashed or killed run
    leaves nothing stuck. Taken by process 0 only (the other processes of a run share its workdir). A ``gs://``
    workdir is not locked (a bucket has no such lock; best effort: do not start two runs on one bucket path). The
    lock file is removed on release, and a workdir this call created that is empty then is removed too."""
    import fcntl
    import os
    import socket

    from vdot_jax.train.paths import is_local

    path = workdir_path(workdir)
    if not is_local(path) or jax.process_index() != 0:
        yield
        return
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise WorkdirBusy(f"--workdir {workdir} is in use by another run ({holder}); wait for it to finish or "
                              "give another --workdir") from None
        try:  # the holder removes the file when it is done: a lock on a removed file is no lock, take it again
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.unlink(lock)  # while still held: the workdir is left as the run left it
        os.close(fd)
        if created and not any(path.iterdir()):
            path.rmdir()


def check_workdir(workdir) -> None:
    """Refuse (CheckpointMismatch) a --workdir that is neither new, empty, nor a vdot training workdir -- e.g. a
    model folder, whose config.json a run would overwrite. Nothing is written."""
    path = workdir_path(workdir)
    if path.exists() and not path.is_dir():
        raise CheckpointMismatch(f"--workdir {workdir} is a file; give a new or empty folder, or a training workdir.")
    if not path.is_dir():
        return
    entries = sorted(p.name for p in path.iterdir())
    foreign = [e for e in entries if e not in WORKDIR_ENTRIES]
    config = path / "config.json"
    if config.is_file():
        try:
            d = json.loads(config.read_text())
        except (OSError, ValueError):  # being written by another process of this run: not a model's
            d = {"mode": None, "train": None}
        if not (isinstance(d, dict) and "mode" in d and "train" in d):  # a model's config, which a run would replace
            foreign.insert(0, "a config.json that is not a training config")
    if foreign:
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise CheckpointMismatch(f"--workdir {workdir} is not empty and is not a vdot training workdir (it holds "
                                 f"{shown}); give a new or empty folder. Nothing in it was changed.")


def check_compatible(workdir, meta: Mapping, current_signature: Mapping, mode: str) -> None:
    """Refuse (CheckpointMismatch) a workdir whose latest checkpoint does not fit the state this config builds."""
    root = checkpoint_dir(workdir)
    if meta.get("format") != FORMAT:
        raise CheckpointMismatch(f"{root} holds checkpoints in format {meta.get('format')!r}, not {FORMAT!r}; use "
                                 "another --workdir. Nothing in it was changed.")
    if meta.get("mode") != mode:
        raise CheckpointMismatch(f"{root} holds a {meta.get('mode')!r} run but this config trains in mode {mode!r}; "
                                 "use another --workdir. Nothing in it was changed.")
    saved = meta.get("signature", {})
    diffs = signature_diff(saved, current_signature)
    if diffs:
        # a run's moments keep the dtype they were saved in (no silent rounding of a float32 run's state)
        moments = sorted({saved[k][1] for k, v in current_signature.items() if k.split("/", 1)[0].endswith("opt")
                          and k in saved and saved[k][0] == v[0] and saved[k][1] != v[1]})
        hint = (f" (the optimizer moments are {'/'.join(moments)} there: set config.optim.moment_dtype to match)"
                if moments else "")
        raise CheckpointMismatch(f"{root} was written by an incompatible config (different model shapes or state): "
                                 + "; ".join(diffs) + hint + ". Use another --workdir (or the config that wrote it). "
                                 "Nothing in it was changed.")


def restore_subtree(workdir, step: int, targets: Mapping[tuple, jax.ShapeDtypeStruct]) -> dict:
    """Restore some leaves of checkpoint ``step``'s state: {path tuple: abstract array with sharding} -> {path:
    array} (e.g. only a generator out of a whole train state, without reading the rest). A target without a
    sharding comes back as a numpy array: orbax would otherwise rebuild the mesh the run saved with."""
    nested: dict = {}
    for path, leaf in targets.items():
        node = nested
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = leaf
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding, global_shape=s.shape, dtype=s.dtype)
                                if s.sharding is not None else ocp.RestoreArgs(restore_type=np.ndarray, dtype=s.dtype),
                                nested)
    item = checkpoint_dir(workdir) / str(step) / "state"
    with ocp.PyTreeCheckpointer() as ck:
        try:
            restored = ck.restore(item, args=ocp.args.PyTreeRestore(nested, restore_args=restore_args,
                                                                    partial_restore=True))
        except Exception as e:  # noqa: BLE001 - damaged data files surface as many orbax/tensorstore errors
            raise CheckpointMismatch(f"checkpoint step {step} in {item.parent.parent} cannot be read "
                                     f"({_short(e)}); move it away to use the step before it") from None
    out = {}
    for path in targets:
        node = restored
        for p in path:
            node = node[p]
        out[path] = node
    return out


def restore_subtree_intact(workdir, targets: Mapping[tuple, jax.ShapeDtypeStruct], warn=_warn) -> dict:
    """``restore_subtree`` of the newest checkpoint that restores; each newer one that does not is named in a
    warning and left in place."""
    found = latest_meta(workdir, warn=warn)
    if found is None:
        raise CheckpointMismatch(f"{checkpoint_dir(workdir)} holds no checkpoint that can be restored.")
    root = checkpoint_dir(workdir)
    steps = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit() and int(p.name) <= found[0]),
                   reverse=True)
    for step in steps:
        if step_problem(root, step) is not None:
            continue
        try:
            return restore_subtree(workdir, step, targets)
        except CheckpointMismatch as e:
            warn(f"{e}; using an older step. It was left in place.")
    raise CheckpointMismatch(f"{root} holds no checkpoint that can be restored.")


def _is_primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    """Wait until every process reaches ``name`` (nothing to wait for in a one-process run)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


class Checkpointer:
    """Saves and restores (state, data state, meta) under WORKDIR/checkpoints (module docstring)."""

    def __init__(self, workdir, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        self.root = checkpoint_dir(workdir)
        self.read_only = read_only
        logging.getLogger("absl").addFilter(_QUIET)  # idempotent: a filter is added once
        self.manager = ocp.CheckpointManager(self.root, item_names=ITEMS,
                                             options=_options(keep, async_save and not read_only, read_only))
        self.last_saved: int | None = self.manager.latest_step()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_state: dict, meta: dict) -> bool:
        """Save (asynchronously); returns False when ``step`` is already saved."""
        if self.last_saved is not None and step <= self.last_saved:
            return False
        from vdot_jax.weights.params import non_finite

        bad = non_finite(state)  # a NaN model is never saved as if it were a result
        if bad:
            raise CheckpointError(f"the model at step {step} has non-finite values in {len(bad)} tensor(s) "
                                  f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); it was not saved to "
                                  f"{self.root} (lower the learning rate, or resume from the last checkpoint)")
        args = ocp.args.Composite(state=ocp.args.StandardSave(to_nested(state)),
                                  data=ocp.args.JsonSave(data_state),
                                  meta=ocp.args.JsonSave({**meta, "format": FORMAT, "step": int(step)}))
        with _disk_errors(self.root):
            self.manager.save(step, args=args, force=True)
        self.last_saved = step
        return True

    def restore_intact(self, abstract_state, warn=_warn) -> tuple[int, Any, dict, dict]:
        """(step, state, data state, meta) of the newest checkpoint that restores. Each newer one that does not is
        named in a warning; a writing checkpointer moves it to WORKDIR/unreadable_checkpoints/ (so new saves of
        those steps do not collide with it, and it is never deleted), a read-only one leaves it in place."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            problem = step_problem(self.root, step)
            if problem is None:
                try:
                    return (step, *self.restore(step, abstract_state))
                except Exception as e:  # noqa: BLE001 - any failure to read it means this step is damaged
                    problem = f"it cannot be restored: {_short(e)}"
            where = "It was left in place."
            if not self.read_only:
                aside = self.root.parent / "unreadable_checkpoints" / str(step)
                if aside.exists():
                    aside = aside.with_name(f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                if _is_primary():  # one process moves it; the others wait, then all see it gone
                    aside.parent.mkdir(exist_ok=True)
                    (self.root / str(step)).rename(aside)
                _barrier(f"vdot_checkpoint_aside_{step}")
                self.manager.reload()
                self.last_saved = self.manager.latest_step()
                where = f"It was moved to {aside}."
            warn(f"checkpoint step {step} in {self.root} is incomplete or unreadable ({problem}); resuming from an "
                 f"older step. {where}")
        raise CheckpointMismatch(f"{self.root} holds no checkpoint that can be restored; use another --workdir or "
                                 "move the checkpoints away to start over. Nothing in it was deleted.")

    def restore(self, step: int, abstract_state) -> tuple[Any, dict, dict]:
        """(state in the shardings ``abstract_state`` carries, data state, meta) of checkpoint ``step``."""
        target = to_nested(abstract_state)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
        return from_nested(restored["state"], abstract_state), dict(restored["data"]), dict(restored["meta"])

    def wait(self) -> None:
        with _disk_errors(self.root):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


class _QuietDiskFull(logging.Filter):
    """Orbax's background save threads log a full disk with a traceback per thread (and again per retry) before the
    error reaches ``save``/``wait``, where ``_disk_errors`` turns it into one line: drop those log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "")
        return not any(s in text for s in ("RESOURCE_EXHAUSTED", "No space left"))


_QUIET = _QuietDiskFull()


@contextlib.contextmanager
def _disk_errors(where):
    """A full disk, however orbax reports it (a ValueError RESOURCE_EXHAUSTED from a background thread), becomes
    the one ``OSError(ENOSPC)`` that ``vdot`` prints as a line."""
    try:
        yield
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(where) from None
        raise
