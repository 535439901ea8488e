"""``vdot prepare``: raw videos, images, masks and boxes -> one task's inputs (src_video.mp4, src_mask.mp4,
reference images, row.json), the release's model-free preprocessing (``vdot_jax.conditions.prepare``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from vdot_jax.commands.common import MARKER, UserError, check_output_folder, mark_output_folder

EXTENSION_TASKS = ("first_frame", "last_frame", "first_last_frame", "first_clip", "last_clip", "first_last_clip")
PREPARE_TASKS = ("plain", "gray", "edges", "layout", "frameref", "inpaint", "outpaint") + EXTENSION_TASKS
# the tasks of conditions.annotators.BACKENDS (test_annotators keeps them equal; importing conditions loads jax,
# which `vdot --help` does not): they need the annotators extra and --weights
ANNOTATOR_TASKS = ("depth", "flow", "pose", "scribble")
PREPARE_TASKS += ANNOTATOR_TASKS
CLIP_TASKS = ("first_clip", "last_clip", "first_last_clip")
# options that only some tasks use: given to another task they are refused, not silently ignored
TASK_OPTIONS = {"mode": ("frameref",), "ref_num": ("frameref",), "clip_frames": CLIP_TASKS, "inner": ("outpaint",),
                "mask_kind": ("inpaint", "layout"), "expand_ratio": ("inpaint", "layout"),
                "expand_iters": ("inpaint", "layout"), "invert": ("inpaint",), "edge_low": ("edges",),
                "edge_high": ("edges",), "edge_sigma": ("edges",), "weights": ANNOTATOR_TASKS,
                **{k: ("inpaint", "layout")
                   for k in ("track_model", "detect_model", "label", "caption", "salient_model")}}


def _src_frames(args, total: int) -> int:
    """The output frame count: --frames, or 81 (vdot generate's default), or the most 1 + 4k the source has if
    fewer; frames are picked uniformly over the source (``video_io.select_frame_indices``)."""
    from vdot_jax.conditions.vcu import WAN_STRIDE, check_num_frames

    st = WAN_STRIDE[0]
    if args.frames is not None:
        n = check_num_frames(args.frames, st, "--frames")
    else:
        n = (min(total, 81) - 1) // st * st + 1
    if total < n or n < 1:
        raise UserError(f"--src-video {args.src_video} has {total} frames; task {args.task} needs {max(n, 1)} "
                        f"(--frames)")
    return n


def _boxes(args, total: int, src_hw, idx, dst_hw):
    """--box / --track (source pixels, source frame numbers) -> one box per output frame, in output pixels."""
    from vdot_jax.conditions import prepare as PR

    if args.track is not None:
        per = PR.interpolate_track(PR.parse_track(args.track), total)
        PR.boxes_per_frame(per, total, src_hw)
    else:
        per = PR.boxes_per_frame(PR.parse_boxes(args.box), total, src_hw)
    return PR.map_boxes(per[idx], src_hw, dst_hw)


def _clips(args, n: int):
    """The clip extensions as the release's ``FrameRefExpandAnnotator`` makes them: ``first_clip``/``last_clip``
    keep the whole clip (or its first/last --clip-frames), ``first_last_clip`` two clips (``a.mp4,b.mp4``: all of
    a at the start, all of b at the end) or one video's first and last --clip-frames; the rest of --frames is
    generated."""
    from vdot_jax import conditions as C
    from vdot_jax.conditions.files import read_clip

    task, k = args.task, args.clip_frames
    paths = [args.src_video] if os.path.exists(args.src_video) else [p for p in args.src_video.split(",") if p]
    if len(paths) == 2 and task == "first_last_clip":
        a, b = (read_clip(p, args.height, args.width) for p in paths)
        for p, c in zip(paths, (a, b)):
            if k is not None and c.shape[2] < k:
                raise UserError(f"--src-video {p} has {c.shape[2]} frames; --clip-frames keeps {k}")
        first, last = (a, b) if k is None else (a[:, :, :k], b[:, :, -k:])
    elif len(paths) == 1 and (task != "first_last_clip" or k is not None):
        clip = read_clip(paths[0], args.height, args.width)
        k = clip.shape[2] if k is None else k
        if clip.shape[2] < k:
            raise UserError(f"--src-video {paths[0]} has {clip.shape[2]} frames; --clip-frames keeps {k}")
        first = clip[:, :, :k] if task != "last_clip" else None
        last = clip[:, :, -k:] if task != "first_clip" else None
    else:
        raise UserError(f"task {task} takes one video" + (" (a,b for two clips, or one with --clip-frames)"
                                                            if task == "first_last_clip" else ""))
    kept = sum(c.shape[2] for c in (first, last) if c is not None)
    if kept >= n:
        raise UserError(f"task {task} keeps {kept} frames, so --frames {n} leaves none to generate; raise --frames "
                        f"or lower --clip-frames")
    return C.extend(task, n, first=first, last=last)


def _text(args):
    """--label a,b or --caption -> the detector's text (``gdino.caption_text``), or None."""
    if args.label is not None and args.caption is not None:
        raise UserError("give --label or --caption, not both")
    if args.label is not None:
        labels = [x.strip() for x in args.label.split(",")]
        if not all(labels):
            raise UserError(f"--label is names separated by ',', got {args.label!r}")
    elif args.caption is None:
        return None
    elif not args.caption.strip():
        raise UserError("--caption is empty")
    from vdot_jax.conditions.annotators.gdino import caption_text  # numpy only

    return caption_text(labels if args.label is not None else None, args.caption)


def build(args):
    """The task's VCU from the files the arguments name (nothing written)."""
    import numpy as np

    from vdot_jax import conditions as C
    from vdot_jax.conditions import annotators as AN
    from vdot_jax.conditions import prepare as PR
    from vdot_jax.conditions.files import parse_expand
    from vdot_jax.conditions.vcu import check_num_frames
    from vdot_jax.data import video_io

    task, H, W = args.task, args.height, args.width
    C.read_task_inputs(None, None, None, num_frames=args.frames or 1, height=H, width=W)  # size rules only
    rng = np.random.default_rng(args.seed)
    has_boxes = args.box is not None or args.track is not None
    if args.box is not None and args.track is not None:
        raise UserError("give --box or --track, not both")
    if has_boxes and task not in ("inpaint", "layout"):
        raise UserError(f"--box/--track are for tasks inpaint and layout, not {task}")
    if args.mask is not None and task not in ("inpaint", "layout"):
        raise UserError(f"--mask is for tasks inpaint and layout, not {task}")
    if (args.expand is not None) != (task == "outpaint"):
        raise UserError("--expand top,bottom,left,right is needed by task outpaint, and only by it")
    if args.src_image is not None and task not in ("first_frame", "last_frame", "first_last_frame"):
        raise UserError(f"--src-image is for the *_frame extension tasks, not {task}")
    text, salient = _text(args), args.salient_model is not None
    sources = (has_boxes, args.mask is not None, text is not None, salient)  # where the region comes from
    if task in ("inpaint", "layout") and not any(sources):
        raise UserError(f"task {task} needs --mask, --box/--track, --label/--caption or --salient-model")
    if sum(sources) > 1:
        raise UserError("give one of --mask, --box/--track, --label/--caption, --salient-model")
    if task == "layout" and has_boxes and (args.mask_kind != "original" or args.expand_ratio is not None):
        raise UserError("--mask-kind and --expand-ratio shape a --mask's outline; layout from boxes draws the boxes")

    if task == "layout" and args.src_video is None and has_boxes:  # boxes alone: output pixels and frames
        n = check_num_frames(args.frames or 81, C.WAN_STRIDE[0], "--frames")
        return C.v2v(PR.layout_boxes(_boxes(args, n, (H, W), np.arange(n), (H, W)), H, W), "layout")

    if task in EXTENSION_TASKS:
        n = check_num_frames(args.frames or 81, C.WAN_STRIDE[0], "--frames")
        if args.src_image is not None:
            if args.src_video is not None:
                raise UserError(f"give task {task} --src-image or --src-video, not both")
            paths = [p for p in args.src_image.split(",") if p]
            if len(paths) != (2 if task == "first_last_frame" else 1):
                raise UserError(f"task {task} takes {2 if task == 'first_last_frame' else 1} image(s) in --src-image")
            imgs = [video_io.read_image(p, size=(H, W)).transpose(2, 0, 1) for p in paths]
            first = imgs[0] if task != "last_frame" else None
            last = imgs[-1] if task != "first_frame" else None
            return C.extend(task, n, first=first, last=last)
        if args.src_video is None:
            raise UserError(f"task {task} needs --src-video (or --src-image for the *_frame tasks)")
        if task in CLIP_TASKS:
            return _clips(args, n)
        return C.task_inputs(task, src_video=args.src_video, frames=n, height=H, width=W)
    if args.src_video is None:
        raise UserError(f"task {task} needs --src-video")

    if text is not None and (args.detect_model is None or args.track_model is None):
        raise UserError("--label/--caption need --detect-model GDINO_FOLDER (finds the object's box on the first "
                        "frame) and --track-model SAM2_FOLDER (follows it)")
    if args.detect_model is not None and text is None:
        raise UserError("--detect-model finds the object that --label or --caption names; give one")
    if args.track_model is not None:
        if text is None and not salient and (args.box is None or ";" in args.box):
            raise UserError("--track-model follows one --box x1,y1,x2,y2 from the first frame; give one box (not "
                            "--track or a box per frame)")
        AN.check("track", args.track_model, "--track-model")
    if text is not None:
        AN.check("detect", args.detect_model, "--detect-model")
    if salient:
        AN.check("salient", args.salient_model, "--salient-model")
    if task in ANNOTATOR_TASKS:
        AN.check(task, args.weights)  # packages and weights path, before any video is read
    info = video_io.probe_video(args.src_video)
    n = _src_frames(args, info.num_frames)
    if task in ANNOTATOR_TASKS:
        AN.check_size(task, n, H, W)
    src_hw = (info.height, info.width)
    idx = video_io.select_frame_indices(info.num_frames, n)
    if task == "layout" and has_boxes and args.track_model is None:  # the video gives the frame count and size
        return C.v2v(PR.layout_boxes(_boxes(args, info.num_frames, src_hw, idx, (H, W)), H, W), "layout")
    if task == "outpaint" and not args.inner:
        return C.task_inputs("outpaint", src_video=args.src_video, frames=n, height=H, width=W, expand=args.expand)

    if args.mask is not None:
        base = C.read_task_inputs(args.src_video, args.mask, None, num_frames=n, height=H, width=W)
        video, masks = base.frames, base.masks
    else:
        video = C.video_from_frames(video_io.read_video(args.src_video, num_frames=n, size=(H, W)))
        masks = PR.box_masks(_boxes(args, info.num_frames, src_hw, idx, (H, W)), H, W) if has_boxes else None
    if args.track_model is not None or salient:
        frames = AN.to_uint8(video)
        smap = AN.load("salient", args.salient_model, "--salient-model")(frames[0]) if salient else None
        if args.track_model is None:  # the release's salient mode: the first frame's map > 0, on every frame
            masks = np.broadcast_to((smap > 0).astype(np.float32), (1, 1) + video.shape[2:]).copy()
        else:  # a box on the first frame (given, found by the detector, or the salient map's), followed by SAM 2
            if text is not None:
                box = AN.load("detect", args.detect_model, "--detect-model")(frames[0], text)
            elif salient:
                from vdot_jax.conditions.annotators.salient import mask_box

                box = mask_box(smap)
                if box is None:
                    raise UserError("the salient map of the first frame is empty (no pixel >= 1), so there is no box "
                                    "to track; give --box")
            else:
                box = _boxes(args, info.num_frames, src_hw, idx, (H, W))[0]
            masks = AN.load("track", args.track_model, "--track-model")(frames, box)[None, None]

    if task in ANNOTATOR_TASKS:
        return C.v2v(AN.annotate(AN.load(task, args.weights), video), AN.BACKENDS[task].kind)
    if task == "plain":
        return C.VCU(video, np.ones((1, 1) + video.shape[2:], np.float32), task="v2v", kind="control")
    if task == "gray":
        return C.v2v(PR.gray(video), "gray")
    if task == "edges":
        return C.v2v(PR.edges(video, args.edge_low, args.edge_high, args.edge_sigma), "scribble")
    if task == "frameref":
        return PR.frame_refs(video, args.mode or "first", args.ref_num, rng)
    if task == "outpaint":
        return PR.outpaint_inner(video, *parse_expand(args.expand))
    if args.mask_kind != "original" or args.expand_ratio is not None:
        masks = PR.mask_aug(masks, args.mask_kind, rng, 0.3 if args.expand_ratio is None else args.expand_ratio,
                            args.expand_iters)
    if args.invert:
        masks = 1.0 - masks
    if task == "layout":
        return C.v2v(PR.layout_masks(masks), "layout")
    return C.inpaint(video, masks)


def row_task(vcu, task: str) -> str:
    """The ``task`` a row of these files is read as (``conditions.files.task_inputs``); ``edges`` is a ``v2v``
    row, not the release's scribble."""
    if vcu.kind == "control":
        return task if task in ("gray", "layout") + ANNOTATOR_TASKS else "v2v"
    return "mv2v"


def _check_out(args, refs: list[str]) -> Path:
    """--out is new or empty (or --overwrite), and none of the files it would get is an input (even with
    --overwrite a source is never replaced)."""
    out = Path(args.out)
    check_output_folder(args.out, command="prepare", overwrite=args.overwrite)  # the rule of every writer
    inputs = [args.src_video, args.mask, *(args.src_image or "").split(","), *refs]
    ours = {(out / n).resolve() for n in ("src_video.mp4", "src_mask.mp4", "row.json")}
    ours |= {(out / f"ref_{i}.png").resolve() for i in range(len(refs))}
    for p in (p for p in inputs if p):
        if Path(p).resolve() in ours:
            raise UserError(f"--out {out} would replace the input {p}; choose another --out (a source is never "
                            f"modified)")
    return out


def write(vcu, out: Path, *, task: str, prompt: str | None, refs: list, fps: float) -> dict:
    """Write the VCU's files into a staging folder beside ``out``, then move them in (no partial output).
    ``refs``: reference image paths, or the images themselves (uint8 [H, W, 3])."""
    from vdot_jax import conditions as C
    from vdot_jax.data import video_io

    stage = out.absolute().parent / f".{out.name}.prepare-{os.getpid()}"
    stage.mkdir(parents=True)
    try:
        mark_output_folder(stage, "prepare")  # so a re-run may write here again without --overwrite
        marker = MARKER.format(command="prepare")
        video_io.write_video(stage / "src_video.mp4", C.frames_from_video(vcu.frames)[0], fps=fps)
        names = ["src_video.mp4"]
        if vcu.kind != "control":
            video_io.write_video(stage / "src_mask.mp4", C.frames_from_video(vcu.masks * 2.0 - 1.0)[0], fps=fps)
            names.append("src_mask.mp4")
        ref_names = []
        for i, p in enumerate(refs):
            ref_names.append(f"ref_{i}.png")
            video_io.write_image(stage / ref_names[-1], video_io.read_image(p) if isinstance(p, str) else p)
        row = {"prompt": prompt, "task": row_task(vcu, task), "src_video": "src_video.mp4",
               "src_mask": "src_mask.mp4" if "src_mask.mp4" in names else None, "ref_images": ref_names,
               "frames": vcu.num_frames, "height": vcu.height, "width": vcu.width}
        if prompt is None:
            del row["prompt"]
        (stage / "row.json").write_text(json.dumps(row, indent=1) + "\n")
        names += ref_names + ["row.json", marker]
        if not out.exists():
            os.replace(stage, out)
            return row
        for name in names:
            os.replace(stage / name, out / name)
        for stale in ("src_mask.mp4",):  # an --overwrite of a masked task's folder by a control task
            if stale not in names and (out / stale).exists():
                (out / stale).unlink()
        return row
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def check_options(args) -> None:
    """Numbers in range and every option used by the task, before any file is read."""
    from vdot_jax.commands.common import check_numbers, check_video_memory

    check_numbers(args, positive=("frames", "height", "width", "fps", "ref_num", "clip_frames", "expand_iters"),
                  nonnegative=("expand_ratio", "edge_low", "edge_high", "edge_sigma"), seed=("seed",))
    check_video_memory(args.frames or 81, args.height, args.width)
    for name, tasks in TASK_OPTIONS.items():
        if getattr(args, name) != args.option_defaults[name] and args.task not in tasks:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} is for task{'s' if len(tasks) > 1 else ''} {', '.join(tasks)}, not {args.task}")


REF_MODELS = {"salient": "--ref-salient-model", "face": "--ref-face-model"}


def _ref_model(args, refs) -> tuple[str, str, str] | None:
    """(annotator task, weights, flag) that turns the references into its crops, checked; or None."""
    from vdot_jax.conditions import annotators as AN

    given = [(t, getattr(args, f"ref_{t}_model"), f) for t, f in REF_MODELS.items()
             if getattr(args, f"ref_{t}_model") is not None]
    if not given:
        return None
    if len(given) > 1:
        raise UserError("give --ref-salient-model or --ref-face-model, not both")
    task, weights, flag = given[0]
    if not refs:
        raise UserError(f"{flag} makes each --ref-images image its {task} crop; give --ref-images")
    AN.check(task, weights, flag)
    return given[0]


def _annotated_refs(paths, images, task: str, weights: str, flag: str) -> list:
    """Each reference image -> the release's crop of it: its salient object on white, cropped (the image salient
    task), or its first face (the image face task)."""
    import numpy as np

    from vdot_jax.conditions import annotators as AN
    from vdot_jax.conditions.annotators.salient import subject

    model = AN.load(task, weights, flag)
    out = []
    for p, img in zip(paths, images):
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        crop = subject(img, model(img)) if task == "salient" else model(img)
        if crop is None:
            what = ("the salient map finds no object (no pixel above 1)" if task == "salient" else
                    "the face detector finds no face (none scores 0.5)")
            raise UserError(f"--ref-images {p}: {what}; give it as it is, without {flag}")
        out.append(crop)
    return out


def append_row(row: dict, out: Path, rows: Path) -> None:
    """Append ``row`` to a ``vdot generate --batch`` rows file, its paths made relative to that file's folder (as
    the batch reader resolves them)."""
    base = rows.absolute().parent
    rel = lambda name: os.path.relpath((out / name).absolute(), base)  # noqa: E731
    line = dict(row, src_video=rel(row["src_video"]), ref_images=[rel(r) for r in row["ref_images"]],
                src_mask=rel(row["src_mask"]) if row["src_mask"] else None)
    base.mkdir(parents=True, exist_ok=True)
    with open(rows, "a") as f:
        f.write(json.dumps(line) + "\n")


def run(args) -> None:
    from vdot_jax.data import video_io

    check_options(args)
    refs = [p for p in (args.ref_images or "").split(",") if p]
    out = _check_out(args, refs)
    images = [video_io.read_image(p, normalize=False) for p in refs]  # unreadable ones refused before any writing
    ref_model = _ref_model(args, refs)
    if args.rows is not None:
        if not args.prompt:
            raise UserError("--rows appends a vdot generate --batch row, which needs --prompt")
        if Path(args.rows).is_dir():
            raise UserError(f"--rows {args.rows} is a folder; give a .jsonl file to append to")
    vcu = build(args)
    if ref_model is not None:
        refs = _annotated_refs(refs, images, *ref_model)
    row = write(vcu, out, task=args.task, prompt=args.prompt, refs=refs, fps=args.fps)
    if args.rows is not None:
        append_row(row, out, Path(args.rows))
    print(f"prepared {args.task} in {out}: {vcu.num_frames} frames at {vcu.height}x{vcu.width}, row task "
          f"{row['task']}, {len(refs)} reference image(s)")


def register(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="make one task's inputs (src_video, src_mask, references, row.json) from raw videos, model-free",
        description=(
            "Build a task's VACE inputs from raw files the way the release's preprocessing does (grey = missing "
            "content, white in the mask = generate, frames 1 + 4k, resized to cover --height x --width and "
            "centre-cropped). Writes src_video.mp4, src_mask.mp4 (tasks with a mask), ref_<i>.png and row.json "
            "(a row for vdot generate --batch, --rows appends it to a rows file; its files also work as vdot generate "
            "--src-video --src-mask). "
            "Tasks: plain (the video as a control), gray, edges (Canny, a model-free stand-in for scribble -- not "
            "the release's scribble model), layout (--box/--track outlines, or --mask outlines), frameref "
            "(--mode first|last|firstlast|random, --ref-num), inpaint (--mask, or --box/--track; --mask-kind "
            "original|bbox|hull[_expand]|random, --invert), outpaint (--expand; --inner regenerates the frame's own "
            "border), and the extension tasks first_frame, last_frame, first_last_frame, first_clip, last_clip, "
            "first_last_clip (--clip-frames). "
            "With the annotators extra (pip install -e '.[annotators]') and a model given by --weights (nothing is "
            "downloaded): depth (Depth-Anything-V2, a transformers folder), flow (torchvision RAFT, a state dict "
            "file), pose (DWPose: its two ONNX files, DET.onnx,POSE.onnx; body and face on black) and scribble (the "
            "release's line-drawing network, its netG_A_latest.pth), post-processed "
            "as the release's annotators; inpaint and layout --box B --track-model SAM2_FOLDER follow the box's "
            "object with SAM 2 (the release's bboxtrack), and --label a,b or --caption TEXT with --detect-model "
            "GDINO_FOLDER --track-model SAM2_FOLDER find the object's box on the first frame with Grounding DINO, "
            "then follow it (the release's label and caption modes); --salient-model U2NET.pt masks the salient object "
            "of the first frame (the release's U^2-Net: its map > 0 on every frame, or with --track-model the box of "
            "the map followed by SAM 2, the release's salient and salientbboxtrack modes). --ref-salient-model and "
            "--ref-face-model turn --ref-images into the release's salient-object and face crops."
        ),
    )
    p.add_argument("task", choices=PREPARE_TASKS, help="which task's inputs to build")
    p.add_argument("--out", required=True, help="output folder (new, empty or made by vdot prepare, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out (replacing its files)")
    i = p.add_argument_group("inputs")
    i.add_argument("--src-video", default=None, help="the raw video")
    i.add_argument("--src-image", default=None, help="image(s) for the *_frame tasks: a.png (first_last_frame: a,b)")
    i.add_argument("--mask", default=None, help="mask image or video of the source's size: white = the region")
    i.add_argument("--box", default=None,
                   help="x1,y1,x2,y2 in source pixels, one for every frame or one per source frame separated by ';'")
    i.add_argument("--track", default=None,
                   help="keyframes FRAME:x1,y1,x2,y2;FRAME:... (source frames), linear in between, held at the ends")
    i.add_argument("--ref-images", default=None, help="reference images to add, comma-separated")
    i.add_argument("--ref-salient-model", default=None,
                   help="make each --ref-images image its salient object on white, cropped to it, with the release's "
                        "U^2-Net (its u2net.pt; the annotators extra), as the release's image salient task does")
    i.add_argument("--ref-face-model", default=None,
                   help="make each --ref-images image the crop of its most confident face, found by the release's "
                        "face detector (antelopev2's scrfd_10g_bnkps.onnx; the annotators extra), as the release's "
                        "image face task does")
    i.add_argument("--prompt", default=None, help="the prompt to put in row.json")
    i.add_argument("--rows", default=None, metavar="FILE.jsonl",
                   help="also append the row to this vdot generate --batch file (paths relative to its folder; "
                        "needs --prompt)")
    o = p.add_argument_group("task options")
    o.add_argument("--mode", default=None, choices=("first", "last", "firstlast", "random"),
                   help="frameref: which frames are kept (default first)")
    o.add_argument("--ref-num", type=int, default=1, help="frameref: frames kept at each end, or at random (default 1)")
    o.add_argument("--clip-frames", type=int, default=None,
                   help="*_clip tasks: frames kept of the clip (default: all of it, as the release; first_last_clip "
                        "of one video needs it)")
    o.add_argument("--expand", default=None, help="outpaint: ratios top,bottom,left,right, e.g. 0,0,0.25,0.25")
    o.add_argument("--inner", action="store_true", help="outpaint: regenerate the frame's border instead of a larger "
                                                        "canvas")
    o.add_argument("--mask-kind", default="original",
                   choices=("original", "original_expand", "hull", "hull_expand", "bbox", "bbox_expand", "random"),
                   help="inpaint/layout: the release's mask augmentation (default original; random: one of the six "
                        "per frame)")
    o.add_argument("--expand-ratio", type=float, default=None, help="*_expand mask kinds: growth ratio (default 0.3)")
    o.add_argument("--expand-iters", type=int, default=5, help="*_expand mask kinds: growth steps (default 5)")
    o.add_argument("--invert", action="store_true", help="inpaint: regenerate everything but the mask/box")
    o.add_argument("--edge-low", type=float, default=100.0, help="edges: Canny low threshold (0-255 luma)")
    o.add_argument("--edge-high", type=float, default=200.0, help="edges: Canny high threshold")
    o.add_argument("--edge-sigma", type=float, default=0.0, help="edges: Gaussian blur first, in pixels (default 0: "
                                                                  "OpenCV's Canny with the L2 gradient)")
    o.add_argument("--weights", default=None,
                   help="depth, flow, pose, scribble: the annotator model (depth: a Depth-Anything-V2 transformers "
                        "folder; flow: a torchvision RAFT state dict file; pose: the DWPose detector and pose ONNX "
                        "files, DET,POSE; scribble: the release's netG_A_latest.pth)")
    o.add_argument("--track-model", default=None,
                   help="inpaint, layout: follow the --box of the first frame through the video with this SAM 2 "
                        "model (a transformers Sam2VideoModel folder; the annotators extra) instead of keeping the box")
    o.add_argument("--label", default=None,
                   help="inpaint, layout: object class name(s), comma-separated, that --detect-model finds on the "
                        "first frame (read as the caption 'a. b'); the most confident box is tracked (needs --track-model)")
    o.add_argument("--caption", default=None,
                   help="inpaint, layout: a phrase naming the object for --detect-model, instead of --label")
    o.add_argument("--detect-model", default=None,
                   help="inpaint, layout: the Grounding DINO model for --label/--caption (a transformers "
                        "GroundingDinoForObjectDetection folder with its tokenizer; the annotators extra)")
    o.add_argument("--salient-model", default=None,
                   help="inpaint, layout: the region is the salient object of the first frame, by the release's "
                        "U^2-Net (its u2net.pt; the annotators extra): the map > 0 on every frame, or with "
                        "--track-model the map's box followed by SAM 2")
    o.add_argument("--seed", type=int, default=0, help="random frame references and mask expansion")
    s = p.add_argument_group("size")
    s.add_argument("--frames", type=int, default=None,
                   help="frames, 1 + 4k (default 81, or the most the source video has if fewer), picked uniformly "
                        "over the source")
    s.add_argument("--height", type=int, default=480, help="multiple of 16 (default 480)")
    s.add_argument("--width", type=int, default=832, help="multiple of 16 (default 832)")
    s.add_argument("--fps", type=float, default=16, help="frame rate written in the mp4s (default 16)")
    p.set_defaults(func=run, option_defaults={k: p.get_default(k) for k in TASK_OPTIONS})
