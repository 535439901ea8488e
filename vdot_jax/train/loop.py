"""``vdot train``: config -> mesh -> models -> data -> jitted steps -> checkpoints, in one pass.

    from vdot_jax.train.loop import train, restore_model
    summary = train(config, "runs/x")                 # resumes from runs/x/checkpoints automatically
    summary = train(config, "runs/x", stop_after=10)  # run at most 10 steps now (then checkpoint and return)
    model = restore_model("runs/x", ema=True)        # the trained generator (vdot) or model (flow) as a WanModel

**Modes.** ``config.mode = "vdot"``: the Distiller (``vdot_jax.distill.steps``) on generator, critic (trunk + GAN
head) and frozen teacher; ``"flow"``: ``vdot_jax.train.flow.FlowTrainer`` on one model (e.g. the toy teacher).

**Models** (found and loaded by ``vdot_jax.sources``). ``model.teacher`` is a converted model directory or a training
workdir (its latest checkpoint: the generator in vdot runs, the model in flow runs; EMA with ``model.teacher_ema``);
without one, ``model.preset`` / ``model.arch`` give an architecture initialised at random from ``model.init_seed``.
The generator starts as a float32 copy of the teacher or from ``model.generator`` (directory or workdir; a
text-to-video generator for a VACE teacher replaces the teacher's main blocks, the release's stage 2 init). The
critic's trunk is a float32 copy of the teacher, its GAN head is fresh. Every parameter is created or restored
directly in its shard (logical rules of ``vdot_jax.parallel``); the start-up log has the sharding table and each
compiled phase's memory.

**Resume.** If ``WORKDIR/checkpoints`` holds a checkpoint, the state, data iterator and bad-sample record are
restored into this run's shardings (any mesh or device count) and training continues at its step -- exactly:
the same mesh gives bit-identical losses and parameters to an uninterrupted run. A workdir written by an
incompatible config is refused before anything in it is written.

**Stopping.** SIGTERM (preemption) is honoured at the next phase boundary (every host agrees on which): the
phases of the current step that have run are kept, the rest wait for the resume. The state saved is the one at
that boundary, with the data iterator positioned before the step's batch and the names of the phases done, so a
resume re-reads the same batch, runs only the remaining phases and continues bit for bit (when the last completed
step is already saved, the partial step is dropped instead and nothing new is written). It returns
``preempted=True`` (the CLI exits 0). Checkpoints come every ``train.checkpoint_every`` steps and, with
``train.checkpoint_every_minutes``, whenever that many minutes have passed since the last save.
``train.max_nonfinite`` steps in a row with a skipped update, or more than ``data.max_bad`` distinct
unreadable samples, stop with ``TrainingError`` / ``DataError`` (one clear sentence).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding

from vdot_jax.distill.critic import Critic
from vdot_jax.models.attention import resolve
from vdot_jax.errors import VdotError
from vdot_jax.models.config import Runtime, WanConfig
from vdot_jax.models.wan import WanModel
from vdot_jax.parallel.distributed import batch_sharding, global_batch, host_rows
from vdot_jax.parallel.logical import DEFAULT_RULES, activate, spec_for
from vdot_jax.parallel.mesh import describe, make_mesh
from vdot_jax.parallel.sharding import (HOST_FIELDS, check_replication, compile_program, mesh_compiler_options,
                                        device_memory_limit, in_host_memory, init_sharded, model_shardings,
                                        sharding_stats, sharding_table)
from vdot_jax.sources import load_transformer, model_arch, source_arch
from vdot_jax.train import checkpoint as ckpt
from vdot_jax.train.config import ConfigError, validate
from vdot_jax.train.paths import local_dir, workdir_path
from vdot_jax.train.update import state_in_host
from vdot_jax.weights.params import assign, flat_state


class TrainingError(VdotError, RuntimeError):
    """Training cannot go on (the message says why); the last checkpoint is intact."""


# ----------------------------------------------------------------------------- the run's static parts


def runtime_of(config) -> Runtime:
    return Runtime(dtype=config.model.dtype, attention=config.model.attention, remat=config.model.remat,
                   timestep_features_dtype=config.model.get("timestep_features_dtype", "float32"),
                   residual_dtype=config.model.get("residual_dtype", "float32"))


@dataclass
class Run:
    """Everything static about a run: mesh, models (abstract), trainer, shardings, data layout."""

    config: Any
    mesh: Any
    rules: dict
    arch: WanConfig
    runtime: Runtime
    trainer: Any
    abstract_models: dict  # name -> abstract nnx module
    param_shardings: dict  # name -> {path: NamedSharding}
    field_models: dict  # state field -> model name
    abstract_state: Any  # ShapeDtypeStructs carrying the target shardings
    state_sharding: Any
    batch_size: int
    batch_axes: Any
    batch_shardings: dict = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def with_context(self) -> bool:
        return self.arch.is_vace

    def phases(self, step: int) -> tuple[str, ...]:
        if self.mode == "flow":
            return ("flow",)
        from vdot_jax.distill.steps import phases_for

        return phases_for(step, self.config.ttur, self.config.loss.use_gan)

    def layout(self):
        from vdot_jax.data.pipeline import Layout

        rows = host_rows(self.mesh, self.batch_axes, self.batch_size, jax.process_index())
        return Layout(int(self.config.optim.accumulation), self.batch_size, rows)

    def batch_sharding(self, key: str, ndim: int) -> NamedSharding:
        return batch_sharding(self.mesh, self.batch_axes, ndim)

    def global_batch(self, arrays: dict) -> dict:
        """Host-local numpy [A, b, ...] (this host's rows, ``layout()``) -> global jax arrays [A, B, ...]."""
        return global_batch(arrays, self.layout().host_rows, self.mesh, self.batch_axes, self.batch_size)

    def signature(self) -> dict:
        return ckpt.signature(self.abstract_state)

    def models_meta(self) -> dict:
        d = dataclasses.asdict(self.arch)
        return {"generator": d, "critic": d, "teacher": d} if self.mode == "vdot" else {"model": d}


def make_run_mesh(config):
    devices = jax.devices()
    n = int(config.mesh.num_devices)
    if n:
        if n > len(devices):
            raise ConfigError(f"config.mesh.num_devices is {n} but there are {len(devices)} devices.")
        devices = devices[:n]
    try:
        return make_mesh(config.mesh.ici or None, config.mesh.dcn or None, devices)
    except ValueError as e:
        raise ConfigError(f"config.mesh: {e}") from None


def rules_of(config) -> dict:
    rules = dict(DEFAULT_RULES)
    for k, v in config.mesh.rules.to_dict().items():
        rules[k] = tuple(v) if isinstance(v, (list, tuple)) else ((v,) if v else ())
    return rules


def build(config, mesh=None) -> Run:
    """The static parts of a run; no parameter is materialised."""
    validate(config)
    mesh = mesh if mesh is not None else make_run_mesh(config)
    rules = rules_of(config)
    arch = model_arch(config)
    rt = runtime_of(config)
    rt.attention = resolve(rt.attention, context=int(mesh.shape.get("context", 1)))  # auto: the backend's choice
    seed = int(config.seed)
    if config.mode == "vdot":
        from vdot_jax.distill.steps import Distiller

        g = config.gan
        taps = tuple(g.taps) or None
        teacher = nnx.eval_shape(lambda: WanModel(arch, rngs=nnx.Rngs(0), runtime=rt))
        critic = nnx.eval_shape(lambda: Critic(arch, rngs=nnx.Rngs(0), taps=taps, token_dim=g.token_dim,
                                               num_heads=g.num_heads, ffn_dim=g.get("ffn_dim", 13824), runtime=rt))
        models = {"generator": teacher, "critic": critic, "teacher": teacher}
        trainer = Distiller(teacher, critic, teacher, config)
        gdef, gs = nnx.split(teacher)
        cdef, cs = nnx.split(critic)
        abstract = jax.eval_shape(lambda a, b, c: trainer.init_state(nnx.merge(gdef, a), nnx.merge(cdef, b),
                                                                     nnx.merge(gdef, c), seed, consume=True),
                                  gs, cs, gs)
        field_models = {"generator": "generator", "generator_opt": "generator", "ema": "generator",
                        "critic": "critic", "critic_opt": "critic", "teacher": "teacher"}
    else:
        from vdot_jax.train.flow import FlowTrainer

        model = nnx.eval_shape(lambda: WanModel(arch, rngs=nnx.Rngs(0), runtime=rt))
        models = {"model": model}
        trainer = FlowTrainer(model, config)
        mdef, ms = nnx.split(model)
        abstract = jax.eval_shape(lambda s: trainer.init_state(nnx.merge(mdef, s), seed, consume=True), ms)
        field_models = dict(FlowTrainer.state_models)
    pshard = {name: model_shardings(m, mesh, rules) for name, m in models.items()}
    state_sharding = ckpt.state_shardings(abstract, field_models, pshard, mesh)
    if state_in_host(config):
        state_sharding = in_host_memory(state_sharding, HOST_FIELDS)
    if config.mesh.get("teacher_memory", "device") == "host":
        state_sharding = in_host_memory(state_sharding, ("teacher",))
    abstract = ckpt.abstract_with_shardings(abstract, state_sharding)

    d = config.data
    batch_shards = 1
    for axis in ("data", "fsdp"):
        batch_shards *= int(mesh.shape.get(axis, 1))
    b = int(d.batch_size) if int(d.batch_size) > 0 else int(d.per_device_batch) * batch_shards
    spec = spec_for((b,), ("batch",), rules, dict(mesh.shape))
    return Run(config=config, mesh=mesh, rules=rules, arch=arch, runtime=rt, trainer=trainer,
               abstract_models=models, param_shardings=pshard, field_models=field_models, abstract_state=abstract,
               state_sharding=state_sharding, batch_size=b, batch_axes=spec[0])


def init_state(run: Run):
    """A fresh train state, every parameter created or loaded in its shard."""
    c, mesh, rules, arch, rt = run.config, run.mesh, run.rules, run.arch, run.runtime
    m = c.model
    copy = jax.jit(lambda t: jax.tree.map(lambda a: a.astype(jnp.float32) + 0, t))  # fresh buffers, same shardings

    def teacher_model():
        if m.teacher:
            model = load_transformer(m.teacher, "float32", runtime=rt, ema=bool(m.teacher_ema),
                                     shardings=run.param_shardings["teacher" if c.mode == "vdot" else "model"])
            if model.cfg != arch:
                raise ConfigError(f"the model at {m.teacher} is {model.cfg.describe()}, the config expects "
                                  f"{arch.describe()}.")
            return model
        model = init_sharded(lambda: WanModel(arch, rngs=nnx.Rngs(int(m.init_seed)), runtime=rt), mesh, rules)
        if arch.is_vace and not m.vace_zero_init:
            _draw_vace_projections(model, int(m.init_seed))
        return model

    if c.mode == "flow":
        model = teacher_model()
        state = run.trainer.init_state(model, seed=int(c.seed), consume=True, shardings=run.state_sharding)
        return jax.device_put(state, run.state_sharding)

    teacher = teacher_model()
    t_flat = flat_state(teacher)
    generator = nnx.eval_shape(lambda: WanModel(arch, rngs=nnx.Rngs(0), runtime=rt))
    if not m.generator:
        gen_flat = copy(t_flat)  # release stage 1: the generator starts as the teacher
    else:
        src_arch = source_arch(m.generator)
        shardings = run.param_shardings["generator"]
        if src_arch == arch:
            gen_flat = flat_state(load_transformer(m.generator, "float32", runtime=rt, shardings=shardings,
                                                   ema=bool(m.generator_ema)))
        else:
            main = lambda a: dataclasses.replace(a, vace_layers=(), vace_in_channels=96)  # noqa: E731
            if src_arch.is_vace or not arch.is_vace or main(src_arch) != main(arch):
                raise ConfigError(f"the generator at {m.generator} is {src_arch.describe()}; it must be the teacher's "
                                  f"architecture ({arch.describe()}) or its text-to-video main part.")
            main_part = flat_state(load_transformer(m.generator, "float32", runtime=rt, shardings=shardings,
                                                    ema=bool(m.generator_ema)))
            vace_part = copy({k: v for k, v in t_flat.items() if k not in main_part})
            gen_flat = {**vace_part, **main_part}  # main blocks from the generator, VACE blocks from the teacher
    assign(generator, gen_flat)
    g = c.gan
    critic = init_sharded(lambda: Critic(arch, rngs=nnx.Rngs(int(m.init_seed) + 1), taps=tuple(g.taps) or None,
                                         token_dim=g.token_dim, num_heads=g.num_heads,
                                         ffn_dim=g.get("ffn_dim", 13824), runtime=rt), mesh, rules)
    assign(critic.model, copy(t_flat))
    state = run.trainer.init_state(generator, critic, teacher, seed=int(c.seed), consume=True,
                                   shardings=run.state_sharding)
    return jax.device_put(state, run.state_sharding)


def _draw_vace_projections(model: WanModel, seed: int) -> None:
    """Replace VACE's zero-initialised projections (context input, per-block hint output) by small random ones,
    so that a model trained from scratch uses its context from the start (``model.vace_zero_init = False``)."""
    flat = flat_state(model)
    keys = [("vace_proj_in", "kernel"), ("vace_blocks", "proj_out", "kernel")]
    new = {}
    for i, k in enumerate(keys):
        v = flat[k]
        std = 0.5 / np.sqrt(v.shape[-2])
        draw = jax.jit(lambda key: std * jax.random.normal(key, v.shape, v.dtype), out_shardings=v.sharding)
        new[k] = draw(jax.random.fold_in(jax.random.key(seed), 1000 + i))
    assign(model, {**flat, **new})


# ----------------------------------------------------------------------------- compiled phases


class Phases:
    """Each phase compiled ahead of time once per batch shape, with its memory report."""

    def __init__(self, run: Run, log: Callable[[str], None]):
        self.run, self.log = run, log
        self.compiled: dict = {}

    def compile(self, name: str, state, batch: dict):
        """(compiled, CompileReport or None when cached) of phase ``name`` for this batch's shapes."""
        key = (name, tuple((k, v.shape) for k, v in sorted(batch.items())))
        fn, report = self.compiled.get(key), None
        if fn is None:
            bsh = {k: self.run.batch_sharding(k, v.ndim) for k, v in batch.items()}
            jitted = self.run.trainer.phase(name, self.run.state_sharding, bsh)
            fn, report = compile_program(jitted, state, batch, name=f"phase {name}", mesh=self.run.mesh,
                                         rules=self.run.rules, log=self.log,
                                         compiler_options=mesh_compiler_options(self.run.config.mesh, self.run.mesh))
            self.compiled[key] = fn
        return fn, report

    def __call__(self, name: str, state, batch: dict):
        return self.compile(name, state, batch)[0](state, batch)

    def check_fit(self, state, batch: dict) -> None:
        """Before the first step on an accelerator: compile every phase of the run (as ``vdot plan`` does) and
        refuse to start when one needs more memory per device than the device has. Without a device memory
        limit (CPU) phases compile when first run."""
        limit = device_memory_limit()
        if not limit:
            return
        from vdot_jax.train.plan import phase_names

        for name in phase_names(self.run.config):
            _, report = self.compile(name, state, batch)
            if report is not None and report.measured and report.peak_bytes > limit:
                raise TrainingError(
                    f"phase {name} needs {report.peak_bytes / 2**30:.2f} GiB per device but a device has "
                    f"{limit / 2**30:.2f} GiB; use more fsdp/context, remat, or a smaller batch (vdot plan shows "
                    "each program's memory).")


# ----------------------------------------------------------------------------- signals


class _StopFlag:
    """SIGTERM (and SIGINT when asked) -> a flag the loop checks at every phase boundary. A second SIGINT aborts at once
    (KeyboardInterrupt), for a user who does not want to wait for the step and the save."""

    def __init__(self, catch_int: bool = False):
        self.set = False
        self.signal = None
        self.at = 0.0  # when the signal came (time.time())
        self._old = {}
        if threading.current_thread() is not threading.main_thread():
            return
        sigs = [signal.SIGTERM] + ([signal.SIGINT] if catch_int else [])
        for s in sigs:
            self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt
        if not self.set:
            self.at = time.time()
        self.set = True
        self.signal = signal.Signals(signum).name

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def _host_sum(values: np.ndarray) -> np.ndarray:
    """Sum a small int vector over processes (consensus for stop decisions)."""
    if jax.process_count() == 1:
        return values
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).reshape(jax.process_count(), -1).sum(0)


# ----------------------------------------------------------------------------- the loop


def _metrics_to_host(phase_metrics: list[tuple[str, dict]]) -> dict:
    out = {}
    fetched = jax.device_get([m for _, m in phase_metrics])
    for (name, _), m in zip(phase_metrics, fetched):
        for k, v in m.items():
            key = f"{name}/{k}" if k in ("grad_norm", "finite", "lr") else k
            out[key] = float(np.asarray(v))
    return out


def _config_json(config) -> dict:
    return json.loads(config.to_json_best_effort())


def train(config: ml_collections.ConfigDict, workdir, *, stop_after: int | None = None, sampler: Any = "default",
          catch_sigint: bool = False) -> dict:
    """Train (or resume) in ``workdir``; returns a summary dict (module docstring).

    ``stop_after``: run at most this many steps in this call, then checkpoint and return. ``sampler``: "default"
    (``vdot_jax.train.samples.DefaultSampler`` when ``sample.every > 0``), None, or a callable taking a
    ``SampleContext``. ``catch_sigint``: treat Ctrl-C like SIGTERM (save and return)."""
    t_start = time.time()
    workdir = workdir_path(workdir)  # local, or gs:// (never a local folder named "gs:")
    ckpt.check_workdir(workdir)  # before any work: a folder that is not a training workdir is refused untouched
    config = ml_collections.ConfigDict(config.to_dict())
    if config.train.compile_cache:
        jax.config.update("jax_compilation_cache_dir", str(config.train.compile_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    run = build(config)
    primary = jax.process_index() == 0

    # an existing workdir is checked before anything in it is written
    found = ckpt.latest_meta(workdir)
    if found is not None:
        ckpt.check_compatible(workdir, found[1], run.signature(), config.mode)

    with contextlib.ExitStack() as stack:
        checkpointer = ckpt.Checkpointer(workdir, keep=int(config.train.keep),
                                         async_save=bool(config.train.async_checkpoint))
        stack.callback(checkpointer.close)
        data_state, bad_rows, partial = None, {}, None
        if found is not None:
            step0, state, data_state, _ = checkpointer.restore_intact(run.abstract_state)
            bad_rows = {int(k): v for k, v in data_state.pop("bad_rows", {}).items()}
            partial = data_state.pop("partial", None)
        else:
            step0 = 0
            state = init_state(run)
        total = int(config.train.steps)
        logger = _make_logger(workdir, primary, config, total, step0, resume_from=step0 if found else None)
        stack.callback(logger.close)
        stack.callback(logger.plot)  # runs before close (last in, first out)
        log = logger.message
        if primary:
            (workdir / "config.json").write_text(json.dumps(_config_json(config), indent=2))
        resumed = f"resumed at step {step0}" + (f" (phases {', '.join(partial['phases'])} of the next step were done)"
                                                 if partial else "")
        log(f"{resumed if found else 'started'}: mode {config.mode}, {run.arch.describe()}, "
            f"mesh {describe(run.mesh)}, {jax.process_count()} process(es), global batch {run.batch_size} x "
            f"{config.optim.accumulation} micro-batches")
        _sharding_report(run, log)

        from vdot_jax.data.pipeline import DataPipeline

        pipeline = DataPipeline(config, run.layout(), with_context=run.with_context, start_step=step0,
                                state=data_state)
        stack.callback(pipeline.close)
        sampler = _resolve_sampler(sampler, config, log)
        stop = _StopFlag(catch_sigint)
        stack.callback(stop.restore)
        loop = _Loop(run, config, state, pipeline, checkpointer, logger, sampler, workdir, bad_rows, step0, partial)
        t_loop = time.time()
        stopped = None
        while loop.step < total:
            if stop_after is not None and loop.ran >= stop_after:
                stopped = "stop_after"
                break
            if loop.run_step(stop):
                stopped = stop.signal or "SIGTERM"
                break
        loop.save()
        checkpointer.wait()
        if stopped not in (None, "stop_after"):
            log(f"{stopped} received: {loop.stop_note}; checkpoint written {time.time() - stop.at:.1f} s after the "
                "signal (resume with the same command)")
        log(f"done: step {loop.step}/{total} ({loop.ran} run now) in {time.time() - t_start:.1f} s; checkpoint at "
            f"step {checkpointer.last_saved}; {len(bad_rows)} unreadable samples"
            + (f"; stopped by {stopped}" if stopped else ""))

    skipped = loop.state.skipped
    return {
        "workdir": str(workdir), "mode": config.mode, "start_step": step0, "step": loop.step, "steps_run": loop.ran,
        "total_steps": total, "resumed": found is not None, "preempted": stopped not in (None, "stop_after"),
        "stopped": stopped, "skipped_updates": int(np.asarray(skipped)) if skipped.is_fully_replicated else None,
        "bad_samples": len(bad_rows), "bad_files": list(bad_rows.values()), "last_metrics": loop.last_metrics,
        "checkpoint_step": checkpointer.last_saved, "wall_s": time.time() - t_start, "loop_s": time.time() - t_loop,
        "compilations": dict(run.trainer.trace_counts), "mesh": describe(run.mesh), "batch_size": run.batch_size,
    }


class _Loop:
    """The mutable part of a run: state, step counters, bad samples; one ``run_step`` per training step."""

    def __init__(self, run: Run, config, state, pipeline, checkpointer, logger, sampler, workdir: epath.Path,
                 bad_rows: dict, step0: int, partial: dict | None = None):
        self.run, self.config, self.state, self.pipeline = run, config, state, pipeline
        self.checkpointer, self.logger, self.sampler, self.workdir = checkpointer, logger, sampler, workdir
        self.bad_rows, self.step0, self.step, self.ran = bad_rows, step0, step0, 0
        self.phases = Phases(run, logger.message)
        self.nonfinite_run = 0
        self.last_metrics: dict = {}
        self.partial = partial  # phases of step ``step0`` run before a mid-step stop: {"phases", "metrics"}
        if partial and tuple(run.phases(step0)[:len(partial["phases"])]) != tuple(partial["phases"]):
            raise ConfigError(f"the checkpoint at step {step0} was saved after phases {', '.join(partial['phases'])} "
                              f"of the next step, but this config runs {', '.join(run.phases(step0))} there (another "
                              "ttur or loss.use_gan); resume with the config that wrote it.")
        self.last_save_time = time.time()
        self.stop_note = ""

    def run_step(self, stop: _StopFlag) -> bool:
        """One training step (all its phases), logging, checkpointing, samples; True when a stop signal came."""
        run, config, log = self.run, self.config, self.logger.message
        t0 = time.time()
        data_before = self.pipeline.get_state()  # a mid-step stop saves this: the resume re-reads this step's batch
        arrays, info = next(self.pipeline)
        t_data = time.time() - t0
        for row, msg in info["bad"]:
            if row not in self.bad_rows:
                self.bad_rows[row] = msg
                log(f"skipped an unreadable sample ({len(self.bad_rows)} so far): {msg}", warning=True)
        if _host_sum(np.array([len(self.bad_rows)], np.int64))[0] > int(config.data.max_bad):
            shown = "; ".join(list(self.bad_rows.values())[-3:])
            raise _data_error(f"more than config.data.max_bad={config.data.max_bad} training samples were "
                              f"unreadable ({len(self.bad_rows)} seen by this host); stopping. Last ones: {shown}")
        if self.step == self.step0:
            _check_batch(run, arrays)
        batch = run.global_batch(arrays)
        if self.step == self.step0:
            with activate(run.mesh, run.rules):
                self.phases.check_fit(self.state, batch)
        phase_metrics, times = [], {}
        done = tuple(self.partial["phases"]) if self.partial else ()
        for name in run.phases(self.step)[len(done):]:
            # every host stops at the same boundary (the all-gather runs outside the phases' mesh context)
            if _host_sum(np.array([int(stop.set)], np.int64))[0]:
                self._stop_mid_step(done + tuple(n for n, _ in phase_metrics), phase_metrics, data_before)
                return True
            tp = time.time()
            with activate(run.mesh, run.rules):
                self.state, m = self.phases(name, self.state, batch)
            if config.train.time_phases:
                jax.block_until_ready(m)
                times[f"time/{name}"] = time.time() - tp
            phase_metrics.append((name, m))
        with activate(run.mesh, run.rules):
            self.state = self.state.replace(step=self.state.step + 1)
        self.step += 1
        self.ran += 1
        step = self.step
        metrics = _metrics_to_host(phase_metrics)
        if self.partial:  # the phases run before the stop: the resumed step logs as one
            metrics = {**self.partial["metrics"], **metrics}
            self.partial = None
        dt = time.time() - t0
        metrics.update(times)
        metrics.update({"time/step": dt, "time/data": t_data, "bad_samples": len(self.bad_rows),
                        "throughput/samples_per_s": run.batch_size * int(config.optim.accumulation) / max(dt, 1e-9)})
        finite = all(v > 0 for k, v in metrics.items() if k.endswith("/finite"))
        self.nonfinite_run = 0 if finite else self.nonfinite_run + 1
        if not finite:
            log(f"step {step}: non-finite loss or gradient, update skipped ({self.nonfinite_run} in a row)",
                warning=True)
        self.last_metrics = metrics
        if step % max(int(config.train.log_every), 1) == 0 or step == int(config.train.steps):
            self.logger.log(step, metrics)
        self.logger.advance(step, {k: v for k, v in metrics.items() if k.endswith("_loss")})

        minutes = float(config.train.checkpoint_every_minutes)
        due = minutes > 0 and jax.process_index() == 0 and time.time() - self.last_save_time >= 60 * minutes
        flags = _host_sum(np.array([int(stop.set), int(self.nonfinite_run >= int(config.train.max_nonfinite)),
                                    int(due)], np.int64))  # process 0's clock decides the timed save for all
        if flags[1]:
            raise TrainingError(f"{config.train.max_nonfinite} steps in a row had a non-finite loss or gradient (last "
                                f"at step {step}); stopping. The last checkpoint (step "
                                f"{self.checkpointer.last_saved}) is intact; lower the learning rate or check the "
                                "data.")
        if step % int(config.train.checkpoint_every) == 0 or step == int(config.train.steps) or flags[0] or flags[2]:
            self.save()
        if flags[0]:
            self.stop_note = f"saved step {step}"
        if flags[0]:  # stopping: no sample videos or plots (minutes at 14B) before the exit
            return True
        every = int(config.sample.every)
        if self.sampler is not None and every > 0 and step % every == 0:
            _samples(self.sampler, run, step, self.state, arrays, info, self.workdir, log)
        if int(config.train.plot_every) > 0 and step % int(config.train.plot_every) == 0:
            self.logger.plot()
        return False

    def save(self) -> None:
        if _save(self.checkpointer, self.run, self.step, self.state, self.pipeline.get_state(), self.bad_rows,
                 self.config):
            self.last_save_time = time.time()

    def _stop_mid_step(self, done: tuple, phase_metrics: list, data_before: dict) -> None:
        """A stop before the phases of step ``self.step + 1`` that follow ``done``: save the state at this boundary
        (with the data iterator before the step's batch), unless the last completed step is saved already; then
        the partial step is dropped (the resume redoes at most one step)."""
        step, names = self.step, ", ".join(done)
        if self.checkpointer.last_saved is not None and self.checkpointer.last_saved >= step:
            new = ", ".join(n for n, _ in phase_metrics)  # run since the saved state; the resume runs them again
            self.stop_note = f"step {step} is saved" + (f"; phases {new} of step {step + 1} are dropped" if new else "")
            return
        partial = None
        if done:
            metrics = dict(self.partial["metrics"]) if self.partial else {}
            metrics.update(_metrics_to_host(phase_metrics))
            partial = {"phases": list(done), "metrics": metrics}
        _save(self.checkpointer, self.run, step, self.state, data_before, self.bad_rows, self.config, partial)
        self.stop_note = f"saved step {step}" + (f" plus phases {names} of step {step + 1}" if done else "")


def _resolve_sampler(sampler, config, log):
    if sampler != "default":
        return sampler
    if int(config.sample.every) <= 0:
        return None
    from vdot_jax.train.samples import default_sampler

    sampler = default_sampler(config)
    why = sampler.available()
    if why:
        log(f"sample videos are off: {why}", warning=True)
        return None
    return sampler


def _data_error(msg: str):
    from vdot_jax.data.pipeline import DataError

    return DataError(msg)


def _make_logger(workdir, primary, config, total, step0, resume_from):
    from vdot_jax.train.logging import MetricLogger

    return MetricLogger(workdir, enabled=primary, total_steps=total, start_step=step0,
                        progress=bool(config.train.progress), resume_from=resume_from)


def _save(checkpointer, run: Run, step: int, state, data_state: dict, bad_rows: dict, config,
          partial: dict | None = None) -> bool:
    """Save; ``partial``: the phases of step ``step + 1`` already in ``state`` (a mid-step stop) and their metrics."""
    data_state = {**data_state, "bad_rows": {str(k): v for k, v in bad_rows.items()}}
    meta = {"mode": config.mode, "signature": run.signature(), "models": run.models_meta(),
            "has_ema": state.ema is not None, "config": _config_json(config), "mesh": describe(run.mesh),
            "process_count": jax.process_count(), "batch_size": run.batch_size}
    if partial:
        data_state["partial"] = partial
        meta["partial_phases"] = partial["phases"]
    return checkpointer.save(step, state, data_state, meta)


def _samples(sampler, run: Run, step: int, state, arrays, info, workdir: epath.Path, log) -> None:
    from vdot_jax.train.samples import SampleContext

    outdir = workdir / "samples" / f"step_{step:06d}"
    t0 = time.time()
    with local_dir(outdir) as local, activate(run.mesh, run.rules):  # video writers need a local folder
        ctx = SampleContext(step=step, state=state, trainer=run.trainer, mode=run.mode, config=run.config,
                            arrays=arrays, info=info, outdir=local)
        sampler(ctx)
    log(f"samples for step {step} written to {outdir} ({time.time() - t0:.1f} s)")


def _check_batch(run: Run, arrays: dict) -> None:
    a = run.arch
    c = arrays["latents"].shape[2]
    if c != a.in_channels:
        raise ConfigError(f"the data's latents have {c} channels but the model takes {a.in_channels} "
                          f"(config.model.arch.in_channels / the encoder's VAE do not match).")
    d = arrays["text"].shape[-1]
    if d != a.text_dim:
        raise ConfigError(f"the data's text embeddings have width {d} but the model's text_dim is {a.text_dim}.")
    if a.is_vace and arrays["context"].shape[2] != a.vace_in_channels:
        raise ConfigError(f"the data's VACE context has {arrays['context'].shape[2]} channels but the model takes "
                          f"{a.vace_in_channels} (vace_in_channels).")


def _sharding_report(run: Run, log) -> None:
    if run.mesh.size == 1:
        return
    for name, model in run.abstract_models.items():
        if name == "teacher" and run.mode == "vdot":
            continue
        stats = sharding_stats(flat_state(model), run.param_shardings[name])
        log(f"{name}: {stats.total_bytes / 2**30:.3f} GiB of parameters, {stats.per_device_bytes / 2**30:.3f} GiB "
            f"per device, {100 * stats.replicated_fraction:.1f}% of bytes replicated (table in train.log)")
        log(f"{name} parameter sharding:\n" + sharding_table(stats, max_rows=40), console=False)
        check_replication(stats, float(run.config.mesh.max_replicated))


# ----------------------------------------------------------------------------- reading results back


def restore_state(workdir, *, step: int | None = None, mesh=None):
    """(Run, state) of a workdir's checkpoint (default latest), on ``mesh`` (default: one device)."""
    found = ckpt.latest_meta(workdir)
    if found is None:
        raise ConfigError(f"{workdir} has no finished checkpoint.")
    meta = found[1] if step is None else ckpt.meta_at(workdir, step)
    config = ml_collections.ConfigDict(meta["config"])
    # the architecture as recorded, so the model sources of the run (teacher directory, ...) are not needed
    arch = meta["models"]["generator" if meta["mode"] == "vdot" else "model"]
    config.model.teacher, config.model.generator, config.model.preset = "", "", ""
    config.model.arch = ml_collections.ConfigDict(arch)
    if mesh is None:
        config.mesh.ici, config.mesh.dcn, config.mesh.num_devices = "", "", 1
    run = build(config, mesh)
    checkpointer = ckpt.Checkpointer(workdir, read_only=True)
    try:
        if step is None:
            _, state, _, _ = checkpointer.restore_intact(run.abstract_state)
        else:
            state, _, _ = checkpointer.restore(step, run.abstract_state)
    finally:
        checkpointer.close()
    return run, state


def restore_model(workdir, *, ema: bool = False, which: str | None = None, step: int | None = None,
                  mesh=None) -> WanModel | Critic:
    """The trained network of a workdir as a module: the generator (vdot; ``which="critic"`` or ``"teacher"``
    for the others) or the model (flow); ``ema=True`` takes the EMA when one was kept."""
    run, state = restore_state(workdir, step=step, mesh=mesh)
    if run.mode == "flow":
        return run.trainer.model(state, ema=ema)
    which = which or "generator"
    if which == "generator":
        return run.trainer.generator(state, ema=ema)
    if which == "critic":
        return nnx.merge(run.trainer.critic_def, state.critic)
    if which == "teacher":  # on the device, also when the run kept it in host memory (mesh.teacher_memory)
        teacher = jax.tree.map(lambda a: jax.device_put(a, a.sharding.with_memory_kind("device")), state.teacher)
        return nnx.merge(run.trainer.teacher_def, teacher)
    raise ValueError(f"which must be generator, critic or teacher, got {which!r}")
