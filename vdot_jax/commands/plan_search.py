"""``vdot plan`` without ``--mesh``: which meshes of a topology fit, best first.

Candidates are every (data, fsdp, context, tensor) whose product is the device count, with ``context x tensor``
dividing the attention heads (Ulysses splits the heads a device holds over ``context``) and ``context``
dividing the video tokens, times the memory levers ``model.remat`` (offload, full) and
``mesh.opt_state_memory`` (host, device). Each candidate is compiled one program at a time, the largest first
(generator_gan, critic_gan, ...), and stops at the first program that does not fit: a program whose state alone
is over the budget is refused without compiling. By default each program is compiled only as far as the TPU
compiler's buffer assignment (``train.plan.assign_within``: a few percent of a compile, on one core) and judged by
the HBM and host memory it was assigned there; with ``full`` it is compiled to the end, its HBM capped at the
budget (``train.plan.compile_within``), and judged by XLA's memory analysis. ``jobs`` candidates are planned at
once, each in a worker process.

The search's memory model: a candidate needs at least the device memory of another when it keeps at least as
much state per chip (``data`` at least as large: state is split over fsdp x context x tensor, replicated over
data), at least as many tokens per chip (``context`` no larger) and at least as large an attention/MLP slice
(``context x tensor`` no larger), with levers no stronger (offload < full remat; host < device optimizer
state). Candidates are compiled in order of increasing memory by this model, and one that needs at least the
memory of a candidate already refused for device memory is skipped without compiling (``skip=False``, ``vdot plan
--compile-all``, compiles every candidate). The model holds where the state and the activations dominate the
memory, as at real size; a tiny model's fixed buffers can break it (measured on the tiny config's batched sampler
on v5e:2x2: fsdp=4 peaks at 0.0108 GiB, data=4 at 0.0055), so there a skip can miss a mesh that fits. Those that fit are
ranked: fewest bytes in host memory per chip, then the largest global batch (the least redundant work per
chip), then the smallest predicted training step time per video.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field

from vdot_jax.train.plan import BATCH_SAMPLER, Plan, phase_names, predicted, too_big

# Lever values from the least device memory to the most; a config's other value (e.g. remat "none") is kept
# as given and ranked by REMAT_RANK.
LEVERS = {"remat": ("offload", "full"), "opt_state_memory": ("host", "device")}
REMAT_RANK = {"offload": 0, "full": 1, "dots": 2, "dots_no_batch": 2, "none": 3}
OPT_RANK = {"host": 0, "device": 1}
# Largest per-chip peak first (docs/scaling.md's compiled tables), so a refusal for memory comes first.
PRIORITY = ("generator_gan", "critic_gan", "generator_dmd_ot", "critic_flow", "flow", BATCH_SAMPLER,
            "teacher_denoise_cfg", "student_denoise_4")


@dataclass(frozen=True)
class Candidate:
    data: int
    fsdp: int
    context: int
    tensor: int
    remat: str
    opt_state_memory: str

    @property
    def mesh(self) -> str:
        return f"data={self.data},fsdp={self.fsdp},context={self.context},tensor={self.tensor}"

    def describe(self) -> str:
        axes = ",".join(f"{a}={v}" for a, v in (("data", self.data), ("fsdp", self.fsdp), ("context", self.context),
                                                ("tensor", self.tensor)) if v > 1) or "data=1"
        return f"{axes} remat={self.remat} opt_state_memory={self.opt_state_memory}"

    def pressure(self) -> tuple:
        """Sort key: increasing device memory by the search's model."""
        return (self.data, -self.context, -self.context * self.tensor, REMAT_RANK.get(self.remat, 1),
                OPT_RANK.get(self.opt_state_memory, 1))

    def needs_at_least(self, other: "Candidate") -> bool:
        """By the search's memory model, this candidate needs at least the device memory of ``other``."""
        return (self.data >= other.data and self.context <= other.context
                and self.context * self.tensor <= other.context * other.tensor
                and REMAT_RANK.get(self.remat, 1) >= REMAT_RANK.get(other.remat, 1)
                and OPT_RANK.get(self.opt_state_memory, 1) >= OPT_RANK.get(other.opt_state_memory, 1))


def candidates(devices: int, heads: int, tokens: int, remats, opt_memories) -> list[Candidate]:
    """Every valid candidate, in compile order (least device memory first)."""
    out = []
    for data in _divisors(devices):
        for fsdp in _divisors(devices // data):
            for context in _divisors(devices // data // fsdp):
                tensor = devices // data // fsdp // context
                if heads % (context * tensor) or tokens % context:
                    continue
                out += [Candidate(data, fsdp, context, tensor, r, o) for r in remats for o in opt_memories]
    return sorted(out, key=Candidate.pressure)


def _gib(b: float) -> str:
    """Bytes as GiB, with enough digits for a tiny model's sizes."""
    g = b / 2**30
    return f"{g:.2f}" if g >= 0.1 else f"{g:.4g}"


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass
class Outcome:
    candidate: Candidate
    plan: Plan | None = None
    mesh: object = None  # the jax Mesh it was planned on
    batch: int = 0  # global batch per micro-step
    status: str = ""  # "fits", "refused (memory)", "refused (host)", "failed", "skipped"
    reason: str = ""
    shortfall: float | None = None  # bytes over the budget (memory refusals)
    at_least: bool = False  # the shortfall is a lower bound (refused before the whole program was compiled)
    seconds: float = 0.0
    per_video_bound: float | None = field(default=None)

    @property
    def fits(self) -> bool:
        return self.status == "fits"

    def host_bytes(self) -> int:
        return max((r.host_bytes for r in self.plan.reports if r.measured), default=0) if self.plan else 0


def _judge(out: Outcome, plan: Plan) -> None:
    """Status, reason and shortfall of a candidate from its (possibly stopped) plan."""
    out.plan = plan
    for r in plan.reports:
        if too_big(r):  # refused before a memory analysis: at least its arguments and temporaries as assigned
            need = r.argument_bytes + r.temp_bytes
            out.status, out.shortfall, out.at_least = "refused (memory)", need - (plan.hbm_bytes or 0), True
            parts = " + ".join(f"{_gib(v)} GiB of {what}" for v, what in
                               ((r.argument_bytes, "arguments"), (r.temp_bytes, "temporaries")) if v)
            out.reason = (f"{r.name} needs at least {_gib(need)} GiB per chip ({parts}), budget "
                          f"{_gib(plan.hbm_bytes or 0)} GiB; "
                          + ("not compiled" if not r.temp_bytes else r.error[r.error.rindex("(") + 1:-1]))
            return
        if not r.ok:
            out.status, out.reason = "failed", f"{r.name} did not compile: {r.error}"
            return
        if plan.hbm_bytes and r.measured and r.peak_bytes > plan.hbm_bytes:
            out.status, out.shortfall = "refused (memory)", r.peak_bytes - plan.hbm_bytes
            out.reason = (f"{r.name} {'is assigned' if r.assigned else 'peaks at'} {_gib(r.peak_bytes)} GiB per chip"
                          f"{' of HBM' if r.assigned else ''}, budget {_gib(plan.hbm_bytes)} GiB")
            return
        if plan.host_budget and r.measured and r.host_bytes > plan.host_budget:
            out.status, out.shortfall = "refused (host)", r.host_bytes - plan.host_budget
            out.reason = (f"{r.name} keeps {r.host_bytes / 2**30:.2f} GiB per chip in host memory, budget "
                          f"{plan.host_budget / 2**30:.1f} GiB")
            return
    out.status = "fits"
    top = max((r for r in plan.reports if r.measured), key=lambda r: r.peak_bytes, default=None)
    if top is not None:
        out.reason = (f"largest {'HBM assigned' if top.assigned else 'peak'} {_gib(top.peak_bytes)} GiB per chip "
                      f"({top.name})")


def rank_key(out: Outcome) -> tuple:
    """Best first: fewest host bytes per chip, largest global batch, smallest predicted step time per video."""
    return (round(out.host_bytes() / 2**20), -out.batch,
            out.per_video_bound if out.per_video_bound is not None else float("inf"))


def search(plan_config, config, topology: str, devices: int, *, frames: int, height: int, width: int,
           model: str | None = None, hbm_gib: float | None = None, only: tuple[str, ...] = (),
           vary: tuple[str, ...] = tuple(LEVERS), skip: bool = True, full: bool = False, jobs: int = 1,
           mesh_of=None, log=print) -> list[Outcome]:
    """Plan every candidate mesh of ``topology`` (``devices`` chips) as far as needed (see the module docstring)
    with ``plan_config`` (``commands.plan.plan_config``): each program only as far as the compiler's buffer
    assignment, or with ``full`` to the end (XLA's memory analysis). ``jobs`` candidates are planned at once, each
    in a process of its own (the compile up to buffer assignment runs on one core); ``mesh_of(spec)`` gives the
    Mesh a fitting outcome's prediction table uses. Returns the outcomes in compile order."""
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    from vdot_jax.errors import VdotError
    from vdot_jax.sources import model_arch
    from vdot_jax.train.config import ConfigError
    from vdot_jax.train.plan import latent_grid

    probe = copy.deepcopy(config)
    if model:
        probe.model.teacher, probe.model.generator, probe.model.preset = "", "", model
    arch = model_arch(probe)
    f, h, w = latent_grid(config, frames, height, width)
    pt, ph, pw = arch.patch_size
    tokens = (f // pt) * (h // ph) * (w // pw)
    remats = LEVERS["remat"] if "remat" in vary else (str(config.model.remat),)
    opts = LEVERS["opt_state_memory"] if "opt_state_memory" in vary else (str(config.mesh.opt_state_memory),)
    cands = candidates(devices, arch.num_heads, tokens, remats, opts)
    order = only or tuple(p for p in PRIORITY if p in phase_names(config) + (BATCH_SAMPLER, "teacher_denoise_cfg",
                                                                             "student_denoise_4"))
    if log:
        log(f"search: {len(cands)} candidates on {topology} ({devices} devices; {arch.num_heads} heads, {tokens} "
            f"video tokens; remat {'/'.join(remats)}, opt_state_memory {'/'.join(opts)}); each compiles "
            f"{', '.join(order)} in that order{'' if full else ' as far as buffer assignment'} and stops at the "
            f"first that does not fit; {jobs} at a time")
    kw = dict(frames=frames, height=height, width=width, model=model, log=None, only=order, hbm_gib=hbm_gib,
              stop_at_refusal=True, assign_only=not full)
    outcomes = [Outcome(c) for c in cands]
    pool = _Inline() if jobs <= 1 else _processes(jobs)
    running: dict = {}  # future -> (index, start time)
    queue = list(range(len(cands)))
    try:
        while queue or running:
            while queue and len(running) < max(jobs, 1):
                i = queue.pop(0)
                out = outcomes[i]
                worse = next((o.candidate for o in outcomes
                              if skip and o.status == "refused (memory)" and out.candidate.needs_at_least(o.candidate)),
                             None)
                if worse is not None:
                    out.status, out.reason = "skipped", f"needs at least the memory of refused {worse.describe()}"
                    _report(log, i, out, len(cands))
                    continue
                job = pool.submit(plan_candidate, plan_config, config, topology, out.candidate, kw)
                running[job] = (i, time.time())
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                i, t0 = running.pop(fut)
                out = outcomes[i]
                try:
                    out.batch, plan = fut.result()
                except (ConfigError, VdotError, ValueError) as e:
                    out.status, out.reason = "failed", str(e).splitlines()[0][:300]
                except BrokenProcessPool:
                    raise VdotError(f"a search worker ended without a result while planning "
                                    f"{out.candidate.describe()} (killed for memory?); search with fewer at a time "
                                    "(--jobs 1)") from None
                else:
                    _judge(out, plan)
                    if out.fits:
                        out.mesh = mesh_of(out.candidate.mesh) if mesh_of else None
                        bounds = [predicted(plan, r) for r in plan.reports if r.name in phase_names(config)]
                        if bounds and all(b is not None for b in bounds):
                            out.per_video_bound = sum(b.seconds for b in bounds) / max(out.batch, 1)
                out.seconds = time.time() - t0
                _report(log, i, out, len(cands))
    finally:
        _stop(pool)
    return outcomes


def plan_candidate(plan_config, config, topology: str, cand: Candidate, kw: dict):
    """(global batch, Plan) of one candidate: ``config`` with its levers, planned on its mesh (in a worker)."""
    cfg = copy.deepcopy(config)
    cfg.model.remat, cfg.mesh.opt_state_memory = cand.remat, cand.opt_state_memory
    run, plan = plan_config(cfg, topology, cand.mesh, **kw)
    return run.batch_size, plan


def _report(log, i: int, out: Outcome, n: int) -> None:
    if log:
        log(f"[{i + 1}/{n}] {out.candidate.describe()}: {out.status}{': ' + out.reason if out.reason else ''} "
            f"({out.seconds:.0f} s)")
        for r in (out.plan.reports if out.plan else ()):
            log(f"    {r.line()}")


class _Inline:
    """An executor that runs each job when it is submitted (one job at a time, in this process)."""

    def submit(self, fn, *args):
        from concurrent.futures import Future

        fut = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 -- handed to the caller through the future, as a pool does
            fut.set_exception(e)
        return fut

    def shutdown(self, **_) -> None:
        pass


def _processes(jobs: int):
    """``jobs`` worker processes, started fresh (spawn: a forked JAX process is not safe)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"))


def _stop(pool) -> None:
    """Cancel what has not started and end the workers now (an interrupted search must not wait for a compile)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list((getattr(pool, "_processes", None) or {}).values()):  # ProcessPoolExecutor's workers
        proc.terminate()


def default_jobs(per_job_gib: float = 10.0) -> int:
    """Candidates planned at once by default: one per core, as many as the free memory holds at ``per_job_gib``
    each (a worker planning VACE-14B up to buffer assignment peaked at 5.8 GiB here), at most 4."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) / 2**20 for line in f if line.startswith("MemAvailable"))
    except (OSError, ValueError, StopIteration):
        return 1
    return max(1, min(os.cpu_count() or 1, int(free // per_job_gib), 4))


def summary(outcomes: list[Outcome], topology: str) -> tuple[list[Outcome], str]:
    """(the fitting outcomes best first, one line on the search)."""
    fits = sorted((o for o in outcomes if o.fits), key=rank_key)
    compiled = sum(o.status != "skipped" for o in outcomes)
    head = (f"{len(fits)} of {len(outcomes)} candidates fit {topology} ({compiled} compiled, "
            f"{len(outcomes) - compiled} skipped as needing at least the memory of a refused one)")
    if fits:
        return fits, head
    refused = [o for o in outcomes if o.shortfall is not None]
    if not refused:
        return fits, head + "; none was refused for memory (see the failures above)"
    best = min(refused, key=lambda o: o.shortfall)
    return fits, (head + f"; the closest, {best.candidate.describe()}, is {'at least ' if best.at_least else ''}"
                  f"{_gib(best.shortfall)} GiB over: "
                  f"{best.reason}")
