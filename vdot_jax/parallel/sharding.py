"""Placing models on a mesh: sharded init and loading, the start-up sharding report and replication check,
and ahead-of-time compilation with a memory report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from vdot_jax.parallel.logical import Rules, param_shardings
from vdot_jax.weights.params import abstract_model, assign, flat_shapes, flat_state, path_str


def model_shardings(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> dict[tuple, NamedSharding]:
    return param_shardings(flat_shapes(model), mesh, rules)


def init_sharded(make: Callable[[], nnx.Module], mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
    """Create a model with every parameter born in its shard (never a replicated full copy)."""
    abstract = abstract_model(make)
    shardings = model_shardings(abstract, mesh, rules)
    paths = list(flat_state(abstract))

    def build():
        params = flat_state(make())
        return [params[p] for p in paths]

    out = jax.jit(build, out_shardings=[shardings[p] for p in paths])()
    return assign(abstract, dict(zip(paths, out)))


def shard_model(model: nnx.Module, mesh: Mesh, rules: Rules | None = None) -> nnx.Module:
    """Move an existing model's parameters into their shardings (in place)."""
    shardings = model_shardings(model, mesh, rules)
    flat = {p: jax.device_put(v, shardings[p]) for p, v in flat_state(model).items()}
    return assign(model, flat)


def in_host_memory(shardings, fields: tuple[str, ...]):
    """A train state's shardings with the leaves under the top-level ``fields`` (e.g. the optimizer state and the
    EMA) placed in the host's pinned memory: same split over the mesh, ``memory_kind="pinned_host"``."""
    def place(path, s):
        first = path[0]
        name = getattr(first, "name", getattr(first, "key", None))
        return s.with_memory_kind("pinned_host") if name in fields else s

    return jax.tree_util.tree_map_with_path(place, shardings)


HOST_FIELDS = ("opt", "generator_opt", "critic_opt", "ema")  # the state a step reads only in its update


@dataclass
class ShardingStats:
    total_bytes: int
    per_device_bytes: int  # the largest over devices
    replicated_bytes: int  # bytes of parameters that are not split at all on a multi-device mesh
    rows: list[tuple[str, tuple, str, int, bool]]  # (path, shape, spec, bytes per device, replicated)

    @property
    def replicated_fraction(self) -> float:
        return self.replicated_bytes / max(self.total_bytes, 1)


def sharding_stats(flat_abstract: Mapping[tuple, object], shardings: Mapping[tuple, NamedSharding]) -> ShardingStats:
    total = per_dev = repl = 0
    rows = []
    for path, leaf in flat_abstract.items():
        shape, itemsize = tuple(leaf.shape), np.dtype(leaf.dtype).itemsize
        nbytes = math.prod(shape) * itemsize
        sh = shardings[path]
        local = math.prod(sh.shard_shape(shape)) * itemsize
        total += nbytes
        per_dev += local
        replicated = local == nbytes and sh.mesh.size > 1
        repl += nbytes * replicated
        rows.append((path_str(path), shape, str(sh.spec), local, replicated))
    return ShardingStats(total, per_dev, repl, rows)


def sharding_table(stats: ShardingStats, max_rows: int = 40) -> str:
    """A readable table, largest parameters first, plus totals."""
    rows = sorted(stats.rows, key=lambda r: -r[3])
    lines = [f"{'parameter':60s} {'shape':>22s} {'spec':28s} {'MiB/device':>11s}"]
    for path, shape, spec, local, _ in rows[:max_rows]:
        lines.append(f"{path[:60]:60s} {str(shape):>22s} {spec[:28]:28s} {local / 2**20:11.2f}")
    if len(rows) > max_rows:
        lines.append(f"... and {len(rows) - max_rows} more")
    lines.append(
        f"total {stats.total_bytes / 2**30:.3f} GiB, {stats.per_device_bytes / 2**30:.3f} GiB per device, "
        f"{100 * stats.replicated_fraction:.2f}% of bytes replicated"
    )
    return "\n".join(lines)


def check_replication(stats: ShardingStats, max_fraction: float) -> None:
    """Fail when more than ``max_fraction`` of parameter bytes are fully replicated."""
    if stats.replicated_fraction > max_fraction:
        worst = sorted((r for r in stats.rows if r[4]), key=lambda r: -r[3])
        names = ", ".join(r[0] for r in worst[:3])
        raise ValueError(
            f"{100 * stats.replicated_fraction:.1f}% of parameter bytes are replicated on every device (limit "
            f"{100 * max_fraction:.1f}%), e.g. {names}; fix the logical axis rules or the mesh"
        )


def device_memory_limit() -> int | None:
    """Bytes of memory one local device has (``memory_stats()["bytes_limit"]``), or None where the backend does
    not say (CPU): the limit ``vdot train`` checks every compiled phase against before its first step."""
    try:
        return (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit") or None
    except Exception:  # noqa: BLE001 -- backends without memory stats
        return None


@dataclass
class CompileReport:
    """What ahead-of-time compilation of one program found: per-device bytes (XLA's memory_analysis), seconds,
    or the error that stopped it; FLOPs when the caller counted them (``parallel.flops``: XLA's cost_analysis
    counts each loop body once and kernels as zero, a fraction of a step for our looped programs)."""

    name: str
    ok: bool
    seconds: float = 0.0
    error: str = ""
    argument_bytes: int = 0
    output_bytes: int = 0
    temp_bytes: int = 0
    alias_bytes: int = 0
    code_bytes: int = 0
    host_temp_bytes: int = 0  # temporaries in host memory (remat="offload"), not in the peak
    host_argument_bytes: int = 0  # arguments in host memory (mesh.opt_state_memory="host"), not in the peak
    host_output_bytes: int = 0
    host_alias_bytes: int = 0
    step_flops: float | None = None  # matmul FLOPs of one execution per device, loops multiplied out
    collective_bytes: float | None = None  # per device per execution, from the compiled HLO (``hlo_cost``)
    host_transfer_bytes: float | None = None  # host <-> device copies per device per execution, likewise
    measured: bool = False  # memory figures present (the backend gave a memory analysis)
    # figures from the TPU compiler's buffer assignment, the compile stopped there (``train.plan.assign_within``):
    # arguments + temporaries = its HBM total, host_argument + host_temp = its host-memory total; no outputs split
    assigned: bool = False
    text: str = ""  # the lowered StableHLO, when asked for

    @property
    def peak_bytes(self) -> int:
        """Arguments, outputs and temporaries live at once; donated (aliased) outputs reuse argument buffers."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def host_bytes(self) -> int:
        """The same sum for the program's buffers in host memory (state and offloaded activations), per chip."""
        return self.host_argument_bytes + self.host_output_bytes - self.host_alias_bytes + self.host_temp_bytes

    def line(self) -> str:
        if not self.ok:
            return f"{self.name}: did not compile: {self.error}"
        gib = lambda v: f"{v / 2**30:.3f}"  # noqa: E731
        mem = (f"per device GiB: arguments {gib(self.argument_bytes)}, outputs {gib(self.output_bytes)}, "
               f"temporaries {gib(self.temp_bytes)}, aliased {gib(self.alias_bytes)}, peak {gib(self.peak_bytes)}"
               + (f"; in host memory {gib(self.host_bytes)}" if self.host_bytes else "")
               if self.measured else "memory not measured on this backend")
        flops = f", {self.step_flops / 1e12:.2f} TFLOP per step" if self.step_flops else ""
        if self.assigned:
            return (f"{self.name}: buffers assigned in {self.seconds:.1f} s; per device GiB: {gib(self.peak_bytes)} "
                    f"in HBM (arguments {gib(self.argument_bytes)}, the rest temporaries and outputs)"
                    + (f"; in host memory {gib(self.host_bytes)}" if self.host_bytes else "") + flops)
        return f"{self.name}: compiled in {self.seconds:.1f} s; {mem}{flops}"


def mesh_compiler_options(mesh_config, mesh: Mesh | None) -> dict | None:
    """The XLA options a run's ``config.mesh`` asks of the compiler on ``mesh``'s platform (None: defaults).

    ``cast_per_layer`` (TPU only): libtpu's bf16-propagation pass off, so a float32 weight stack that a layer scan
    reads only through a bf16 cast is cast one layer at a time inside the loop, not copied whole to bf16 before
    it (the pass changes the loop's state to bf16 and hoists the cast; docs/scaling.md).
    ``memory_space_assignment=False`` (TPU only): libtpu's memory-space assignment off (``xla_msa_enable``)."""
    mesh_config = mesh_config or {}
    if mesh is None or mesh.devices.flat[0].platform != "tpu":
        return None
    options = {}
    if mesh_config.get("cast_per_layer", False):
        options["xla_jf_bf16_propagation"] = False
    if not mesh_config.get("memory_space_assignment", True):
        options["xla_msa_enable"] = False
    return options or None


def compile_program(jitted, *args, name: str = "program", mesh: Mesh | None = None, rules: Rules | None = None,
                    log: Callable[[str], None] | None = print, catch: bool = False, keep_text: bool = False,
                    compiler_options: dict | None = None):
    """Ahead-of-time compile ``jitted`` for these (possibly abstract) args under ``mesh`` and logical ``rules``;
    returns (compiled, CompileReport) and logs the report's line. This is the one way programs are compiled:
    the training phases, the sampling pipeline and ``vdot plan``. With ``catch``, a failure is reported
    (compiled None) instead of raised; ``keep_text`` keeps the lowered module's text in the report;
    ``compiler_options`` are XLA options for this compile only (``mesh_compiler_options``, ``train.plan.budget_options``)."""
    import contextlib
    import time

    from vdot_jax.parallel.logical import activate

    t0 = time.perf_counter()
    ctx = activate(mesh, rules) if mesh is not None else contextlib.nullcontext()
    try:
        with ctx:
            lowered = jitted.lower(*args)
            text = lowered.as_text() if keep_text else ""
            compiled = lowered.compile(compiler_options=compiler_options)
    except Exception as e:  # noqa: BLE001 -- reported with its first line when asked to
        if not catch:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        report = CompileReport(name, False, time.perf_counter() - t0, error=f"{type(e).__name__}: {first[:300]}")
        if log:
            log(report.line())
        return None, report
    report = CompileReport(name, True, time.perf_counter() - t0, text=text)
    mem = compiled.memory_analysis()
    if mem is not None:
        report.measured = True
        report.argument_bytes = int(mem.argument_size_in_bytes)
        report.output_bytes = int(mem.output_size_in_bytes)
        report.temp_bytes = int(mem.temp_size_in_bytes)
        report.alias_bytes = int(mem.alias_size_in_bytes)
        report.code_bytes = int(getattr(mem, "generated_code_size_in_bytes", 0) or 0)
        for field in ("temp", "argument", "output", "alias"):
            setattr(report, f"host_{field}_bytes", int(getattr(mem, f"host_{field}_size_in_bytes", 0) or 0))
    if log:
        log(report.line())
    return compiled, report
