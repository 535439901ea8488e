"""``vdot demo``: the embedded default -- distil, evaluate and report on the toy world, on a CPU."""

from __future__ import annotations

import os


def run(args) -> None:
    from vdot_jax.commands.common import UserError, check_numbers, check_output_folder, mark_output_folder

    check_numbers(args, positive=("steps", "seeds"))
    # --rescore reads and re-writes the report of a demo folder (checked by rescore: its clips and plan.json)
    if args.probe_teacher not in (None, "shipped") and not os.path.exists(args.probe_teacher):
        raise UserError(f"--probe-teacher {args.probe_teacher}: no such workdir or model folder.")
    if args.teacher is not None and not os.path.exists(args.teacher):
        raise UserError(f"--teacher {args.teacher}: no such workdir or model folder.")
    check_output_folder(args.out, command=None if args.rescore else "demo", overwrite=args.overwrite)
    # CPU: backend optimisation level 1 compiles the four training phases in about 40% of the default's time
    # (measured on 2 cores: ~45 s vs ~105 s per phase) and runs these tiny models as fast (set before jax
    # starts; an explicit XLA_FLAGS wins).
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1")
    import jax

    cache = os.path.expanduser(os.environ.get("VDOT_COMPILATION_CACHE", "~/.cache/vdot-jax/xla"))
    jax.config.update("jax_compilation_cache_dir", cache)  # a second run skips compilation
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    from vdot_jax.demo import DemoPlan, check_toy_teacher, probe_teacher, rescore, run_demo, sweep_teacher

    for teacher in (args.teacher, None if args.probe_teacher == "shipped" else args.probe_teacher):
        if teacher is not None:
            try:
                check_toy_teacher(teacher)
            except (ValueError, OSError) as e:
                raise UserError(str(e)) from None
    if not args.rescore:
        mark_output_folder(args.out, "demo")
    if args.sweep_teacher:
        sweep_teacher(args.out, teacher=args.teacher)
        return
    if args.probe_teacher:
        probe_teacher(args.out, None if args.probe_teacher == "shipped" else args.probe_teacher, seeds=args.seeds)
        return
    if args.rescore:
        try:
            rescore(args.out)
        except FileNotFoundError as e:
            raise UserError(str(e)) from None
        return
    plan = DemoPlan.quick() if args.quick else DemoPlan()
    if args.steps is not None:
        plan.steps = args.steps
    if args.teacher is not None:
        plan.teacher = args.teacher
    run_demo(args.out, plan=plan, seeds=args.seeds, keep_clips=args.keep_clips)


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="distil a 4-step student from the shipped toy teacher with VDOT and write a report (CPU, minutes)",
        description=(
            "The embedded default. On a procedural video world with every VACE task (text, reference image, "
            "first/last frame and clip extension, inpainting, outpainting, depth, edges, grey), distil three "
            "4-step students from the shipped toy VACE teacher -- DMD only, OT only, and VDOT (DMD + OT + GAN) -- "
            "evaluate them against the teacher at 50 and 4 steps with metrics that are exact in this world, and "
            "write OUT/report.md, PNG plots and video grids (mp4 and GIF). Nothing is downloaded."
        ),
    )
    p.add_argument("--out", default="vdot_demo",
                   help="output directory: new, empty, or one vdot demo made (default: ./vdot_demo)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that vdot demo did not make (files of the same names are "
                        "replaced)")
    p.add_argument("--quick", action="store_true", help="a few steps and clips: checks the whole path in ~2 minutes")
    p.add_argument("--teacher", metavar="PATH", default=None,
                   help="distil from (or with --sweep-teacher, measure) the toy teacher at PATH instead of the shipped "
                        "one: a vdot train workdir (its EMA at the newest step, e.g. teacher_wide_run in a checkout) "
                        "or a model folder")
    p.add_argument("--steps", type=int, default=None, help="distillation steps per student (default 150)")
    p.add_argument("--seeds", type=int, default=1,
                   help="distil every student with this many seeds and report mean ± sd per metric, marking the "
                        "differences larger than the spread (default 1: single-seed margins; 3 takes ~3x as long); "
                        "with --probe-teacher: sample the teacher with this many noise seeds")
    p.add_argument("--keep-clips", action="store_true",
                   help="also write every method's evaluation clips (OUT/clips_seed<N>.npz, ~25 MB per seed) so that "
                        "--rescore can re-make the report later")
    p.add_argument("--rescore", action="store_true",
                   help="instead: re-make OUT's report from the clips a --keep-clips run saved there, with the "
                        "current metrics (no distillation or sampling)")
    p.add_argument("--sweep-teacher", action="store_true",
                   help="instead: measure the teacher's sampling settings (steps, CFG, shift) on held-out clips and "
                        "write OUT/teacher_sweep.md (how docs/demo/teacher_sweep.md was made)")
    p.add_argument("--probe-teacher", metavar="PATH", default=None,
                   help="instead: sample the teacher at PATH (a vdot train workdir -- its EMA at the newest step -- or "
                        "a model folder; 'shipped' for the shipped one) at 50 and 4 steps with the demo's CFG on the "
                        "held-out clips (--seeds noise seeds: mean ± sd), add the row to OUT/teacher_probe.json and "
                        "re-draw OUT/teacher_probe.md/.png (how docs/demo/teacher_probe.* are made, one checkpoint at "
                        "a time)")
    p.set_defaults(func=run)
