"""What the page does, without gradio: load a model, build a task's inputs from uploaded files, preview them,
generate, and say how ``vdot generate`` reproduces the result. ``vdot_jax.ui.app`` puts a Gradio page on it.

Task inputs go through ``vdot_jax.conditions.task_inputs`` (what ``vdot generate --task`` calls), so the page and
the command line cannot disagree. Every error a user can cause is a ``VdotError`` whose one sentence the page shows.
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
# The tasks the page offers: their files are uploads the page has widgets for.
TASK_CHOICES = ("t2v", "inpaint", "outpaint", "first_frame", "last_frame", "first_clip", "last_clip",
                "first_last_frame", "first_last_clip")


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


def toy_pipeline():
    """The shipped toy teacher with the toy world's own VAE and text encoder (as ``vdot demo`` samples it)."""
    from vdot_jax.data.pipeline import toy_vae_config
    from vdot_jax.demo import TOY_WORLD, DemoPlan, data_config, load_teacher
    from vdot_jax.models.toy_vae import ToyVAE
    from vdot_jax.sampling.pipeline import Pipeline

    vae = ToyVAE(toy_vae_config(data_config(DemoPlan())))
    text = ToyText(TOY_WORLD["text_dim"], TOY_WORLD["text_len"], TOY_WORLD["text_seed"])
    return Pipeline(load_teacher(), vae, text)


def toy_defaults() -> dict:
    """Sampling and size defaults of the toy teacher (``vdot demo``'s teacher settings, few steps)."""
    from vdot_jax.demo import TOY_WORLD, DemoPlan

    plan = DemoPlan()
    return dict(frames=TOY_WORLD["frames"], height=TOY_WORLD["height"], width=TOY_WORLD["width"], steps=8,
                guide_scale=plan.guidance, shift=plan.teacher_shift, prompt="a red circle moving left")


class Server:
    """One model in memory at a time (switching models frees the last one); requests run one by one (the page's
    queue has concurrency 1, and a lock guards against other callers)."""

    def __init__(self, models: list[str] | None = None, *, max_frames: int = 81, out_dir: str | None = None,
                 log=None):
        self.models = list(models or [])
        self.max_frames = int(max_frames)
        self.out = Path(out_dir or tempfile.mkdtemp(prefix="vdot-ui-"))
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = log or (lambda msg: None)
        self._lock = threading.Lock()
        self._loaded: tuple[str, object] | None = None
        self._count = 0

    @property
    def choices(self) -> list[str]:
        return self.models or [TOY]

    def defaults(self, model: str | None = None) -> dict:
        return toy_defaults() if (model or self.choices[0]) == TOY else {}

    def pipeline(self, model: str):
        if model not in self.choices:
            raise UIError(f"unknown model {model!r}; this server has {', '.join(self.choices)}.")
        if self._loaded is None or self._loaded[0] != model:
            self._loaded = None  # free the previous model before loading the next
            from vdot_jax.sampling.pipeline import Pipeline

            pipe = toy_pipeline() if model == TOY else Pipeline.load(model, log=self.log)
            self._loaded = (model, pipe)
        return self._loaded[1]

    def _path(self, name: str) -> Path:
        self._count += 1
        return self.out / f"{self._count:05d}_{name}.mp4"

    def task_inputs(self, s: Settings, src_video=None, src_mask=None, ref_images=None):
        """Uploaded files -> the task's VCU (the same function as ``vdot generate --task``)."""
        from vdot_jax import conditions as C

        s.check(self.max_frames)
        spec = C.TASKS[s.task]
        takes_video = bool(spec.src_video)
        return C.task_inputs(
            s.task, src_video=src_video if takes_video else None,
            src_mask=src_mask if spec.src_mask == "yes" else None, ref_images=list(ref_images or []) or None,
            frames=s.frames, height=s.height, width=s.width, expand=s.expand if s.task == "outpaint" else None,
            clip_frames=s.clip_frames if s.task.endswith("_clip") else None)

    def preview(self, s: Settings, src_video=None, src_mask=None, ref_images=None) -> Path:
        """The task's input as the model sees it: the video (grey where content is generated) beside its mask."""
        from vdot_jax import conditions as C
        from vdot_jax.data.video_io import to_uint8, write_video

        vcu = self.task_inputs(s, src_video, src_mask, ref_images)
        frames = C.frames_from_video(vcu.frames[0])  # [F, H, W, 3] in [-1, 1]
        mask = np.repeat(C.frames_from_video(vcu.masks[0]) * 2.0 - 1.0, 3, axis=-1)
        return write_video(self._path("preview"), to_uint8(np.concatenate([frames, mask], axis=2)), fps=8)

    def generate(self, model: str, s: Settings, src_video=None, src_mask=None, ref_images=None,
                 on_step=None) -> tuple[Path, str, str]:
        """-> (mp4, settings line, the ``vdot generate`` command that reproduces it)."""
        with self._lock:
            vcu = self.task_inputs(s, src_video, src_mask, ref_images)  # bad inputs stop before the model
            pipe = self.pipeline(model)
            pipe.log = on_step or (lambda msg: None)
            result = pipe.generate(s.prompt, negative_prompt=s.negative_prompt, vcu=vcu, steps=s.steps,
                                   guide_scale=s.guide_scale, shift=s.shift, seed=s.seed,
                                   progress="log" if on_step is not None else False)
            summary = result.summary()  # before writing: the page shows no server path
            path = self._path("result")
            result.write(path)
            return path, f"{summary}, seed {s.seed}", command(model, s, src_video, src_mask, ref_images)


def command(model: str, s: Settings, src_video=None, src_mask=None, ref_images=None) -> str:
    """The ``vdot generate`` line with the same task, files and settings (uploads named by their file names)."""
    args = ["vdot", "generate", "--model", "MODEL_DIR" if model == TOY else model, "--task", s.task,
            "--prompt", s.prompt, "--frames", s.frames, "--height", s.height, "--width", s.width,
            "--steps", s.steps, "--guide-scale", f"{s.guide_scale:g}", "--shift", f"{s.shift:g}", "--seed", s.seed]
    if s.negative_prompt:
        args += ["--negative-prompt", s.negative_prompt]
    if src_video:
        args += ["--src-video", Path(src_video).name]
    if src_mask and s.task == "inpaint":
        args += ["--src-mask", Path(src_mask).name]
    if ref_images:
        args += ["--ref-images", ",".join(Path(p).name for p in ref_images)]
    if s.task == "outpaint":
        args += ["--expand", s.expand]
    if s.task.endswith("_clip"):
        args += ["--clip-frames", s.clip_frames]
    line = shlex.join(str(a) for a in args)
    if model == TOY:  # vdot generate takes converted models; the toy teacher needs the toy world's encoders
        line += "  # with a converted model directory; the toy teacher runs in vdot demo and vdot ui"
    return line
