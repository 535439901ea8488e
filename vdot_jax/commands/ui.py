"""``vdot ui``: a web page for generation (Gradio; ``pip install -e ".[ui]"``)."""

from __future__ import annotations

import importlib.util
import os

from vdot_jax.errors import VdotError


class UIUnavailable(VdotError, RuntimeError):
    """The ``ui`` extra is not installed."""


def run(args) -> None:
    if importlib.util.find_spec("gradio") is None:
        raise UIUnavailable('the web page needs gradio: pip install -e ".[ui]"')
    if args.max_frames < 1:
        raise VdotError(f"--max-frames must be at least 1, got {args.max_frames}")
    from vdot_jax.commands.common import UserError, check_mesh

    check_mesh(args.mesh)  # vdot generate's --mesh, refused in one line before the page starts
    if args.mesh:
        from vdot_jax.parallel.mesh import make_mesh

        try:
            make_mesh(args.mesh)  # sizes this host's devices can hold
        except ValueError as e:
            raise UserError(f"--mesh {args.mesh}: {e}") from None
    # no usage reports or version checks to gradio's servers unless the user's environment asks for them
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from vdot_jax import sources
    from vdot_jax.ui.app import launch
    from vdot_jax.ui.backend import Server

    annotators = {}
    for spec in args.annotator or []:  # each annotator's package and weights checked now, not in a request
        from vdot_jax.conditions import annotators as AN
        from vdot_jax.ui.backend import CONFIGURABLE

        task, _, weights = spec.partition("=")
        if task not in CONFIGURABLE or not weights:
            raise UserError(f"--annotator takes TASK=WEIGHTS with TASK one of {', '.join(CONFIGURABLE)}; got {spec!r}.")
        AN.check(task, weights, flag=f"--annotator {task}=WEIGHTS")
        annotators[task] = weights
    for m in args.model or []:  # a missing or wrong folder is one line now, not a failed request later
        sources.resolve(m, what="model directory")
    student = args.toy_student or "vdot_demo/student"  # what `vdot demo` (default --out) writes
    if args.toy_student and not os.path.isfile(os.path.join(args.toy_student, "config.json")):
        raise UserError(f"--toy-student {args.toy_student} is not a student folder vdot demo wrote (OUT/student).")
    student = student if not args.model and os.path.isfile(os.path.join(student, "config.json")) else None
    server = Server(args.model, max_frames=args.max_frames, mesh=args.mesh, annotators=annotators,
                    toy_student=student)
    print(f"[vdot ui] serving on http://{args.host}:{args.port} (Ctrl-C stops)", flush=True)
    launch(server, host=args.host, port=args.port, share=args.share, max_file_size=args.max_file_size)


def register(sub) -> None:
    p = sub.add_parser(
        "ui", help="a web page for generation: pick a task, upload its files, preview, generate",
        description=(
            "Serve a web page (Gradio) for every task: text-to-video, references, inpainting (an uploaded mask, one "
            "drawn on the first frame, or a box), outpainting, the extension modes, grey, edges, layout and frame "
            "references (made as vdot prepare makes them), and finished control videos; depth, pose, flow, scribble, "
            "tracking, face and salient run their annotator on a raw video where --annotator gives its weights, and otherwise take a finished file (the page says which). Uploads "
            "only (no server path is typed), one model in memory, requests queued one at a time; the sampling "
            "settings start at the model directory's recorded defaults (vdot convert / export). Without --model it "
            "serves the shipped toy teacher, which generates in seconds on a CPU. Needs the ui extra: "
            'pip install -e ".[ui]".'),
    )
    p.add_argument("--model", action="append", default=None,
                   help="converted model directory (vdot convert); repeat for a model picker (default: the toy "
                        "teacher)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="default 7860")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--max-frames", type=int, default=81, help="longest video a request may ask for (default 81)")
    p.add_argument("--max-file-size", default="200mb", help="largest upload (default 200mb)")
    p.add_argument("--mesh", default=None,
                   help="device mesh for the transformer, as vdot generate --mesh: e.g. fsdp=4,context=2")
    p.add_argument("--toy-student", default=None, metavar="DIR",
                   help="without --model: also serve the toy student vdot demo distilled (OUT/student; default "
                        "./vdot_demo/student when it exists)")
    p.add_argument("--annotator", action="append", default=None, metavar="TASK=WEIGHTS",
                   help="run an annotator on uploaded raw videos (repeatable; the annotators extra): depth=FOLDER "
                        "(Depth-Anything-V2, transformers layout), flow=FILE (torchvision RAFT), "
                        "pose=DET.onnx,POSE.onnx (DWPose), scribble=FILE (the release's netG_A_latest.pth), "
                        "track=FOLDER (SAM 2, transformers layout) -- the weights "
                        "vdot prepare TASK --weights (--track-model) takes; without it those tasks take a finished "
                        "control video")
    p.set_defaults(func=run)
