"""Every program a run executes, compiled ahead of time from abstract arguments (nothing is allocated).

``programs(run)`` lists them: the four distillation phases (or the flow-matching step), the 4-step student
denoise of one video and of a batch of ``data x fsdp`` videos (what ``vdot generate --batch`` runs per call) and
the teacher's CFG denoise, each as (name, jitted, abstract args). ``check(run)`` compiles them all
with ``vdot_jax.parallel.sharding.compile_program`` and compares each per-device peak with the device memory;
``vdot plan`` runs it for a TPU topology on a CPU host (or lowers for ``cuda``), and ``vdot train`` before its
first step. Memory figures are XLA's ``memory_analysis`` of the compiled program, per device.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdot_jax.conditions import latent_frames
from vdot_jax.distill.steps import PHASES
from vdot_jax.errors import VdotError
from vdot_jax.models.toy_vae import ToyVAE
from vdot_jax.parallel.aot import cuda_lowering, kernels_outside_shard_map
from vdot_jax.parallel.chips import Chip, step_bound
from vdot_jax.parallel.flops import matmul_flops
from vdot_jax.parallel.hlo_cost import hlo_cost
from vdot_jax.parallel.logical import activate, activation_spec
from vdot_jax.parallel.sharding import CompileReport, compile_program, mesh_compiler_options
from vdot_jax.sampling.model_sampler import model_sampler

STUDENT = dict(steps=4, shift=16.0, guidance=1.0)  # the released student (docs/method.md)
BATCH_SAMPLER = "student_denoise_batch"  # the student's denoise of data x fsdp videos in one call
TEACHER = dict(steps=50, shift=16.0, guidance=5.0)  # the VACE teacher


@dataclass
class Plan:
    reports: list[CompileReport] = field(default_factory=list)
    hbm_bytes: int | None = None
    chip: Chip | None = None  # peak figures for the predicted step time (``parallel.chips``)
    texts: dict = field(default_factory=dict)  # name -> lowered StableHLO (when asked for)
    host_budget: int | None = None  # host memory per chip a program may keep there (``host_budget_bytes``)

    def failures(self) -> list[str]:
        """One sentence per program that did not compile or does not fit."""
        out = []
        for r in self.reports:
            if not r.ok:
                out.append(f"program {r.name} did not compile ({r.error})")
            elif self.hbm_bytes and r.measured and r.peak_bytes > self.hbm_bytes:
                out.append(f"program {r.name} needs {r.peak_bytes / 2**30:.2f} GiB per device but a device has "
                           f"{self.hbm_bytes / 2**30:.0f} GiB")
        return out + self.host_failures()

    def host_failures(self) -> list[str]:
        """One sentence per program keeping more in host memory per chip than the host budget."""
        return [f"program {r.name} keeps {r.host_bytes / 2**30:.2f} GiB per chip in host memory but the host "
                f"budget is {self.host_budget / 2**30:.1f} GiB per chip" for r in self.reports
                if self.host_budget and r.ok and r.measured and r.host_bytes > self.host_budget]


# Host RAM of one TPU VM and its chips (Cloud TPU docs, "VM, host and slice properties" / "VM types":
# v5p ct5p-hightpu-4t 448 GB for 4 chips; v5e ct5lp-hightpu-8t 384 GB for 8). A program may keep
# HOST_FRACTION of its chip's share in host memory: the rest is the process, the data pipeline and the
# checkpointer's host copies.
TPU_HOST_RAM = {"TPU v5": (448e9, 4), "TPU v5p": (448e9, 4), "TPU v5 lite": (384e9, 8), "TPU v5e": (384e9, 8)}
HOST_FRACTION = 0.75


def host_budget_bytes(device) -> int | None:
    """Host memory per chip a plan may use on this TPU (None where the VM's RAM is not listed)."""
    ram = TPU_HOST_RAM.get(getattr(device, "device_kind", ""))
    return None if ram is None else int(HOST_FRACTION * ram[0] / ram[1])


def latent_grid(config, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(channels, F, H, W) of the latents of a ``frames``x``height``x``width`` video under the run's encoder."""
    if config.data.encoder == "wan":
        st, sh, sw = 4, 8, 8
        f = latent_frames(frames)
    else:
        st, sh, sw = ToyVAE().stride
        f = 1 + (frames - 1) // st
    if height % sh or width % sw:
        raise VdotError(f"video size {height}x{width} is not divisible by the VAE's spatial stride {sh}x{sw}")
    return f, height // sh, width // sw


def _sd(shape, dtype, sharding):
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def programs(run, frames: int, height: int, width: int) -> list[tuple[str, Callable, tuple]]:
    """(name, jitted, abstract args) of every program of ``run`` at this video size."""
    c, a, mesh = run.config, run.arch, run.mesh
    f, h, w = latent_grid(c, frames, height, width)
    text_len = int(c.data.toy.text_len) if c.data.encoder == "toy" else int(c.data.text_len)
    acc, b = int(c.optim.accumulation), run.batch_size
    batch = {"latents": (acc, b, a.in_channels, f, h, w), "text": (acc, b, text_len, a.text_dim),
             "neg_text": (acc, b, text_len, a.text_dim)}
    if a.is_vace:
        batch["context"] = (acc, b, a.vace_in_channels, f, h, w)
    abstract_batch = {k: _sd(s, jnp.float32, run.batch_sharding(k, len(s))) for k, s in batch.items()}
    out = []
    for name in phase_names(c):
        jitted = run.trainer.phase(name, run.state_sharding, {k: v.sharding for k, v in abstract_batch.items()})
        out.append((name, jitted, (run.abstract_state, abstract_batch)))

    rep = NamedSharding(mesh, P())
    noise = _sd((1, a.in_channels, f, h, w), jnp.float32, rep)
    text = _sd((1, text_len, a.text_dim), jnp.float32, rep)
    ctx = _sd((1, a.vace_in_channels, f, h, w), jnp.float32, rep) if a.is_vace else None
    if run.mode == "flow":
        gdef, params = run.trainer.model_def, run.abstract_state.params
        tdef, tparams = gdef, params
    else:
        gdef, params = run.trainer.gen_def, run.abstract_state.generator
        tdef, tparams = run.trainer.teacher_def, run.abstract_state.teacher
    student = model_sampler(gdef, steps=STUDENT["steps"], shift=STUDENT["shift"], guidance=STUDENT["guidance"])
    out.append(("student_denoise_4", student.jitted, (params, noise, text, None, ctx)))
    # vdot generate --batch: data x fsdp videos a call, each device holding whole videos (split over context)
    videos = batch_videos(mesh)
    with activate(mesh, run.rules):
        by_batch = lambda x: _sd((videos, *x.shape[1:]), x.dtype,  # noqa: E731
                                 NamedSharding(mesh, activation_spec((videos, *x.shape[1:]), ("batch",)) or P()))
        batched = (params, by_batch(noise), by_batch(text), None, by_batch(ctx) if ctx is not None else None)
    out.append((BATCH_SAMPLER, student.jitted, batched))
    teacher = model_sampler(tdef, steps=TEACHER["steps"], shift=TEACHER["shift"], guidance=TEACHER["guidance"])
    out.append(("teacher_denoise_cfg", teacher.jitted, (tparams, noise, text, text, ctx)))
    return out


def batch_videos(mesh) -> int:
    """Videos per call of the batched sampler on ``mesh``: ``data x fsdp`` (``vdot generate --batch``'s default)."""
    return int(mesh.shape.get("data", 1)) * int(mesh.shape.get("fsdp", 1))


def phase_names(config) -> tuple[str, ...]:
    """The training programs a run of ``config`` executes."""
    if config.mode == "flow":
        return ("flow",)
    gan = bool(config.loss.use_gan)
    return tuple(p for p in PHASES if gan or "gan" not in p)


def step_flops(run, frames: int, height: int, width: int, only: tuple[str, ...] = ()) -> dict[str, float]:
    """Per-device matmul FLOPs of one execution of each program of ``run`` (``parallel.flops``: loops
    multiplied out, the mesh's work spread evenly over its devices). Build ``run`` with XLA attention so that
    attention's matmuls count (a Pallas or cuDNN kernel counts zero). The rollout's no-grad steps before the
    random exit are a data-dependent loop, counted at their mean, (steps - 1) / 2."""
    trips = (run.trainer.schedule.steps - 1) / 2 if run.mode != "flow" else 1.0
    out = {}
    for name, jitted, args in programs(run, frames, height, width):
        if only and name not in only:
            continue
        try:
            with activate(run.mesh, run.rules):
                jaxpr = jitted.trace(*args).jaxpr
        except Exception:  # noqa: BLE001 -- the compile that follows reports why this program fails
            continue
        out[name] = matmul_flops(jaxpr, while_trips=trips).per_device(run.mesh.size)
    return out


def check(run, frames: int, height: int, width: int, *, hbm_bytes: int | None = None, platform: str | None = None,
          log: Callable[[str], None] | None = print, keep_text: bool = False, only: tuple[str, ...] = (),
          flops: dict[str, float] | None = None, host_budget: int | None = None, chip: Chip | None = None,
          stop_at_refusal: bool = False, assign_only: bool = False) -> Plan:
    """Compile (TPU, CPU) or lower (``platform="cuda"``, on a host without GPUs) every program of ``run`` (or
    those named in ``only``, in that order); ``flops`` (from ``step_flops``) go into the reports, and each
    compiled program's collective and host-transfer bytes (``parallel.hlo_cost``). ``stop_at_refusal``: stop at
    the first program that does not compile or does not fit (``vdot plan``'s search), and on a TPU with
    ``hbm_bytes`` refuse a program as soon as it is known to be over: its arguments alone without compiling, its
    arguments plus temporaries at the compiler's buffer assignment (``compile_within``). ``assign_only`` (TPU):
    compile each program only as far as the buffer assignment and report its figures (``assign_within``)."""
    plan = Plan(hbm_bytes=hbm_bytes, host_budget=host_budget, chip=chip)
    listed = {name: (jitted, args) for name, jitted, args in programs(run, frames, height, width)}
    unknown = [n for n in only if n not in listed]
    if unknown:
        raise VdotError(f"no program named {', '.join(unknown)}; this run has {', '.join(listed)}")
    flops = flops or {}
    for name in only or listed:
        jitted, args = listed[name]
        if platform == "cuda":
            t0 = time.perf_counter()
            try:
                with activate(run.mesh, run.rules), cuda_lowering():
                    text = jitted.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
            except Exception as e:  # noqa: BLE001 -- reported as one line
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                report = CompileReport(name, False, time.perf_counter() - t0, error=f"{type(e).__name__}: {first}")
            else:
                bare = kernels_outside_shard_map(text)
                report = CompileReport(name, not bare, time.perf_counter() - t0,
                                       error=f"{len(bare)} cuDNN calls outside a shard_map" if bare else "")
                if keep_text:
                    plan.texts[name] = text
        else:
            tpu = run.mesh.devices.flat[0].platform == "tpu"
            early = stop_at_refusal and hbm_bytes and tpu
            options = mesh_compiler_options(run.config.mesh, run.mesh)
            if assign_only and tpu:
                report = assign_within(jitted, args, name, run.mesh, run.rules, hbm_bytes, options)
            else:
                report = compile_within(jitted, args, name, run.mesh, run.rules, hbm_bytes if early else None,
                                        keep_text, options)
            if keep_text:
                plan.texts[name] = report.text
        report.step_flops = flops.get(name)
        if log:
            line = report.line()
            log(line.replace("compiled", "lowered for cuda", 1) if platform == "cuda" else line)
        plan.reports.append(report)
        if stop_at_refusal and plan.failures():
            break
    return plan


# libtpu's cap on the HBM its compiler may assign to a program, in MiB (libtpu 0.0.42; the compiler uses the
# smaller of it and the chip's HBM). At buffer assignment -- before code generation, the slow part -- the compiler
# refuses a program whose buffers in HBM exceed the cap: the arguments and the temporaries as it assigns them
# (measured: the refusal's figure, and the dumped memory-usage report, are arguments + temporaries). Capping it
# at the budget makes a program over a budget below the chip (--hbm-gib) stop there instead of compiling to the end.
HBM_LIMIT_OPTION = "xla_tpu_max_hbm_size_mib"


def device_argument_bytes(args, host: bool = False) -> int:
    """Per-device bytes of the abstract ``args`` that live in device memory (host-memory leaves left out; with
    ``host``, only those), without the compiler's tile padding: at most what the compiled program's arguments take."""
    total = 0
    for leaf in jax.tree.leaves(args):
        sharding = getattr(leaf, "sharding", None)
        if (getattr(sharding, "memory_kind", None) in ("pinned_host", "unpinned_host")) != host:
            continue
        shape = sharding.shard_shape(tuple(leaf.shape)) if sharding is not None else leaf.shape
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return total


def budget_options(budget: int) -> dict:
    """XLA options that make the TPU compiler refuse, at buffer assignment, a program whose arguments plus
    temporaries exceed ``budget`` bytes per device. A program well inside it compiles as without it (measured:
    the same memory with the cap 10% or more above its need); one within about 10% of it may be scheduled tighter
    to fit it, as the compiler does on a chip of that size (docs/scaling.md)."""
    return {HBM_LIMIT_OPTION: max(1, -(-budget // 2**20))}  # rounded up: never below the budget


def compile_within(jitted, args, name: str, mesh, rules, budget: int | None,
                   keep_text: bool = False, options: dict | None = None) -> CompileReport:
    """Compile one TPU (or CPU) program with XLA ``options`` (the run's, ``mesh_compiler_options``) and count its
    collectives; with ``budget`` (bytes per device), refuse it without compiling when its arguments alone are over,
    else compile under ``budget_options`` as well."""
    arg_bytes = device_argument_bytes(args)
    if budget and arg_bytes > budget:
        return CompileReport(name, False, 0.0, argument_bytes=arg_bytes,
                             error=f"its arguments alone take {arg_bytes / 2**30:.2f} GiB per device, over the "
                                   f"budget of {budget / 2**30:.4g} GiB (not compiled)")
    compiled, report = compile_program(jitted, *args, name=name, mesh=mesh, rules=rules, log=None, catch=True,
                                       keep_text=keep_text,
                                       compiler_options={**(options or {}), **(budget_options(budget) if budget else {})} or None)
    if compiled is not None:
        cost = hlo_cost(compiled.as_text())
        report.collective_bytes, report.host_transfer_bytes = cost.collective_bytes, cost.host_transfer_bytes
    return _out_of_memory(report, arg_bytes)


def assign_within(jitted, args, name: str, mesh, rules, budget: int | None = None,
                  options: dict | None = None) -> CompileReport:
    """Compile one TPU program only as far as the compiler's buffer assignment (a few percent of the whole compile:
    code generation, the slow part, comes after it) and report what it assigned: its HBM total (arguments plus
    temporaries, the figure it checks against the chip's HBM) and its host-memory total, read from its memory-usage
    report, and the collective and host-transfer bytes of the optimized HLO. It caps the HBM at 1 MiB, which no
    program fits, so the compiler stops there; under that cap the scheduler packs buffers as tightly as it can
    (measured at VACE-14B: 0.3-0.5% below the figure under a 39 GiB cap), the figure a chip would have to hold at
    least. With ``budget``, a program whose arguments alone are over is not compiled (as ``compile_within``)."""
    import glob
    import tempfile

    arg_bytes = device_argument_bytes(args)
    if budget and arg_bytes > budget:
        return compile_within(jitted, args, name, mesh, rules, budget, options=options)
    with tempfile.TemporaryDirectory(prefix="vdot-assign-") as dump:
        _, report = compile_program(jitted, *args, name=name, mesh=mesh, rules=rules, log=None, catch=True,
                                    compiler_options={**(options or {}), HBM_LIMIT_OPTION: 1, "xla_dump_to": dump})
        m = _OOM[0].search(report.error)
        if report.ok or not m:  # failed before buffer assignment (its error stands), or no cap on this backend
            return report
        hbm = int(float(m.group(1)) * _UNITS[m.group(2)])
        usage = {}
        for path in glob.glob(f"{dump}/*memory-usage-report.txt"):
            totals = _space_totals(open(path).read())
            if totals.get(0, 0) > usage.get(0, 0):  # the program's module (the largest), not a helper's
                usage, hlo = totals, path.replace("-memory-usage-report.txt", ".txt")
        cost = hlo_cost(open(hlo).read()) if usage and os.path.exists(hlo) else None
    hbm = usage.get(0, hbm)  # exact bytes where the report was written (the error rounds to 0.01 GiB)
    host_args = device_argument_bytes(args, host=True)
    return CompileReport(
        name, True, report.seconds, argument_bytes=min(arg_bytes, hbm), temp_bytes=hbm - min(arg_bytes, hbm),
        host_argument_bytes=host_args, host_temp_bytes=max(usage.get(HOST_COLOR, 0) - host_args, 0),
        measured=True, assigned=True, collective_bytes=cost.collective_bytes if cost else None,
        host_transfer_bytes=cost.host_transfer_bytes if cost else None)


HOST_COLOR = 5  # TPU host memory in a buffer assignment's memory colours (the layouts' S(5))


def _space_totals(report: str) -> dict[int, int]:
    """Memory colour -> total bytes, from an XLA memory-usage report ("Memory Space: ... (color=N)" then
    "Total bytes: B (...)")."""
    return {int(c): int(b) for c, b in re.findall(r"\(color=(\d+)\)\s*\nTotal bytes: (\d+)", report)}


_BYTES = r"\(?([\d.]+)([KMGTP]?)B?\)?"
# at buffer assignment; and at the end of compilation (libtpu 0.0.42 spells both)
_OOM = (re.compile(r"Ran out of memory on HBM, the total memory required for HLO temporaries " + _BYTES
                   + r" exceeds available HBM " + _BYTES),
        re.compile(r"Ran out of memory in memory space hbm. Used " + _BYTES + " of " + _BYTES + " hbm"))
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}  # XLA's human-readable bytes


def _out_of_memory(report: CompileReport, arg_bytes: int) -> CompileReport:
    """The TPU compiler refuses, at buffer assignment, a program whose buffers in HBM exceed its cap; the figure it
    names ("required for HLO temporaries") counts the arguments too: split it into ``arg_bytes`` (the arguments
    without padding) and the rest. A later check refuses a program over the cap at the end of compilation."""
    early = _OOM[0].search(report.error)
    m = early or _OOM[1].search(report.error)
    if m:
        need, cap = (int(float(m.group(i)) * _UNITS[m.group(i + 1)]) for i in (1, 3))
        report.argument_bytes = min(arg_bytes, need)
        report.temp_bytes = need - report.argument_bytes
        when = "at buffer assignment" if early else "at the end of compilation"
        report.error = (f"arguments and temporaries need {need / 2**30:.2f} GiB per device "
                        f"({report.argument_bytes / 2**30:.2f} GiB of arguments), more than the {cap / 2**30:.4g} GiB "
                        f"the compiler may assign (refused {when})")
    return report


def too_big(r: CompileReport) -> bool:
    """Refused for device memory before a memory analysis: only the arguments and the temporaries asked are known
    (``compile_within``)."""
    return not r.ok and bool(r.temp_bytes or r.argument_bytes)


def table(plan: Plan) -> str:
    """The per-program table ``vdot plan`` prints (GiB per device)."""
    head = (f"{'program':22s} {'status':10s} {'args':>8s} {'outputs':>8s} {'temps':>8s} {'aliased':>8s} "
            f"{'peak':>8s} {'host':>8s} {'TFLOP/step':>10s} {'compile s':>9s}  fits")
    lines = [head]
    tf = lambda r: f"{r.step_flops / 1e12:10.2f}" if r.step_flops else f"{'-':>10s}"  # noqa: E731
    for r in plan.reports:
        g = lambda v: f"{v / 2**30:8.2f}" if r.measured else f"{'-':>8s}"  # noqa: E731
        if too_big(r):  # refused for memory: only the arguments and the temporaries asked are known
            k = lambda v: f"{v / 2**30:8.2f}" if v else f"{'-':>8s}"  # noqa: E731
            lines.append(f"{r.name:22s} {'TOO BIG':10s} {k(r.argument_bytes)} {'-':>8s} {k(r.temp_bytes)} {'-':>8s} "
                         f">{(r.argument_bytes + r.temp_bytes) / 2**30:7.2f} {'-':>8s} {tf(r)} {r.seconds:9.1f}  NO")
            continue
        fits = ("-" if not (r.ok and r.measured and plan.hbm_bytes) else
                "yes" if r.peak_bytes <= plan.hbm_bytes else "NO")
        if plan.host_budget and r.ok and r.measured and r.host_bytes > plan.host_budget:
            fits = "NO (host)"
        status = ("assigned" if r.assigned else "compiled" if r.measured else "lowered") if r.ok else "FAILED"
        o = (lambda v: f"{'-':>8s}") if r.assigned else g  # noqa: E731 -- no outputs split at buffer assignment
        lines.append(f"{r.name:22s} {status:10s} {g(r.argument_bytes)} {o(r.output_bytes)} {g(r.temp_bytes)} "
                     f"{o(r.alias_bytes)} {g(r.peak_bytes)} {g(r.host_bytes)} {tf(r)} {r.seconds:9.1f}  {fits}")
    lines.append(FLOPS_NOTE)
    if any(r.assigned for r in plan.reports):
        lines.append(ASSIGNED_NOTE)
    return "\n".join(lines)


def predicted(plan: Plan, r: CompileReport):
    """The step-time lower bound of a compiled program on ``plan.chip`` (``parallel.chips.step_bound``), or None.
    HBM counts what the program must at least read and write once: its device arguments and outputs."""
    if plan.chip is None or not (r.ok and r.measured) or r.step_flops is None or r.collective_bytes is None:
        return None
    return step_bound(plan.chip, flops=r.step_flops, hbm_bytes=r.argument_bytes + r.output_bytes,
                      ici_bytes=r.collective_bytes, host_bytes=r.host_transfer_bytes or 0.0)


def videos_per_call(name: str, mesh) -> int | None:
    """Videos one execution of the batched sampler makes (None for other programs: the one-video denoise
    programs repeat their work on every data x fsdp rank, which the FLOP count spreads over all chips)."""
    return batch_videos(mesh) if name == BATCH_SAMPLER else None


def prediction_table(plan: Plan, mesh) -> str:
    """Per program: what one execution moves per chip and the lower bound on its time at the chip's peak."""
    if plan.chip is None:
        return ""
    c = plan.chip
    lines = [f"PREDICTED, not measured: lower bound per execution on {c.name} at peak ({c.flops / 1e12:.0f} bf16 "
             f"TFLOP/s, HBM {c.hbm / 1e9:.0f} GB/s, ICI {c.ici / 1e9:.0f} GB/s, host link {c.host / 1e9:.0f} GB/s; "
             "docs/scaling.md)",
             f"{'program':22s} {'TFLOP':>9s} {'HBM GiB':>8s} {'ICI GiB':>8s} {'host GiB':>8s} {'compute s':>9s} "
             f"{'HBM s':>7s} {'ICI s':>7s} {'host s':>7s} {'bound s':>8s} {'limit':>7s}  per video"]
    for r in plan.reports:
        b = predicted(plan, r)
        if b is None:
            continue
        per_video = ""
        n = videos_per_call(r.name, mesh)
        if n:
            per_video = (f"{n} video(s)/call, {r.step_flops * mesh.size / n / 1e12:.1f} TFLOP/video, "
                         f"<= {3600 * n / b.seconds:,.0f} videos/hour")
        lines.append(f"{r.name:22s} {r.step_flops / 1e12:9.2f} {(r.argument_bytes + r.output_bytes) / 2**30:8.2f} "
                     f"{r.collective_bytes / 2**30:8.2f} {(r.host_transfer_bytes or 0) / 2**30:8.2f} "
                     f"{b.compute:9.3f} {b.hbm:7.3f} {b.ici:7.3f} {b.host:7.3f} {b.seconds:8.3f} {b.limit:>7s}  "
                     f"{per_video}")
    return "\n".join(lines) if len(lines) > 2 else ""


PREDICTION_NOTE = ("TFLOP: per chip (as above). HBM GiB: device arguments + outputs, what a step reads and writes at "
                   "least once. ICI GiB: collectives per chip (all-gather, reduce-scatter, all-reduce, all-to-all, "
                   "collective-permute: the larger of result and operands), host GiB: copies between host memory and "
                   "the device, both counted in the compiled HLO with every loop's trip count. Each time is that "
                   "amount at the chip's peak; bound = the largest (limit names it): the step cannot be faster, and "
                   "will be slower. per video (the batched sampler): FLOPs of the whole mesh per video; videos/hour = 3600 x "
                   "videos per call / bound, an upper bound on throughput")


ASSIGNED_NOTE = ("assigned: compiled only as far as the TPU compiler's buffer assignment (the search; docs/scaling.md): "
                 "peak = the HBM it assigned per chip (arguments, temporaries and outputs; the figure it checks "
                 "against the chip's HBM, at buffer assignment and again at the end of compilation), host = the "
                 "host memory it assigned. XLA's memory analysis of the whole compile (vdot plan --mesh, or --full) "
                 "reports a larger peak for the same program -- 4-16 GiB more at VACE-14B -- and is the cautious "
                 "figure")


FLOPS_NOTE = ("host: bytes per chip in the host's memory, outside the peak: state kept there (mesh.opt_state_memory="
              "host) and offloaded temporaries (model.remat=offload). TFLOP/step: matmul "
              "and attention FLOPs of one execution per chip, counted from the traced program with every loop "
              "multiplied out (the rollout's random-length loop at its mean): attention as each chip runs it, the "
              "other matmuls as the whole mesh's work divided by its chips")
