"""``vdot generate``: any VCU task from the command line, 4 student steps or N teacher steps, mp4 out."""

from __future__ import annotations

import sys

from vdot_jax.commands.common import (add_model_arguments, check_model_arguments, check_no_overlap, check_output_video,
                                      model_inputs)


def run(args) -> None:
    check_model_arguments(args)  # every option, before anything heavy is imported or loaded
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
    pipe = P.Pipeline.load(args.model, transformer=args.transformer, vae=args.vae, text_encoder=args.text_encoder,
                           tokenizer=args.tokenizer, dtype=args.dtype, vae_dtype=args.vae_dtype,
                           attention=args.attention, mesh=args.mesh, text_encoder_offload=args.text_encoder_offload,
                           log=log)
    result = pipe.generate(args.prompt, negative_prompt=args.negative_prompt, vcu=vcu, steps=args.steps,
                           guide_scale=args.guide_scale, shift=args.shift, solver=args.solver, seed=args.seed,
                           context_scale=args.context_scale, reference_order=args.reference_order, out=args.out,
                           fps=args.fps, progress=not args.quiet)
    print(result.summary())


def register(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="generate a video for any VCU task (text, reference, control, inpaint, outpaint, extension)",
        description=(
            "Generate a video with a converted model (vdot convert). Defaults are the released 4-step student's "
            "(UniPC, 4 steps, shift 16, no classifier-free guidance); the teacher is --steps 50 --guide-scale 5. "
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
    t.add_argument("--prompt", required=True)
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
    s = p.add_argument_group("sampling")  # defaults: vdot_jax.sampling.pipeline.STUDENT (the released student)
    s.add_argument("--steps", type=int, default=4, help="default 4 (the student); teacher: 50")
    s.add_argument("--guide-scale", type=float, default=1.0,
                   help="classifier-free guidance scale; 1 = off (default, the student); teacher: 5")
    s.add_argument("--shift", type=float, default=16.0, help="timestep shift (default 16)")
    s.add_argument("--solver", default="unipc", choices=("unipc", "euler"))
    s.add_argument("--context-scale", type=float, default=1.0, help="VACE hint scale (default 1)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--reference-order", default="release", choices=("release", "diffusers"),
                   help="order of several reference images: the VACE release's (default) or diffusers' (reversed)")
    r = p.add_argument_group("output and runtime")
    r.add_argument("--out", default="out.mp4", help="output mp4 (default out.mp4; a batch adds _<i>)")
    r.add_argument("--fps", type=float, default=16)
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

