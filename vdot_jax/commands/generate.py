"""``vdot generate``: any VCU task from the command line, 4 student steps or N teacher steps, mp4 out."""

from __future__ import annotations

import sys

from pathlib import Path

from vdot_jax.commands.common import (UserError, add_model_arguments, check_model_arguments, check_no_overlap,
                                      check_output_folder, check_output_video, mark_output_folder,
                                      model_inputs)


def run(args) -> int | None:
    check_model_arguments(args)  # every option, before anything heavy is imported or loaded
    if args.batch is not None:
        return run_batch(args)
    if args.prompt is None:
        raise UserError("give --prompt (or --batch FILE.jsonl for many videos)")
    check_output_video(args.out)
    refs = [r.strip() for r in args.ref_images.split(",")] if args.ref_images else None
    check_no_overlap({"--out": args.out}, {"--src-video": args.src_video, "--src-mask": args.src_mask,
                                           "--ref-images": refs, **model_inputs(args)})
    from vdot_jax import conditions as C  # lazy, as every command's imports: `vdot --help` stays light
    from vdot_jax.sampling import pipeline as P

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[vdot generate] {msg}", file=sys.stderr, flush=True)

    # Task inputs first: a bad file or size stops here, before any model is loaded.
    vcu = C.task_inputs(args.task, src_video=args.src_video, src_mask=args.src_mask, ref_images=args.ref_images,
                        frames=args.frames, height=args.height, width=args.width, expand=args.expand,
                        clip_frames=args.clip_frames)
    log(f"task {vcu.task}: {vcu.num_frames} frames at {vcu.height}x{vcu.width}, {vcu.num_refs} reference image(s)")
    sampling(args, log)
    pipe = P.Pipeline.load(args.model, transformer=args.transformer, vae=args.vae, text_encoder=args.text_encoder,
                           tokenizer=args.tokenizer, dtype=args.dtype, vae_dtype=args.vae_dtype,
                           attention=args.attention, mesh=args.mesh, text_encoder_offload=args.text_encoder_offload,
                           log=log)
    result = pipe.generate(args.prompt, negative_prompt=args.negative_prompt, vcu=vcu, steps=args.steps,
                           guide_scale=args.guide_scale, shift=args.shift, solver=args.solver, seed=args.seed,
                           context_scale=args.context_scale, reference_order=args.reference_order, out=args.out,
                           fps=args.fps, progress=not args.quiet)
    print(result.summary())


def sampling(args, log) -> None:
    """--steps, --guide-scale and --shift not given: the model directory's recorded defaults (vdot convert/export),
    else the released student's."""
    from vdot_jax.sampling.pipeline import sampling_defaults

    model = sampling_defaults(args.model)
    given = [k for k in model if getattr(args, k) is not None]
    for k, v in model.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    log(f"sampling: {args.steps} steps, guide scale {args.guide_scale:g}, shift {args.shift:g} (" +
        (f"{', '.join('--' + k.replace('_', '-') for k in given)} given, the rest " if given else "") +
        "the model's defaults)")


def run_batch(args) -> int:
    """``--batch FILE --out DIR``: every row of FILE (see vdot_jax.sampling.batch), resumable, over the mesh's
    devices; several processes (a pod, SLURM, VDOT_COORDINATOR) each take their share of the rows."""
    from vdot_jax.sampling import batch as B

    out = Path(args.out)
    sampling(args, lambda msg: None)  # the model's defaults for rows that give no steps, guide_scale, shift
    defaults = dict(negative_prompt=args.negative_prompt, seed=args.seed, frames=args.frames, height=args.height,
                    width=args.width, steps=args.steps, guide_scale=args.guide_scale, shift=args.shift,
                    solver=args.solver, context_scale=args.context_scale)
    if args.prompt is not None or args.task is not None or args.src_video or args.src_mask or args.ref_images:
        raise UserError("--batch takes prompts and task inputs from its rows; leave out --prompt, --task, "
                        "--src-video, --src-mask and --ref-images")
    if out.suffix.lower() == ".mp4":
        raise UserError(f"--out {out} with --batch is a folder for the videos, not an mp4 file")
    check_output_folder(args.out, command="generate", overwrite=args.overwrite)
    check_no_overlap({"--out": args.out}, model_inputs(args))
    rows, bad = B.read_rows(args.batch, defaults)  # the whole file is checked before any model is loaded
    check_no_overlap({"manifest": out / B.MANIFEST, "errors": out / B.ERRORS}, {"--batch": args.batch})
    written = {(out / r.name).resolve(): r.line for r in rows}  # a set, not check_no_overlap's pairs: 10^4 rows
    for r in rows:
        for src in [r.inputs["src_video"], r.inputs["src_mask"], *(r.inputs["ref_images"] or [])]:
            if src is not None and Path(src).resolve() in written:
                raise UserError(f"line {r.line} of {args.batch} reads {src}, which line {written[Path(src).resolve()]}"
                                " writes; an input is never written")
    mark_output_folder(out, "generate")

    from vdot_jax.parallel.distributed import initialize
    import jax

    initialize()  # automatic on TPU pods and SLURM; VDOT_COORDINATOR for other launchers
    k, n = jax.process_index(), jax.process_count()
    share = [r for r in rows if (r.line - 1) % n == k]
    errors_name = B.ERRORS if n == 1 else f"errors.{k}-of-{n}.jsonl"

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[vdot generate{f' {k}/{n}' if n > 1 else ''}] {msg}", file=sys.stderr, flush=True)

    for line, msg in bad:
        log(f"skipped: {msg}")
    mesh = args.mesh
    if mesh is not None:
        from vdot_jax.parallel.mesh import make_mesh

        try:
            mesh = make_mesh(mesh, devices=jax.local_devices())  # each process samples its rows on its own chips
        except ValueError as e:
            raise UserError(f"--mesh {args.mesh}: {e}") from None
    batch_size = args.batch_size or (int(mesh.shape["data"] * mesh.shape["fsdp"]) if mesh is not None else 1)
    from vdot_jax.sampling import pipeline as P

    pipe = P.Pipeline.load(args.model, transformer=args.transformer, vae=args.vae, text_encoder=args.text_encoder,
                           tokenizer=args.tokenizer, dtype=args.dtype, vae_dtype=args.vae_dtype,
                           attention=args.attention, mesh=mesh, text_encoder_offload="none", log=log)
    stop = B.StopFlag()
    try:
        summary = B.generate_rows(pipe, share, out, batch_size=batch_size, fps=args.fps,
                                  reference_order=args.reference_order, log=log, stop=stop)
    finally:
        stop.restore()
    summary.failed = [(line, m) for line, m in bad if (line - 1) % n == k] + summary.failed
    B.write_errors(out / errors_name, summary.failed)
    if n > 1:  # every host's videos are written before the manifest is made (and before any process exits)
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vdot generate --batch")
    if k == 0:
        done = B.write_manifest(out, rows)
        print(f"{summary.line(out / errors_name)}; manifest.jsonl lists {done} of {len(rows)} row(s)")
    else:
        print(summary.line(out / errors_name))
    return 1 if summary.failed or summary.stopped else 0


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a video for any VCU task (text, reference, control, inpaint, outpaint, extension)",
        description=(
            "Generate a video with a converted model (vdot convert). --steps, --guide-scale and --shift default to "
            "what the model directory records (vdot convert/export write them: the released student 4 UniPC steps, "
            "shift 16, no classifier-free guidance; the VACE teacher 50 steps, shift 16, guidance 5), else the "
            "student's; a flag given wins. "
            "Task inputs follow the VACE release: no --src-video is text-to-video, --src-video alone a control "
            "video, --src-video with --src-mask masked editing (grey 127 marks missing content, white in the mask "
            "means generate); --ref-images adds reference images to any task. --task builds the inputs from a "
            "plain video instead: inpaint (greys the masked region), outpaint (--expand), or an extension mode "
            "(first_frame, last_frame, first_clip, last_clip, first_last_frame, first_last_clip; --src-video is an "
            "image or a video whose first/last --clip-frames frames are kept)."
        ),
    )
    add_model_arguments(p)
    t = p.add_argument_group("task")
    t.add_argument("--prompt", default=None, help="what to generate (required unless --batch)")
    t.add_argument("--batch", default=None, metavar="FILE.jsonl",
                   help="many videos: one JSON object per line (prompt; optional negative_prompt, seed, out, task "
                        "inputs and settings named as these options with _, e.g. src_video, guide_scale); --out is "
                        "then a folder; rows of one shape are sampled batch-size at a time; a re-run skips rows "
                        "already written; writes manifest.jsonl and errors.jsonl there")
    t.add_argument("--negative-prompt", default="", help="used with classifier-free guidance (default: empty)")
    t.add_argument("--task", default=None,
                   help="how to build the inputs (default: from the files given): t2v, r2v, v2v or a control kind "
                        "(depth, pose, scribble, flow, gray, layout), mv2v, inpaint, outpaint, or an extension mode")
    t.add_argument("--src-video", default=None, help="source video (control, video to edit/outpaint/extend)")
    t.add_argument("--src-mask", default=None, help="mask video or image: white = generate, black = keep")
    t.add_argument("--ref-images", default=None, help="reference images, comma-separated: a.png,b.png")
    t.add_argument("--expand", default=None, help="outpainting ratios top,bottom,left,right, e.g. 0,0,0.25,0.25")
    t.add_argument("--clip-frames", type=int, default=None, help="frames kept by the *_clip extension modes")
    t.add_argument("--frames", type=int, default=81, help="frames, 1 + 4k (default 81)")
    t.add_argument("--height", type=int, default=480, help="multiple of 16 (default 480)")
    t.add_argument("--width", type=int, default=832, help="multiple of 16 (default 832)")
    s = p.add_argument_group("sampling")  # defaults: the model's record (sampling_defaults), else the student's
    s.add_argument("--steps", type=int, default=None,
                   help="default: the model directory's (student 4, teacher 50; 4 when it records none)")
    s.add_argument("--guide-scale", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off; default: the model directory's (student 1, "
                        "teacher 5; 1 when it records none)")
    s.add_argument("--shift", type=float, default=None,
                   help="timestep shift; default: the model directory's (16 for the released student and teacher)")
    s.add_argument("--solver", default="unipc", choices=("unipc", "euler"))
    s.add_argument("--context-scale", type=float, default=1.0, help="VACE hint scale (default 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--reference-order", default="release", choices=("release", "diffusers"),
                   help="order of several reference images: the VACE release's (default) or diffusers' (reversed)")
    r = p.add_argument_group("output and runtime")
    r.add_argument("--out", default="out.mp4", help="output mp4 (default out.mp4); with --batch, the folder of the videos")
    r.add_argument("--fps", type=float, default=16)
    r.add_argument("--overwrite", action="store_true",
                   help="with --batch: write into a non-empty --out folder this command did not make")
    r.add_argument("--batch-size", type=int, default=None,
                   help="with --batch: videos per program call (default: data x fsdp of --mesh, else 1)")
    r.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                   help="compute dtype of the transformer and text encoder (auto: bfloat16 on accelerators, "
                        "float32 on CPU)")
    r.add_argument("--vae-dtype", default="float32", choices=("float32", "bfloat16"), help="VAE compute dtype")
    r.add_argument("--attention", default="auto",
                   help="attention implementation (auto: cudnn on GPU, splash on TPU, xla elsewhere)")
    r.add_argument("--mesh", default=None,
                   help="device mesh for the transformer, e.g. fsdp=4,context=2 (context > 1: Ulysses attention)")
    r.add_argument("--text-encoder-offload", default="free", choices=("none", "host", "free"),
                   help="after encoding the prompts: keep the text encoder on the device, move it to host memory, "
                        "or free it (default)")
    r.add_argument("--quiet", action="store_true", help="no progress output, only the summary line")
    p.set_defaults(func=run)

