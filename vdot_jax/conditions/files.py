"""Files -> a VCU: the release's file conventions (``read_task_inputs``) and every task's files (``task_inputs``).

**The release's conventions** (``read_task_inputs``): grey 127 in ``src_video`` marks missing content, white in
``src_mask`` means generate (channel 0 read, [0, 255] -> [0, 1], binarised at 0.5), ``src_ref_images`` are
letterboxed onto a white canvas of the video size. Videos are resized to cover ``(height, width)`` and
centre-cropped (see ``vdot_jax.data.video_io``); ``num_frames`` must be 1 + 4k (1 + stride_t * k) -- a clear
error otherwise, never a silent trim; with ``num_frames=None`` the largest 1 + 4k frames the video has are spread
uniformly over it (the release's rule). ``height`` and ``width`` must be multiples of the VAE stride times the
patch size (16 for Wan).

**Every task** (``task_inputs``, what ``vdot generate`` and ``vdot_jax.generate`` call): the task's entry in
``conditions.vcu.TASKS`` says which files it takes; they are checked (one-sentence ``ConditionError``) before any
video is decoded, then read by its family's reader below and built by its builder.
"""

from __future__ import annotations

import math
import os

import numpy as np

from vdot_jax.conditions.vcu import (
    TASKS, VCU, WAN_PATCH, WAN_STRIDE, ConditionError, Task, check_num_frames, extension_from_video, inpaint,
    kept_frames, letterbox, outpaint, video_from_frames,
)
from vdot_jax.data import video_io


# ----------------------------------------------------------------------------- the release's conventions


def _ref_paths(src_ref_images) -> list[str]:
    if src_ref_images is None or src_ref_images == "":
        return []
    if isinstance(src_ref_images, (str, os.PathLike)):
        s = os.fspath(src_ref_images)
        return [p for p in s.split(",") if p] if "," in s and not os.path.exists(s) else [s]
    return [os.fspath(p) for p in src_ref_images if p]


def read_task_inputs(src_video=None, src_mask=None, src_ref_images=None, num_frames: int | None = 81,
                     height: int = 480, width: int = 832, *, task: str | None = None, sampling: str = "uniform",
                     fps: float | None = None, stride=WAN_STRIDE, patch=WAN_PATCH) -> VCU:
    """The release's file conventions -> a one-sample VCU (see the module docstring).

    ``src_video``: mp4 (grey 127 = missing content; without ``src_mask`` it is a control video, mask 1).
    ``src_mask``: mp4 of the same size and frame count (or one image used for every frame); white =
    generate. ``src_ref_images``: image paths (a list, or one comma-separated string as in the release's
    CLI). No ``src_video``: text-to-video (or reference-to-video) frames and masks. ``task`` names the
    result (default inferred: "t2v", "r2v", "v2v", "mv2v", "+r2v" appended when references are given).
    """
    st, sh, sw = (int(s) for s in stride)
    multiple = (sh * int(patch[1]), sw * int(patch[2]))
    height, width = int(height), int(width)
    if height <= 0 or width <= 0 or height % multiple[0] or width % multiple[1]:
        raise ConditionError(f"height and width must be positive multiples of {multiple[0]}x{multiple[1]} "
                             f"(VAE stride x patch size), got {height}x{width}.")
    if num_frames is not None:
        num_frames = check_num_frames(num_frames, st)
    if src_mask is not None and src_video is None:
        raise ConditionError(f"src_mask {os.fspath(src_mask)} was given without a src_video to apply it to.")

    if src_video is None:
        if num_frames is None:
            raise ConditionError("num_frames is needed when there is no src_video.")
        frames = np.zeros((1, 3, num_frames, height, width), np.float32)
        masks = np.ones((1, 1, num_frames, height, width), np.float32)
        name = "t2v"
    else:
        vpath = os.fspath(src_video)
        info = video_io.probe_video(vpath)
        if num_frames is None:
            if info.num_frames < 1:
                raise ConditionError(f"video file {vpath} has no frames.")
            num_frames = (info.num_frames - 1) // st * st + 1
        if src_mask is not None:
            mpath = os.fspath(src_mask)
            if video_io.is_image_path(mpath):
                mimg = video_io.read_image(mpath, normalize=False)
                if mimg.shape[:2] != (info.height, info.width):
                    raise ConditionError(f"mask image {mpath} is {mimg.shape[0]}x{mimg.shape[1]} but video {vpath} "
                                         f"is {info.height}x{info.width}; they must be the same size.")
            else:
                minfo = video_io.probe_video(mpath)
                if (minfo.height, minfo.width) != (info.height, info.width):
                    raise ConditionError(f"mask video {mpath} is {minfo.height}x{minfo.width} but video {vpath} is "
                                         f"{info.height}x{info.width}; they must be the same size.")
                if minfo.num_frames != info.num_frames:
                    raise ConditionError(f"mask video {mpath} has {minfo.num_frames} frames but video {vpath} has "
                                         f"{info.num_frames}; they must have the same length.")
        vid = video_io.read_video(vpath, num_frames=num_frames, size=(height, width), fps=fps, sampling=sampling)
        frames = video_from_frames(vid)
        if src_mask is None:
            masks = np.ones((1, 1) + frames.shape[2:], np.float32)
            name = "v2v"
        else:
            if video_io.is_image_path(mpath):
                m = video_io.resize_center_crop(mimg.astype(np.uint8), height, width)[None]
                m = np.repeat(m, num_frames, axis=0)
            else:
                m = video_io.read_video(mpath, num_frames=num_frames, size=(height, width), fps=fps,
                                        sampling=sampling, normalize=False)
            m = np.clip(m[..., 0].astype(np.float32) / 255.0, 0.0, 1.0)  # channel 0, white = 1 = generate
            masks = (m > 0.5).astype(np.float32)[None, None]
            name = "mv2v"

    paths = _ref_paths(src_ref_images)
    refs = []
    for p in paths:
        try:
            refs.append(letterbox(video_io.read_image(p).transpose(2, 0, 1), height, width))
        except ConditionError as e:
            raise ConditionError(f"reference image {p}: {e}") from None
    refs = np.stack(refs)[None] if refs else None
    kind = TASKS["r2v" if name == "t2v" and refs is not None else name].kind
    if refs is not None:
        name = "r2v" if name == "t2v" else f"r2v+{name}"
    return VCU(frames, masks, refs, task=task or name, kind=kind)



# ----------------------------------------------------------------------------- every task


def _parse_expand(expand) -> tuple[float, float, float, float]:
    if isinstance(expand, str):
        try:
            expand = [float(v) for v in expand.split(",")]
        except ValueError:
            raise ConditionError(f"outpainting expansion must be four numbers top,bottom,left,right, got {expand!r}.")
    vals = tuple(float(v) for v in expand)
    if len(vals) != 4 or not all(math.isfinite(v) and v >= 0 for v in vals) or not any(vals):
        raise ConditionError(f"outpainting expansion must be four ratios top,bottom,left,right >= 0, not all zero, "
                             f"got {expand!r}.")
    return vals


def _read_clip(path, height: int, width: int) -> np.ndarray:
    """An image or a video file -> [1, 3, k, H, W] in [-1, 1], resized to cover and centre-cropped."""
    if video_io.is_image_path(path):
        return video_io.read_image(path, size=(height, width)).transpose(2, 0, 1)[None, :, None]
    return video_from_frames(video_io.read_video(path, size=(height, width)))


def _check_files(name: str, spec: Task, src_video, src_mask, ref_images) -> None:
    """The files a task takes (its ``TASKS`` entry), before anything is read."""
    if not spec.src_video and (src_video is not None or src_mask is not None):
        raise ConditionError(f"task {name} takes no src_video or src_mask.")
    if spec.refs and not ref_images:
        raise ConditionError(f"task {name} needs reference images (ref_images).")
    if spec.src_video and spec.src_mask == "no" and (src_video is None or src_mask is not None):
        raise ConditionError(f"task {name} needs {spec.src_video} as src_video and no src_mask.")
    if spec.src_mask == "yes" and (src_video is None or src_mask is None):
        raise ConditionError(f"task {name} needs both src_video and src_mask.")
    if spec.src_mask == "own":
        if src_video is None:
            raise ConditionError(f"task {name} needs src_video ({spec.src_video}).")
        if src_mask is not None:
            raise ConditionError(f"task {name} makes its own mask; do not pass src_mask.")


def _with_refs(base: VCU, refs: np.ndarray) -> VCU:
    return VCU(base.frames, base.masks, refs, task=base.task + ("+r2v" if refs.shape[1] else ""), kind=base.kind)


def task_inputs(task: str | None = None, *, src_video=None, src_mask=None, ref_images=None, frames: int = 81,
                height: int = 480, width: int = 832, expand=None, clip_frames: int | None = None) -> VCU:
    """Files -> a one-sample VCU, for every task in ``TASKS``.

    ``task=None`` (or "t2v", "r2v", "v2v", "mv2v", a control kind): the release's file conventions
    (``read_task_inputs``): no ``src_video`` is text-to-video, ``src_video`` alone a control video, with
    ``src_mask`` masked editing (grey 127 in the video marks missing content, white in the mask means generate).
    The others build the VCU from a plain video:

    * ``"inpaint"``: ``src_video`` + ``src_mask``; the region to regenerate is greyed out first.
    * ``"outpaint"``: ``src_video`` placed in a larger canvas; ``expand=(top, bottom, left, right)`` ratios of
      the video's size; the canvas is ``height`` x ``width``.
    * extension (``first_frame``, ``last_frame``, ``first_clip``, ``last_clip``, ``first_last_frame``,
      ``first_last_clip``): ``src_video`` (an image or a video) gives the kept frames -- its first and/or
      last ``clip_frames`` frames (1 for the ``*_frame`` modes) -- and the rest of ``frames`` is generated.

    ``ref_images`` (paths, or one comma-separated string) are letterboxed and added to any task. Every
    inconsistency raises a ``ConditionError`` whose message is one sentence naming what was expected.
    """
    spec = TASKS.get(task) if task is not None else None
    if task is not None and spec is None:
        raise ConditionError(f"unknown task {task!r}; choose one of {', '.join(TASKS)} (or leave it out to follow "
                             f"the files).")
    if spec is not None:
        _check_files(task, spec, src_video, src_mask, ref_images)
    family = spec.family if spec is not None else "release"
    if family == "outpaint" and expand is None:
        raise ConditionError("task outpaint needs expand=(top, bottom, left, right) ratios, e.g. 0,0,0.25,0.25.")
    if family != "outpaint" and expand is not None:
        raise ConditionError(f"expand is for task outpaint, not {task or 'the files given'}.")

    if family in ("text", "release", "control", "inpaint"):
        vcu = read_task_inputs(src_video, src_mask, ref_images, num_frames=frames, height=height, width=width,
                               task=task if family in ("control", "inpaint") else None)
        return _with_refs(inpaint(vcu.frames, vcu.masks), vcu.refs) if family == "inpaint" else vcu
    # Validate size and frame count before reading anything (the same rules as read_task_inputs).
    refs = read_task_inputs(None, None, ref_images, num_frames=frames, height=height, width=width).refs
    if family == "outpaint":
        ratios = _parse_expand(expand)
        video = video_from_frames(video_io.read_video(src_video, num_frames=frames))
        return _with_refs(outpaint(video, *ratios, height=height, width=width), refs)
    k = kept_frames(task, clip_frames or 1)
    clip = _read_clip(src_video, height, width)
    if clip.shape[2] < k:
        raise ConditionError(f"{os.fspath(src_video)} has {clip.shape[2]} frames; task {task} keeps {k}.")
    return _with_refs(extension_from_video(clip, task, k, num_frames=frames), refs)
