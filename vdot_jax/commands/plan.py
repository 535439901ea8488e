"""``vdot plan``: compile every program of a training config for a real TPU topology on this (CPU) host, and
say per program whether it compiles and fits the chip's memory. GPU meshes are lowered for ``cuda`` instead.

    JAX_PLATFORMS=cpu vdot plan --config configs/wan14b_stage2_vace.py --topology v5p:4x4x4 --mesh fsdp=16,context=4
    vdot plan --config configs/wan1_3b_stage2_vace.py --topology gpu:8 --mesh fsdp=8

Needs libtpu for TPU topologies (``pip install '.[tpu]'``). Architecture only: the teacher's weights need not
exist (with no model directory at ``config.model.teacher``, ``--model PRESET`` names the architecture).

Before compiling it runs the start-up checks of ``vdot_jax.train.preflight`` (each host's batch rows; the run's
paths as the workers reach them, unless ``--model``); ``--check-only`` stops after them. Without ``--mesh`` on a
TPU topology it searches the topology's meshes instead (``vdot_jax.commands.plan_search``). After the memory
table it prints each program's predicted step-time bound (``train.plan.prediction_table``).
"""

from __future__ import annotations

import copy
import os
import re
import sys
import time

GPU_TOPOLOGY = re.compile(r"^(gpu|cuda|h100|h200|a100|b200):(\d+)$")


MAX_GPUS = 1024  # gpu:N stands N host CPU devices in for the GPUs; far more only spends minutes setting them up


def target(topology: str) -> tuple[str, int | None]:
    """("tpu", None) for a TPU topology name, ("cuda", n) for ``gpu:N`` (or h100:N, h200:N, a100:N, b200:N)."""
    m = GPU_TOPOLOGY.match(topology.lower())
    if not m:
        return "tpu", None
    n = int(m.group(2))
    if not 1 <= n <= MAX_GPUS:
        from vdot_jax.commands.common import UserError

        raise UserError(f"--topology {topology}: the GPU count must be at least 1 and at most {MAX_GPUS} (each GPU is "
                        "a host CPU device stand-in when lowering)")
    return "cuda", n


def plan_config(config, topology: str, mesh: str | None, *, frames: int, height: int, width: int,
                model: str | None = None, log=print, keep_text: bool = False, only: tuple[str, ...] = (),
                before_compile=None, hbm_gib: float | None = None, stop_at_refusal: bool = False,
                assign_only: bool = False):
    """Build the run of ``config`` on ``topology`` with ``mesh`` and compile (or lower) all its programs.
    ``before_compile(run)`` runs first (the start-up checks); it returning True stops there (Plan is None).
    ``hbm_gib`` replaces the chip's HBM as the budget a program must fit. ``stop_at_refusal`` stops at the first
    program that does not fit, and counts FLOPs only when all fit (the search); ``assign_only`` compiles TPU
    programs only as far as the compiler's buffer assignment (``train.plan.assign_within``). Returns (run, Plan)."""
    import jax

    from vdot_jax.commands.common import UserError
    from vdot_jax.models.attention import default_dtype, resolve
    from vdot_jax.parallel.chips import chip_of
    from vdot_jax.parallel.mesh import MeshError, describe, hbm_bytes, make_mesh, split_axes
    from vdot_jax.train.config import ConfigError
    from vdot_jax.train.loop import build
    from vdot_jax.train.plan import check, host_budget_bytes, step_flops

    platform, n = target(topology)
    if platform == "tpu":
        devices = _topology_devices(topology)
    else:
        devices = jax.devices("cpu")
        if len(devices) < n:
            raise UserError(f"lowering for {n} GPUs needs {n} host devices; run with "
                             f"XLA_FLAGS=--xla_force_host_platform_device_count={n} (vdot plan sets it itself)")
        devices = devices[:n]
    m = config.model
    if model:
        m.teacher, m.generator, m.preset = "", "", model
    elif m.teacher and not os.path.exists(m.teacher):
        raise ConfigError(f"config.model.teacher {m.teacher} does not exist here; give --model PRESET (e.g. "
                          "wan2.1-vace-1.3b) to plan with that architecture")
    # defaults follow the target, not this host
    gpu = "gpu" if platform == "cuda" else platform
    mesh_spec = mesh if mesh is not None else (config.mesh.ici or None)
    try:
        device_mesh = make_mesh(mesh_spec, config.mesh.dcn or None, devices)
    except MeshError as e:
        raise UserError(f"--mesh {mesh_spec}: {e}") from None
    m.attention = resolve(m.attention, gpu, device_mesh.shape["context"])
    if m.dtype == "auto":
        m.dtype = default_dtype(gpu)
    run = build(config, device_mesh)
    hbm = hbm_bytes(devices[0]) if platform == "tpu" else None
    if hbm_gib is not None:
        hbm = int(hbm_gib * 2**30)
    host = host_budget_bytes(devices[0]) if platform == "tpu" else None
    if log:
        log(f"{run.arch.describe()}; {topology} ({len(devices)} devices, "
            f"{'%.4g GiB HBM each' % (hbm / 2**30) if hbm else 'memory measured only on a GPU'}"
            f"{', host budget %.1f GiB per chip' % (host / 2**30) if host else ''}); mesh "
            f"{describe(device_mesh)}; attention {m.attention}, compute {m.dtype}, remat {m.remat}; global batch "
            f"{run.batch_size} x {config.optim.accumulation} micro-batches; video {frames}x{height}x{width}")
        split = split_axes(device_mesh)
        if split:
            log(f"ICI: {'; '.join(split.values())}. A mesh axis on part of a physical axis shares that ring's links "
                "with another axis and has no wraparound link of its own: its collectives get less bandwidth than "
                "on whole axes (sizes that are products of the topology's axis lengths avoid it)")
    if before_compile is not None and before_compile(run):
        return run, None
    # FLOPs from the same programs with XLA attention, whose matmuls are visible (a kernel's are not)
    counted = copy.deepcopy(config)
    counted.model.attention = "ulysses:xla" if m.attention.startswith("ulysses") else "xla"
    count = lambda names: step_flops(build(counted, device_mesh), frames, height, width, names)  # noqa: E731
    flops = {} if stop_at_refusal else count(only)
    plan = check(run, frames, height, width, hbm_bytes=hbm, platform="cuda" if platform == "cuda" else None,
                 log=log, keep_text=keep_text, only=only, flops=flops, host_budget=host,
                 chip=chip_of(topology, devices[0]), stop_at_refusal=stop_at_refusal, assign_only=assign_only)
    if stop_at_refusal and not plan.failures():  # FLOPs only for a candidate that fits
        flops = count(tuple(r.name for r in plan.reports))
        for r in plan.reports:
            r.step_flops = flops.get(r.name)
    return run, plan


_TOPOLOGIES: dict = {}


def _topology_devices(topology: str) -> list:
    """The devices of a TPU topology, made once per process (the search plans many meshes of one topology)."""
    from vdot_jax.parallel.mesh import topology_devices

    if topology not in _TOPOLOGIES:
        _TOPOLOGIES[topology] = topology_devices(topology)
    return _TOPOLOGIES[topology]


def run(args) -> None:
    if args.check_accelerator:  # before the imports below, which load much more than a config
        return _check_accelerator(args)
    from vdot_jax.commands.common import UserError
    from vdot_jax.errors import VdotError
    from vdot_jax.train.config import ConfigError, apply_overrides, load_config, parse_override_args
    from vdot_jax.train.plan import PREDICTION_NOTE, prediction_table, table

    if not args.topology:
        raise UserError("--topology is required (e.g. v5p:2x2x2 or gpu:8), unless --check-accelerator is given")
    platform, n = target(args.topology)
    if platform == "cuda" and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        # host devices to stand in for the GPUs must exist before JAX starts: run again with them
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip())
        os.execve(sys.executable, [sys.executable, "-m", "vdot_jax.cli", *sys.argv[1:]], env)
    for name in ("frames", "height", "width"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    try:
        config = load_config(args.config)
        apply_overrides(config, parse_override_args(args.extra))
    except ConfigError as e:
        raise UserError(str(e)) from None
    t0 = time.time()
    log = lambda s: print(s, flush=True)  # noqa: E731

    def startup_checks(run) -> bool:
        from vdot_jax.train.preflight import layout_table, preflight

        if args.model:  # an architecture, not this config's run: its paths are not what would be read
            log(layout_table(run))
            log("paths: not checked (--model plans an architecture; plan without it to check the run's paths)")
        else:
            preflight(run, workdir=args.workdir, shared=tuple(args.shared_mount or ()), log=log)
        return args.check_only

    only = tuple(p for p in (args.programs or "").split(",") if p)
    if args.hbm_gib is not None and args.hbm_gib <= 0:
        raise UserError(f"--hbm-gib must be positive, got {args.hbm_gib}")
    vary = tuple(v for v in args.vary.split(",") if v and v != "none")
    from vdot_jax.commands.plan_search import LEVERS

    if args.jobs < 0:
        raise UserError(f"--jobs must be 0 (one per core) or more, got {args.jobs}")
    if set(vary) - set(LEVERS):
        raise UserError(f"--vary takes {', '.join(LEVERS)} or none, got {args.vary}")
    if args.mesh is None and not args.check_only and platform == "tpu":
        return _search(args, config, only, vary, t0, log)
    try:
        run_, plan = plan_config(config, args.topology, args.mesh, frames=args.frames, height=args.height,
                                 width=args.width, model=args.model, log=log, before_compile=startup_checks,
                                 only=only, hbm_gib=args.hbm_gib)
    except (ConfigError, VdotError) as e:
        raise UserError(str(e)) from None
    if plan is None:
        print(f"start-up checks passed in {time.time() - t0:.0f} s (--check-only: nothing compiled)")
        return
    print(table(plan))
    predicted = prediction_table(plan, run_.mesh)
    if predicted:
        print(predicted)
        print(PREDICTION_NOTE)
    if platform == "cuda":
        print("GPU memory is only measured on a GPU: these programs were lowered for cuda (shapes and cuDNN "
              "placement checked), not compiled.")
    print(f"planned {len(plan.reports)} programs in {time.time() - t0:.0f} s")
    bad = plan.failures()
    if bad:
        print(f"vdot plan: error: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
              file=sys.stderr)
        sys.exit(1)


def _check_accelerator(args) -> None:
    """``--check-accelerator TYPE``: the config's mesh (overrides applied) against the chips of one slice of TYPE,
    before renting it (launch/tpu_pod.sh up/run). Loads the config only: no backend, nothing compiled."""
    from vdot_jax.commands.common import UserError
    from vdot_jax.errors import VdotError
    from vdot_jax.parallel.mesh import check_accelerator
    from vdot_jax.train.config import apply_overrides, load_config, parse_override_args

    try:
        config = load_config(args.config)
        apply_overrides(config, parse_override_args(args.extra))
        print(check_accelerator(config.mesh.ici, config.mesh.dcn, args.check_accelerator, args.config))
    except VdotError as e:
        raise UserError(str(e)) from None


def _search(args, config, only, vary, t0, log) -> None:
    """No --mesh: the meshes of the topology that fit, best first (``commands.plan_search``)."""
    from vdot_jax.commands.common import UserError
    from vdot_jax.commands.plan_search import default_jobs, search, summary
    from vdot_jax.errors import VdotError
    from vdot_jax.train.config import ConfigError
    from vdot_jax.train.plan import PREDICTION_NOTE, prediction_table, table

    try:
        from vdot_jax.parallel.mesh import make_mesh

        devices = _topology_devices(args.topology)
        outcomes = search(plan_config, config, args.topology, len(devices),
                          frames=args.frames, height=args.height, width=args.width,
                          model=args.model, hbm_gib=args.hbm_gib, only=only, vary=vary,
                          skip=not args.compile_all, full=args.full,
                          jobs=args.jobs or (1 if args.full else default_jobs()),
                          mesh_of=lambda spec: make_mesh(spec, None, devices), log=log)
    except (ConfigError, VdotError) as e:
        raise UserError(str(e)) from None
    fits, line = summary(outcomes, args.topology)
    for k, o in enumerate(fits, 1):
        bound = f", predicted >= {o.per_video_bound:.1f} s of training step per video" if o.per_video_bound else ""
        print(f"\n#{k} {o.candidate.describe()} (--mesh {o.candidate.mesh}): global batch {o.batch}, up to "
              f"{o.host_bytes() / 2**30:.2f} GiB per chip in host memory{bound}")
        print(table(o.plan))
        predicted = prediction_table(o.plan, o.mesh)
        if predicted:
            print(predicted)
    if fits:
        print(PREDICTION_NOTE)
        if not args.full:
            print(f"\nThese figures stop at the compiler's buffer assignment; for XLA's memory analysis of the whole "
                  f"compile, plan one with --mesh (e.g. --mesh {fits[0].candidate.mesh} --config.model.remat="
                  f"{fits[0].candidate.remat} --config.mesh.opt_state_memory={fits[0].candidate.opt_state_memory}).")
    print(f"\n{line}")
    print(f"searched in {time.time() - t0:.0f} s")
    if not fits:
        print(f"vdot plan: error: no mesh of {args.topology} fits", file=sys.stderr)
        sys.exit(1)


def register(sub) -> None:
    p = sub.add_parser(
        "plan",
        help="plan: compile every program of a training config for a TPU topology (or lower for GPUs) and check "
             "that each fits",
        description=(
            "Compile ahead of time, on this host, every program a run of CONFIG executes (the distillation phases "
            "or the flow-matching step, the 4-step student denoise of one video and of a batch of data x fsdp "
            "videos as vdot generate --batch runs it, the teacher's CFG denoise) for a real TPU "
            "topology, and print per-device memory (arguments, outputs, temporaries, aliased, peak), FLOPs and "
            "whether each fits the chip's HBM and the host memory budget per chip (a share of the TPU VM's RAM, "
            "docs/scaling.md), then a PREDICTED lower bound on each program's time: FLOPs, collective bytes and "
            "host transfers per chip (counted in the compiled HLO) at the chip's peak compute, HBM, ICI and "
            "host-link rates, which of them limits, and videos/hour for the batched sampler -- a prediction, not a "
            "measurement. Exit 1 when one does not compile or does not fit. Without --mesh it searches the "
            "topology's meshes for those that fit (see --mesh). --topology "
            "gpu:N lowers for cuda instead (shapes and cuDNN placement; GPU memory is measured only on a GPU). "
            "Before compiling it checks what every host of the topology checks at start-up: it prints each "
            "host's batch rows and refuses, in one line naming the hosts, a path of the run (teacher, generator, "
            "VAE, text encoder, data, --workdir, compile cache) the workers cannot reach: a local path on a "
            "multi-host topology that is not under a --shared-mount, a gs:// input that does not exist. "
            "Config overrides (--config.KEY=VALUE) apply as in vdot train."
        ),
    )
    p.add_argument("--config", required=True, help="training config file, e.g. configs/wan14b_stage2_vace.py")
    p.add_argument("--topology", default=None,
                   help="TPU topology (v4:2x2x2, v5e:4x4, v5p:4x4x4, v6e:8x8 ...) or gpu:N (h100:N, h200:N); "
                        "required unless --check-accelerator")
    p.add_argument("--mesh", default=None,
                   help="mesh over the topology's devices, e.g. fsdp=16,context=4. Without it (TPU topologies) plan "
                        "searches: every data/fsdp/context/tensor shape of the topology (context x tensor dividing "
                        "the heads), with each --vary lever, compiled largest program first, each only as far as the "
                        "compiler's buffer assignment (the HBM and host memory it assigns; --full: to the end), "
                        "several candidates at once (--jobs), and stopped at the first program that does not fit "
                        "(state alone over the budget: not compiled); a candidate needing at least the memory of a "
                        "refused one is skipped. It prints "
                        "the meshes that fit, best first (fewest host bytes per chip, then the largest global "
                        "batch, then the shortest predicted step per video), each with its tables; "
                        "exit 1 when none fits (one line names the closest and how far over it is). The search runs no "
                        "start-up checks: plan a mesh it finds with --mesh for those. "
                        "--check-only and gpu:N use the config's mesh.ici")
    p.add_argument("--frames", type=int, default=81, help="video frames (default 81)")
    p.add_argument("--height", type=int, default=480, help="video height (default 480)")
    p.add_argument("--width", type=int, default=832, help="video width (default 832)")
    p.add_argument("--model", default=None,
                   help="architecture preset to plan with instead of the config's teacher (e.g. wan2.1-vace-14b); the "
                        "run's paths are then not checked")
    p.add_argument("--programs", default=None,
                   help="compile only these programs, in this order (comma-separated names as in the table, e.g. "
                        "generator_dmd_ot,critic_gan); default all")
    p.add_argument("--workdir", default=None,
                   help="the run's workdir (gs://BUCKET/... on a multi-host slice), checked as the hosts will reach "
                        "it; default: not checked")
    p.add_argument("--shared-mount", action="append", metavar="PREFIX",
                   help="a local path prefix that every worker mounts at the same place (gcsfuse, NFS): local paths "
                        "under it count as reachable by every host (repeatable; default: none, so on a multi-host "
                        "topology only gs:// paths are)")
    p.add_argument("--hbm-gib", type=float, default=None,
                   help="device memory budget per chip in GiB instead of the chip's HBM (e.g. 76 to leave room as "
                        "on an 80 GB GPU); a program whose peak is above it does not fit (the search also caps the "
                        "TPU compiler's HBM at it, so one over it stops at buffer assignment)")
    p.add_argument("--vary", default="remat,opt_state_memory",
                   help="levers the search varies besides the mesh: remat (model.remat offload/full), "
                        "opt_state_memory (mesh.opt_state_memory host/device), comma-separated, or none to keep "
                        "the config's (default both)")
    p.add_argument("--compile-all", action="store_true",
                   help="search without skipping: compile every candidate, also those that need at least the memory "
                        "of a refused one by the search's model (docs/scaling.md)")
    p.add_argument("--full", action="store_true",
                   help="search: compile the programs of each candidate to the end and judge them by XLA's memory "
                        "analysis, as --mesh does (slower: code generation is most of a compile), instead of only "
                        "as far as the compiler's buffer assignment")
    p.add_argument("--jobs", type=int, default=0,
                   help="search: candidates planned at once, each in a process of its own (default: one per core "
                        "while the free memory holds 10 GiB each, at most 4; with --full, 1: code generation "
                        "already uses every core, and a whole VACE-14B compile took up to 15 GiB)")
    p.add_argument("--check-only", action="store_true",
                   help="stop after the start-up checks (per-host layout, paths): compile nothing")
    p.add_argument("--check-accelerator", metavar="TYPE", default=None,
                   help="only check that the config's mesh.ici (with the --config.KEY=VALUE overrides) uses the chips "
                        "of one Cloud TPU slice of this accelerator type (v5p-16 = 8 chips: v4 and v5p count "
                        "TensorCores, two per chip; v5litepod-N and v6e-N have N chips): print the mesh it gets, or "
                        "exit 2 naming both chip counts. Loads the config only: no TPU backend, nothing compiled "
                        "(a few seconds); launch/tpu_pod.sh up and run call it before renting")
    p.set_defaults(func=run, accepts_extra=True)
