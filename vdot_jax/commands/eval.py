"""``vdot eval``: generate a UVCBench-style benchmark and score it, resumably."""

from __future__ import annotations

import sys
from pathlib import Path

from vdot_jax.commands.common import (add_model_arguments, check_model_arguments, check_no_overlap,
                                      check_output_folder, mark_output_folder, model_inputs)


def model_identity(args) -> str:
    """The model paths given and their modification times: a video generated with another (or a re-converted)
    model is not reused."""
    parts = []
    for flag in ("model", "transformer", "vae", "text_encoder"):
        value = getattr(args, flag, None)
        if value:
            p = Path(value).resolve()
            stamps = [str(q.stat().st_mtime_ns) for q in (p, p / "transformer") if q.exists()]
            parts.append(f"{flag}={p}@{'/'.join(stamps)}")
    return ";".join(parts)


def run(args) -> None:
    from vdot_jax.commands.common import UserError
    from vdot_jax.eval import benchmark as B
    from vdot_jax.eval.video_metrics import REGISTRY

    if args.list_metrics:
        for name, m in REGISTRY.items():
            why = m.available()
            print(f"{name}: {m.description}" + (f" [not available: {why}]" if why else ""))
        return
    for flag in ("index", "root", "out"):
        if getattr(args, flag) is None:
            raise UserError(f"--{flag} is required")
    check_model_arguments(args)
    check_no_overlap({"--out": args.out}, {"--root": args.root, "--index": args.index, **model_inputs(args)})
    check_output_folder(args.out, command="eval", overwrite=args.overwrite)
    metrics = None if args.metrics is None else [m.strip() for m in args.metrics.split(",") if m.strip()]
    subtasks = None if args.subtasks is None else [t.strip() for t in args.subtasks.split(",") if t.strip()]

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[vdot eval] {msg}", file=sys.stderr, flush=True)

    def load():
        from vdot_jax.sampling.pipeline import Pipeline

        return Pipeline.load(args.model, transformer=args.transformer, vae=args.vae, text_encoder=args.text_encoder,
                             tokenizer=args.tokenizer, dtype=args.dtype, vae_dtype=args.vae_dtype,
                             attention=args.attention, mesh=args.mesh, log=log)

    from vdot_jax.commands.generate import sampling

    sampling(args, log)  # --steps/--guide-scale/--shift not given: the model directory's record, as vdot generate
    settings = B.Settings(frames=args.frames, height=args.height, width=args.width, steps=args.steps,
                          guide_scale=args.guide_scale, shift=args.shift, solver=args.solver, seed=args.seed,
                          negative_prompt=args.negative_prompt, fps=args.fps, reference_order=args.reference_order,
                          model=model_identity(args))
    mark_output_folder(args.out, "eval")
    try:
        table = B.run_benchmark(args.index, args.root, args.out, load_pipeline=load, settings=settings,
                                metrics=metrics, subtasks=subtasks, limit=args.limit,
                                batch_size=args.batch_size or _mesh_batch(args.mesh), log=log)
    except B.BenchmarkError as e:
        raise UserError(str(e)) from None
    a = table["subtasks"]["all"]
    skipped = f", {a['skipped']} skipped, {a['failed']} failed" if a["skipped"] or a["failed"] else ""
    print(f"evaluated {a['rows']} rows of {len(table['subtasks']) - 1} subtask(s): {a['generated']} generated, "
          f"{a['reused']} reused{skipped}; {len(table['metrics'])} metric(s), "
          f"{len(table['skipped_metrics'])} skipped; table in {args.out}/table.md ({table['seconds']:.1f} s)")


def _mesh_batch(mesh: str | None) -> int:
    """data x fsdp of a --mesh option: every device then holds whole videos."""
    if not mesh:
        return 1
    import jax

    from vdot_jax.parallel.mesh import AXES, parse_axes, resolve_shape

    shape = dict(zip(AXES, resolve_shape(parse_axes(mesh), jax.device_count())))
    return shape["data"] * shape["fsdp"]


def register(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="generate a UVCBench-style benchmark (JSONL index) and score it: per-task table, VBench layout",
        description=(
            "Generate every row of a UVCBench/VACE-Benchmark JSONL index (subtask, sample_id, en_prompt, src_video, "
            "src_mask, src_ref_images; paths relative to --root) with the released student's settings by default, "
            "save the videos (OUT/videos/<subtask>/<sample_id>.mp4, and VBench's layout OUT/vbench/<subtask>/"
            "<prompt>-<k>.mp4), score them (temporal consistency, flicker, fidelity to the source where the mask "
            "keeps it, and every VBench dimension whose weights are in VBench's cache) and write a per-subtask table "
            "(OUT/table.md, OUT/table.json). Resumable: finished videos are not generated again. Rows with missing "
            "input files are reported and skipped."
        ),
    )
    d = p.add_argument_group("benchmark")
    d.add_argument("--index", default=None, help="JSONL index, one row per line")
    d.add_argument("--root", default=None, help="folder the index's paths are relative to")
    d.add_argument("--out", default=None,
                   help="output folder: new, empty, or one vdot eval made (reused when resuming)")
    d.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that vdot eval did not make (its files of the same names are "
                        "replaced)")
    d.add_argument("--subtasks", default=None, help="only these subtasks, comma-separated")
    d.add_argument("--limit", type=int, default=None, help="at most this many rows per subtask")
    d.add_argument("--metrics", default=None, help="comma-separated metric names (default: all; see --list-metrics)")
    d.add_argument("--list-metrics", action="store_true", help="list the metrics and whether they can run here")
    add_model_arguments(p)
    s = p.add_argument_group("sampling (defaults: the released 4-step student)")
    s.add_argument("--steps", type=int, default=None,
                   help="default: the model directory's (student 4, teacher 50; 4 when it records none)")
    s.add_argument("--guide-scale", type=float, default=None,
                   help="1 = no CFG; default: the model directory's (student 1, teacher 5; 1 when it records none)")
    s.add_argument("--shift", type=float, default=None, help="default: the model directory's (16 for the release)")
    s.add_argument("--solver", default="unipc", choices=("unipc", "euler"))
    s.add_argument("--seed", type=int, default=0, help="the initial noise of every row")
    s.add_argument("--negative-prompt", default="")
    s.add_argument("--reference-order", default="release", choices=("release", "diffusers"))
    s.add_argument("--frames", type=int, default=81, help="frames, 1 + 4k (default 81)")
    s.add_argument("--height", type=int, default=480)
    s.add_argument("--width", type=int, default=832)
    r = p.add_argument_group("runtime")
    r.add_argument("--fps", type=float, default=16)
    r.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="compute dtype of the transformer and text encoder (parameters stay as stored; auto: "
                        "bfloat16 on accelerators, float32 on CPU)")
    r.add_argument("--vae-dtype", default="float32", choices=("float32", "bfloat16"), help="VAE compute dtype")
    r.add_argument("--attention", default="auto", help="auto: cudnn on GPU, splash on TPU, xla elsewhere")
    r.add_argument("--mesh", default=None, help="device mesh for the transformer, e.g. fsdp=4,context=2")
    r.add_argument("--batch-size", type=int, default=None,
                   help="videos per program call (default: data x fsdp of --mesh, else 1), as vdot generate --batch")
    r.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
