"""What a pod checks at start-up, checked before anyone rents it (``vdot plan`` runs these before compiling).

    print(layout_table(run))                                     # every host's batch rows, for the run's topology
    problems = path_problems(config, processes=16, workdir="gs://b/run", shared=("/mnt/gcs",))

**Per-host layout.** For each process of the topology: its chips, the global batch rows its devices hold
(``parallel.distributed.host_rows``: what its data pipeline will load), the samples it loads per step, and which
hosts hold the same rows (a mesh axis that is not a batch axis, e.g. ``context``, spanning hosts). Data files
are not split per host: a step's rows are drawn from the whole data set (``data.pipeline.StepPlan``), so every
host reads from all of it, which is why its paths must be reachable from every host.

**Paths.** Every path a run reads or writes -- ``model.teacher``, ``model.generator``, ``model.vae``,
``model.text_encoder``, the data (``data.manifest`` and, for manifest data, every file its rows name, or
``data.precomputed``), the workdir and ``train.compile_cache`` -- must be reachable the way the workers reach it:

* ``gs://`` (any ``scheme://``): read through etils.epath by every host; inputs must exist, outputs need their
  bucket (checked from this host, with its credentials).
* a local path on a multi-host topology: each worker has its own disk, so a path is reachable only under a
  shared mount (a gcsfuse bucket or NFS mounted at the same place on every worker), which the user names
  (``vdot plan --shared-mount /mnt/gcs``). No prefix is assumed: a path under ``/mnt`` may as well be a local
  disk, and a wrong guess is found only once 16 hosts fail. Under a named mount, inputs must exist when the
  mount is present on this host too.
* a local path on a one-host topology: inputs must exist here (plan where the run will run).

A problem is one line naming the hosts and the path; ``vdot plan`` exits 1 on the first ones, before compiling.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from vdot_jax.errors import VdotError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


class PreflightError(VdotError, ValueError):
    """A run that would fail at start-up on its topology (the message names the hosts and the path)."""


# ----------------------------------------------------------------------------- per-host layout


@dataclass(frozen=True)
class HostLayout:
    process: int
    chips: int
    rows: tuple[int, ...]


def host_layouts(run) -> list[HostLayout]:
    """One entry per process of ``run.mesh`` (from the devices' ``process_index``)."""
    from vdot_jax.parallel.distributed import host_rows

    chips: dict[int, int] = {}
    for d in run.mesh.devices.flat:
        chips[d.process_index] = chips.get(d.process_index, 0) + 1
    return [HostLayout(p, n, host_rows(run.mesh, run.batch_axes, run.batch_size, p)) for p, n in sorted(chips.items())]


def _ranges(xs) -> str:
    """[0, 1, 2, 4] -> "0-2, 4"."""
    xs, out, i = sorted(xs), [], 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        out.append(str(xs[i]) if i == j else f"{xs[i]}-{xs[j]}")
        i = j + 1
    return ", ".join(out)


def layout_table(run) -> str:
    """The per-host table ``vdot plan`` prints."""
    hosts = host_layouts(run)
    acc = int(run.config.optim.accumulation)
    same: dict[tuple, list[int]] = {}
    for h in hosts:
        same.setdefault(h.rows, []).append(h.process)
    lines = [f"per-host layout: {len(hosts)} host(s), global batch {run.batch_size} rows x {acc} micro-batches, "
             f"rows sharded over {run.batch_axes or 'no axis (every device holds all rows)'}",
             f"{'host':>5} {'chips':>5} {'samples/step':>12}  {'hosts with these rows':<21}  batch rows"]
    for h in hosts:
        lines.append(f"{h.process:>5} {h.chips:>5} {acc * len(h.rows):>12}  {_ranges(same[h.rows]):<21}  "
                     f"{list(h.rows)}")
    source = run.config.data.source
    if source != "toy":
        lines.append(f"data shards: none per host -- a step's rows are drawn from all of the {source} data, so "
                     "every host reads from all of it (every file or ArrayRecord shard)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- paths


def config_paths(config, workdir: str | None = None) -> list[tuple[str, str, str]]:
    """(config key, path, "read" | "write") of every path a run of ``config`` uses; empty ones left out."""
    m, d = config.model, config.data
    out = [(f"model.{k}", str(m[k]), "read") for k in ("teacher", "generator", "vae", "text_encoder")]
    if d.source == "manifest":
        out.append(("data.manifest", str(d.manifest), "read"))
    elif d.source == "precomputed":
        out.append(("data.precomputed", str(d.precomputed), "read"))
    if workdir:
        out.append(("workdir", str(workdir), "write"))
    out.append(("train.compile_cache", str(config.train.compile_cache), "write"))
    return [x for x in out if x[1]]


def _under(path: str, prefixes) -> str | None:
    p = os.path.abspath(path)
    for pre in prefixes:
        pre = os.path.abspath(pre)
        if p == pre or p.startswith(pre.rstrip(os.sep) + os.sep):
            return pre
    return None


def _url_problem(key: str, path: str, mode: str) -> str | None:
    from etils import epath

    p = epath.Path(path)
    target = p if mode == "read" else epath.Path(re.match(r"^[^:]+://[^/]+", path).group(0))
    try:
        if target.exists():
            return None
    except Exception as e:  # noqa: BLE001 -- credentials, network, a missing gcsfs: all are "cannot reach"
        return f"{key} {path} cannot be reached from this host ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
    what = "does not exist" if mode == "read" else f"is in {target}, which does not exist"
    return f"{key} {path} {what}"


def path_problems(config, processes: int, *, workdir: str | None = None, shared=(),
                  rows_of_manifest: bool = True) -> list[str]:
    """One line per path of ``config`` that the ``processes`` hosts of a run cannot reach (module docstring)."""
    hosts = "host 0" if processes == 1 else f"hosts 0-{processes - 1}"
    problems = []
    for key, path, mode in config_paths(config, workdir):
        problem = _path_problem(key, path, mode, processes, hosts, shared)
        if problem:
            problems.append(problem)
        elif key == "data.manifest" and rows_of_manifest and not _URL.match(path):
            problems += _manifest_row_problems(path, processes, hosts, shared)
    return problems


def _path_problem(key, path, mode, processes, hosts, shared, check_exists=True) -> str | None:
    if _URL.match(path):
        return _url_problem(key, path, mode) if check_exists else None
    mount = _under(path, shared)
    if processes > 1 and mount is None:
        return (f"{hosts} cannot reach {key} {path}: a local path is on one machine's disk only; use gs://... or "
                f"a path under a mount every worker has (vdot plan --shared-mount PREFIX)")
    if check_exists and mode == "read" and (processes == 1 or os.path.exists(mount)) and not os.path.exists(path):
        return f"{hosts} cannot read {key} {path}: it does not exist" + (
            f" (under the shared mount {mount})" if mount else "")
    return None


def _manifest_row_problems(path, processes, hosts, shared) -> list[str]:
    """Every file the manifest's rows name is read by every host (each host loads any row)."""
    from vdot_jax.data.manifest import ManifestError, read_manifest

    try:
        rows = read_manifest(path)
    except ManifestError as e:
        return [f"{hosts} cannot use data.manifest: {e}"]
    out = []
    for i, row in enumerate(rows):
        for f in [row.video, row.src_video, row.src_mask, *(row.src_ref_images or [])]:
            if f:
                problem = _path_problem(f"data.manifest row {i + 1}:", str(f), "read", processes, hosts, shared,
                                        check_exists=False)
                if problem:
                    return [problem + (f" (and maybe more of its {len(rows)} rows)" if len(rows) > 1 else "")]
    return out


def preflight(run, *, workdir: str | None = None, shared=(), log=print) -> None:
    """Print the per-host layout and refuse (``PreflightError``, one line) a path the hosts cannot reach."""
    if log:
        log(layout_table(run))
    processes = len({d.process_index for d in run.mesh.devices.flat})
    problems = path_problems(run.config, processes, workdir=workdir, shared=shared)
    if problems:
        raise PreflightError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if log:
        checked = config_paths(run.config, workdir)
        log(f"paths: {len(checked)} checked for {processes} host(s)" + (
            f" ({', '.join(k for k, _, _ in checked)})" if checked else "") + ("" if workdir else
                                                                              "; no --workdir given"))
