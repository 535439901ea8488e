"""What the page does, without gradio: load a model, build a task's inputs from uploaded files, preview them,
generate, and say how ``vdot generate`` reproduces the result. ``vdot_jax.ui.app`` puts a Gradio page on it.

Task inputs go through ``vdot_jax.conditions.task_inputs`` (what ``vdot generate --task`` calls) or, for what
``vdot prepare`` makes from a raw video (a drawn mask or a box, grey, edges, a layout, frame references), through
``vdot prepare``'s own ``build`` with the options the page's fields stand for, so the page and the command line
cannot disagree. Every error a user can cause is a ``VdotError`` whose one sentence the page shows.
"""

from __future__ import annotations

import math
import shlex
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdot_jax.errors import VdotError

TOY = "toy teacher (shipped)"
TOY_STUDENT = "toy student (vdot demo)"  # OUT/student of a vdot demo run: ./vdot_demo/student by default
EXTENSIONS = ("first_frame", "last_frame", "first_clip", "last_clip", "first_last_frame", "first_last_clip")
# Made from a raw video by `vdot prepare` (model-free); inpaint and layout also take a drawn mask or a box there.
PREPARED = ("gray", "edges", "frameref")
# Tasks whose preprocessing of a raw video needs an annotator model: (what it makes, the task its finished output
# feeds). Started with `vdot ui --annotator TASK=WEIGHTS` (conditions/annotators: depth, flow, pose, scribble, track),
# the page runs that annotator on the uploaded raw video through `vdot prepare`'s build; otherwise the user uploads
# the finished file, and the page says why in one line (annotator_reason).
ANNOTATOR_TASKS = {
    "depth": ("a depth video", "depth"),
    "pose": ("a pose video", "pose"),
    "flow": ("an optical-flow video", "flow"),
    "scribble": ("a scribble video", "scribble"),
    "track": ("a mask video of the tracked object (segmentation)", "inpaint"),
    "face": ("a face crop as a reference image", "r2v"),
    "salient": ("the salient object as a reference image", "r2v"),
}
# the annotators the page runs (vdot prepare --weights / --track-model)
CONFIGURABLE = ("depth", "flow", "pose", "scribble", "track")
ANNOTATOR_REASON = ("{task} needs annotator weights, which this server was not started with (vdot ui --annotator "
                    "{task}=WEIGHTS, after pip install -e \".[annotators]\"): upload {what} instead")
PREPARE_ONLY_REASON = ("{task}'s annotator crops reference images in vdot prepare, not on this page (vdot prepare TASK "
                    "--ref-images IMAGE --ref-{task}-model WEIGHTS): make {what} there and upload it here")
# Every task on the page, with what to upload for it.
TASK_HELP = {
    "t2v": "text to video: the prompt alone (reference images optional).",
    "r2v": "reference images: the subjects the video shows.",
    "inpaint": "a video, and what to regenerate: a mask file, a mask drawn on its first frame, or a box "
               "x1,y1,x2,y2 (white / inside = generated).",
    "mv2v": "the release's masked editing: a video already grey (127) where content is generated, and its mask.",
    "outpaint": "a video, placed in a larger canvas by expand top,bottom,left,right.",
    **{t: "a video or an image whose " + ("first and last" if "first_last" in t else t.split("_")[0]) +
       (" frames are" if t.endswith("clip") else " frame is") + " kept; the rest is generated." for t in EXTENSIONS},
    "gray": "a video, greyscaled (vdot prepare gray): the model colours it.",
    "edges": "a video, its Canny edges the control (vdot prepare edges; a model-free stand-in for scribble).",
    "layout": "box outlines as the control: a box x1,y1,x2,y2 (a video for its size, optional), a mask drawn on a "
              "video's first frame, or a finished layout video.",
    "frameref": "a video whose first frame is kept as a reference frame (vdot prepare frameref).",
    "v2v": "a finished control video of any kind (depth, pose, scribble, ...).",
}
ANNOTATED_HELP = {"depth": "a raw video: its depth (Depth-Anything-V2) is the control.",
                  "flow": "a raw video: its optical flow (RAFT) is the control.",
                  "pose": "a raw video: its people's poses (DWPose) are the control.",
                  "scribble": "a raw video: its line drawing (the release's scribble network) is the control.",
                  "track": "a raw video and a box x1,y1,x2,y2 on its first frame: the object SAM 2 tracks from it "
                           "is regenerated (inpainting)."}
TASK_CHOICES = tuple(TASK_HELP) + tuple(ANNOTATOR_TASKS)


def annotator_reason(task: str) -> str | None:
    """The page's one line for an annotator task this server cannot run (None for the others)."""
    if task not in ANNOTATOR_TASKS:
        return None
    reason = ANNOTATOR_REASON if task in CONFIGURABLE else PREPARE_ONLY_REASON
    return reason.format(task=task, what=ANNOTATOR_TASKS[task][0])


def task_help(task: str, annotators: dict | None = None) -> str:
    """What to upload for ``task`` on a server started with ``annotators`` ({task: weights})."""
    if task in (annotators or {}):
        return ANNOTATED_HELP[task]
    if task in ANNOTATOR_TASKS:
        return annotator_reason(task) + "."
    return TASK_HELP.get(task, "")


class UIError(VdotError, ValueError):
    """A request the page cannot run (one sentence, shown in the page)."""


@dataclass
class Settings:
    task: str = "t2v"
    prompt: str = ""
    negative_prompt: str = ""
    frames: int = 81
    height: int = 480
    width: int = 832
    steps: int = 4
    guide_scale: float = 1.0
    shift: float = 16.0
    seed: int = 0
    expand: str = "0,0,0.25,0.25"
    clip_frames: int = 1
    box: str = ""  # x1,y1,x2,y2 in the source video's pixels (inpaint, layout)

    def check(self, max_frames: int) -> None:
        """Numbers the page's fields may carry (NaN, inf, negatives), before anything is read."""
        if self.task not in TASK_CHOICES:
            raise UIError(f"unknown task {self.task!r}; choose one of {', '.join(TASK_CHOICES)}.")
        for name in ("frames", "height", "width", "steps", "guide_scale", "shift", "seed", "clip_frames"):
            v = getattr(self, name)
            if v is None or not math.isfinite(float(v)):
                raise UIError(f"{name.replace('_', ' ')} must be a finite number, got {v}.")
        for name in ("frames", "height", "width", "steps", "seed", "clip_frames"):
            v = float(getattr(self, name))
            if v != int(v):
                raise UIError(f"{name.replace('_', ' ')} must be a whole number, got {v:g}.")
            setattr(self, name, int(v))
        if self.frames > max_frames:
            raise UIError(f"{self.frames} frames is more than this server allows ({max_frames}, vdot ui "
                          f"--max-frames).")
        if self.steps < 1 or self.shift <= 0 or self.seed < 0:
            raise UIError(f"steps must be >= 1, shift > 0 and seed >= 0, got steps {self.steps}, shift "
                          f"{self.shift:g}, seed {self.seed}.")


class ToyText:
    """The toy world's text encoder (``ToyTextEncoder``, the one the toy teacher was trained with) in the shape
    ``Pipeline`` calls: ``encode(texts)`` and ``config.d_model``."""

    def __init__(self, dim: int, text_len: int, seed: int):
        from types import SimpleNamespace

        from vdot_jax.data.toy_world import ToyTextEncoder

        self.encoder = ToyTextEncoder(dim=dim, text_len=text_len, seed=seed)
        self.config = SimpleNamespace(d_model=dim)

    def encode(self, texts):
        import jax.numpy as jnp

        try:
            return jnp.asarray(self.encoder.encode(texts))
        except ValueError as e:  # words outside the toy vocabulary, too many words
            raise UIError(str(e)) from None


def toy_pipeline(mesh=None, transformer=None):
    """The shipped toy teacher (or the toy student at ``transformer``, a folder ``vdot demo`` wrote) with the toy
    world's own VAE and text encoder (as ``vdot demo`` samples them)."""
    from vdot_jax.data.pipeline import toy_vae_config
    from vdot_jax.demo import TOY_WORLD, DemoPlan, data_config, load_teacher
    from vdot_jax.models.toy_vae import ToyVAE
    from vdot_jax.parallel.sharding import shard_model
    from vdot_jax.sampling.pipeline import Pipeline

    vae = ToyVAE(toy_vae_config(data_config(DemoPlan())))
    text = ToyText(TOY_WORLD["text_dim"], TOY_WORLD["text_len"], TOY_WORLD["text_seed"])
    pipe = Pipeline(load_teacher(transformer), vae, text, mesh=mesh)
    if pipe.mesh is not None and pipe.mesh.size > 1:  # as Pipeline.load shards a model directory's
        shard_model(pipe.transformer, pipe.mesh)
    pipe.sampling = {k: v for k, v in toy_defaults().items() if k in pipe.sampling}
    return pipe


def toy_defaults() -> dict:
    """Sampling and size defaults of the toy teacher (``vdot demo``'s teacher settings, few steps)."""
    from vdot_jax.demo import TOY_WORLD, DemoPlan

    plan = DemoPlan()
    return dict(frames=TOY_WORLD["frames"], height=TOY_WORLD["height"], width=TOY_WORLD["width"], steps=8,
                guide_scale=plan.guidance, shift=plan.teacher_shift, prompt="a red circle moving left")


def toy_student_defaults() -> dict:
    """The toy student's settings: the demo's student sampling (4 steps, no CFG, its shift)."""
    from vdot_jax.demo import DemoPlan

    plan = DemoPlan()
    return {**toy_defaults(), "steps": plan.student_steps, "guide_scale": 1.0, "shift": plan.student_shift}


class Server:
    """One model in memory at a time (switching models frees the last one); requests run one by one (the page's
    queue has concurrency 1, and a lock guards against other callers)."""

    def __init__(self, models: list[str] | None = None, *, max_frames: int = 81, out_dir: str | None = None,
                 log=None, mesh=None, annotators: dict | None = None, toy_student: str | None = None):
        self.models = list(models or [])
        self.toy_student = toy_student  # a vdot demo student folder, served beside the toy teacher (no --model)
        self.annotators = dict(annotators or {})  # {task: weights}: vdot ui --annotator, checked by commands/ui
        self.mesh = mesh  # as vdot generate --mesh: "fsdp=4,context=2" or a Mesh
        self.max_frames = int(max_frames)
        self.out = Path(out_dir or tempfile.mkdtemp(prefix="vdot-ui-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: None)
        self._lock = threading.Lock()
        self._loaded: tuple[str, object] | None = None
        self._count = 0

    @property
    def choices(self) -> list[str]:
        return self.models or ([TOY, TOY_STUDENT] if self.toy_student else [TOY])

    def defaults(self, model: str | None = None) -> dict:
        """The page's settings for ``model``: the toy's tuned ones, or what the model directory records (vdot
        convert / export: the student's 4 steps without CFG, the teacher's 50 with CFG 5)."""
        model = model or self.choices[0]
        if model == TOY:
            return toy_defaults()
        if model == TOY_STUDENT:
            return toy_student_defaults()
        if model not in self.choices:
            raise UIError(f"unknown model {model!r}; this server has {', '.join(self.choices)}.")
        from vdot_jax.sampling.pipeline import sampling_defaults

        return sampling_defaults(model)

    def pipeline(self, model: str):
        if model not in self.choices:
            raise UIError(f"unknown model {model!r}; this server has {', '.join(self.choices)}.")
        if self._loaded is None or self._loaded[0] != model:
            self._loaded = None  # free the previous model before loading the next
            from vdot_jax.sampling.pipeline import Pipeline

            if model in (TOY, TOY_STUDENT):
                pipe = toy_pipeline(self.mesh, self.toy_student if model == TOY_STUDENT else None)
            else:
                pipe = Pipeline.load(model, mesh=self.mesh, log=self.log)
            self._loaded = (model, pipe)
        return self._loaded[1]

    def _path(self, name: str) -> Path:
        self._count += 1
        return self.out / f"{self._count:05d}_{name}.mp4"

    def first_frame(self, src_video) -> np.ndarray | None:
        """The upload's first frame at its own size (uint8), the canvas a mask or box is drawn on; None when it
        cannot be read (the request that uses it says why)."""
        from vdot_jax.data import video_io

        if not src_video:
            return None
        try:
            frame = (video_io.read_image(src_video) if video_io.is_image_path(src_video)
                     else video_io.read_video(src_video, num_frames=1, sampling="first")[0])
        except (VdotError, OSError, ValueError):
            return None
        return video_io.to_uint8(frame)

    def mask_file(self, layers) -> str | None:
        """Layers drawn on the first frame (RGBA arrays: painted where alpha > 0) -> a mask image file (white =
        generate), read as an uploaded mask is; None when nothing was drawn."""
        from vdot_jax.data.video_io import write_image

        painted = [np.asarray(a) for a in layers or [] if a is not None and np.ndim(a) == 3]
        painted = [a[..., 3] > 0 if a.shape[-1] == 4 else a.max(-1) > 0 for a in painted]
        if not painted or not any(m.any() for m in painted):
            return None
        shapes = {m.shape for m in painted}
        if len(shapes) > 1:
            raise UIError(f"the drawn layers have different sizes ({', '.join(f'{w}x{h}' for h, w in shapes)}).")
        mask = np.logical_or.reduce(painted)
        self._count += 1
        path = self.out / f"{self._count:05d}_drawn_mask.png"
        return str(write_image(path, np.where(mask, 255, 0).astype(np.uint8)))

    def task_inputs(self, s: Settings, src_video=None, src_mask=None, ref_images=None, drawn=None):
        """Uploaded files (and a mask drawn on the first frame) -> the task's VCU: ``vdot prepare``'s build for
        what it makes from a raw video, else ``conditions.task_inputs`` (``vdot generate --task``)."""
        from vdot_jax import conditions as C

        s.check(self.max_frames)
        refs = list(ref_images or []) or None
        task, box = s.task, (s.box or "").strip()
        if task in self.annotators:  # the annotator runs on the uploaded raw video, as vdot prepare runs it
            if not src_video:
                raise UIError(f"upload a video for {task}: {ANNOTATED_HELP[task]}")
            if task == "track":
                if not box:
                    raise UIError("track follows a box on the first frame: type it as x1,y1,x2,y2.")
                return prepared("inpaint", s, src_video, box=box, track_model=self.annotators[task])
            return prepared(task, s, src_video, weights=self.annotators[task])
        if task in ANNOTATOR_TASKS:  # the finished output of the annotator, uploaded
            feeds = ANNOTATOR_TASKS[task][1]
            has_mask = bool(src_mask or drawn or box)
            if not refs if feeds == "r2v" else not src_video or (feeds == "inpaint" and not has_mask):
                raise UIError(annotator_reason(task) + ".")
            task = feeds
        if box and task not in ("inpaint", "layout"):
            raise UIError(f"a box is for tasks inpaint and layout, not {s.task}; clear the box field.")
        drawn = drawn if task in ("inpaint", "layout") else None
        if task in PREPARED or (task in ("inpaint", "layout") and (box or drawn)):
            if src_mask and (box or drawn):
                raise UIError("give one mask: an uploaded mask file, a mask drawn on the first frame, or a box.")
            if drawn and box:
                raise UIError("give a mask drawn on the first frame or a box, not both; clear one.")
            vcu = prepared(task, s, src_video, mask=drawn, box=box)
            return vcu if not refs else C.compose(vcu, C.task_inputs("r2v", ref_images=refs, frames=s.frames,
                                                                     height=s.height, width=s.width))
        spec = C.TASKS[task]
        return C.task_inputs(
            task, src_video=src_video if spec.src_video else None,
            src_mask=src_mask if spec.src_mask == "yes" else None, ref_images=refs,
            frames=s.frames, height=s.height, width=s.width, expand=s.expand if task == "outpaint" else None,
            clip_frames=s.clip_frames if task.endswith("_clip") else None)

    def check_prompt(self, model: str, s: Settings) -> None:
        """A prompt longer than the text encoder reads is refused (vdot generate cuts it and warns)."""
        pipe = self.pipeline(model)
        te = pipe.text_encoder
        tok = getattr(getattr(te, "tokenizer", None), "tokenizer", None)  # umT5's (the toy's encoder checks its own)
        if tok is None:
            return
        for what, text in (("prompt", s.prompt), ("negative prompt", s.negative_prompt)):
            if tok.encode(text, add_special_tokens=True).overflowing:  # what PromptTokenizer would cut
                raise UIError(f"the {what} is longer than the text encoder's {te.text_len} tokens; shorten it.")

    def preview(self, s: Settings, src_video=None, src_mask=None, ref_images=None, drawn=None) -> Path:
        """The task's input as the model sees it: the video (grey where content is generated) beside its mask."""
        from vdot_jax import conditions as C
        from vdot_jax.data.video_io import to_uint8, write_video

        vcu = self.task_inputs(s, src_video, src_mask, ref_images, drawn)
        frames = C.frames_from_video(vcu.frames[0])  # [F, H, W, 3] in [-1, 1]
        mask = np.repeat(C.frames_from_video(vcu.masks[0]) * 2.0 - 1.0, 3, axis=-1)
        return write_video(self._path("preview"), to_uint8(np.concatenate([frames, mask], axis=2)), fps=8)

    def generate(self, model: str, s: Settings, src_video=None, src_mask=None, ref_images=None,
                 on_step=None, drawn=None) -> tuple[Path, str, str]:
        """-> (mp4, settings line, the ``vdot generate`` command that reproduces it)."""
        with self._lock:
            vcu = self.task_inputs(s, src_video, src_mask, ref_images, drawn)  # bad inputs stop before the model
            self.check_prompt(model, s)
            pipe = self.pipeline(model)
            pipe.log = on_step or (lambda msg: None)
            result = pipe.generate(s.prompt, negative_prompt=s.negative_prompt, vcu=vcu, steps=s.steps,
                                   guide_scale=s.guide_scale, shift=s.shift, seed=s.seed,
                                   progress="log" if on_step is not None else False)
            summary = result.summary()  # before writing: the page shows no server path
            path = self._path("result")
            result.write(path)
            return path, f"{summary}, seed {s.seed}", command(model, s, src_video, src_mask, ref_images, drawn,
                                                              self.mesh, annotated=s.task in self.annotators)


def prepared(task: str, s: Settings, src_video, *, mask=None, box: str = "", weights=None, track_model=None):
    """``vdot prepare TASK`` of the page's fields (its own parser and ``build``: one implementation of boxes,
    masks, grey, edges, layouts and frame references) -> the VCU it would write."""
    import argparse

    from vdot_jax.commands import prepare

    argv = ["prepare", task, "--frames", str(s.frames), "--height", str(s.height), "--width", str(s.width),
            "--out", "unused"]
    argv += [f"--src-video={src_video}"] if src_video else []
    argv += [f"--mask={mask}"] if mask else []
    argv += [f"--box={box}"] if box else []
    argv += [f"--weights={weights}"] if weights else []
    argv += [f"--track-model={track_model}"] if track_model else []
    parser = argparse.ArgumentParser(prog="vdot", exit_on_error=False)
    prepare.register(parser.add_subparsers(dest="command"))
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:  # not reached through the page's fields
        raise UIError(f"vdot prepare {task} cannot take these fields ({e}).") from None
    prepare.check_options(args)
    return prepare.build(args)


def _prepare_line(task: str, s: Settings, src_video, drawn, box: str, annotated: str | None = None) -> list:
    args = ["vdot", "prepare", task, "--frames", s.frames, "--height", s.height, "--width", s.width]
    args += ["--src-video", Path(src_video).name] if src_video else []
    args += ["--mask", "drawn_mask.png"] if drawn else []
    args += ["--box", box] if box else []
    # the server's weights path is not shown: the user gives their own
    args += {"track": ["--track-model", "SAM2_DIR"], None: []}.get(annotated, ["--weights", "WEIGHTS"])
    return args + ["--out", "prep"]


def command(model: str, s: Settings, src_video=None, src_mask=None, ref_images=None, drawn=None,
            mesh=None, annotated: bool = False) -> str:
    """The ``vdot generate`` line with the same task, files and settings (uploads named by their file names;
    a drawn mask, a box, grey, edges and frame references first made by the ``vdot prepare`` line)."""
    task, box = ANNOTATOR_TASKS.get(s.task, (None, s.task))[1], (s.box or "").strip()
    prep = task in PREPARED or (task in ("inpaint", "layout") and bool(box or drawn)) or annotated
    from vdot_jax.conditions import TASKS

    files, prep_task = [], task
    if prep:  # prepare's files follow the release's conventions: no --task
        files = ["--src-video", "prep/src_video.mp4"] + (["--src-mask", "prep/src_mask.mp4"]
                                                           if task in ("inpaint", "frameref") else [])
        task = None
    args = ["vdot", "generate", "--model", "MODEL_DIR" if model in (TOY, TOY_STUDENT) else model] + (
        ["--task", task] if task else []) + [
            "--prompt", s.prompt, "--frames", s.frames, "--height", s.height, "--width", s.width,
            "--steps", s.steps, "--guide-scale", f"{s.guide_scale:g}", "--shift", f"{s.shift:g}", "--seed", s.seed]
    if mesh:
        args += ["--mesh", mesh if isinstance(mesh, str) else ",".join(f"{k}={v}" for k, v in mesh.shape.items())]
    if s.negative_prompt:
        args += ["--negative-prompt", s.negative_prompt]
    args += files
    if src_video and not prep and TASKS[task].src_video:
        args += ["--src-video", Path(src_video).name]
    if src_mask and not prep and task in ("inpaint", "mv2v"):
        args += ["--src-mask", Path(src_mask).name]
    if ref_images:
        args += ["--ref-images", ",".join(Path(p).name for p in ref_images)]
    if task == "outpaint":
        args += ["--expand", s.expand]
    if task and task.endswith("_clip"):
        args += ["--clip-frames", s.clip_frames]
    line = shlex.join(str(a) for a in args)
    if prep:
        line = shlex.join(str(a) for a in _prepare_line(prep_task, s, src_video, drawn, box,
                                                        s.task if annotated else None)) + " && " + line
    if model in (TOY, TOY_STUDENT):  # vdot generate takes converted models; the toy ones need the toy encoders
        line += "  # with a converted model directory; the toy teacher and student run in vdot demo and vdot ui"
    return line
