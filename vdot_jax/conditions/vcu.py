"""The Video Condition Unit (VCU), the task table and the builders of every task's VCU (arrays in, VCU out).

A VCU is ``[text; frames F; masks M; reference images]`` (docs/method.md, "Conditions").

**Conventions.** Frames and references are RGB float32 in [-1, 1]; grey 127.5 is 0 ("missing content").
Masks are binary, 1 = generate, 0 = keep; ``VCU`` binarises at 0.5 when it is built, so the frame split
and the 64 mask channels see the same mask (the release and diffusers binarise only for the split and
pass a soft mask straight into the mask channels -- identical for binary masks).

**Tasks** (``TASKS``): every VACE task is one entry, naming the VCU kind it makes, how it is built (its family:
a builder here and a reader in ``conditions.files``) and which files it takes. A new task of a known family
(another control signal, say) is one entry; a new family also needs its builder below and its reader there.

**Composites** (``compose``): references are concatenated in the order given; text and reference units
leave frames alone; frame-level units combine as the release's ``CompositionAnnotator`` does, with the
"kind" of each unit (control / repaint / extension):

* extension + anything: the extension's kept frames win: ``F = F_ext (1 - M_ext) + F_other M_ext``,
  ``M = M_ext * M_other``;
* repaint + control: the control fills the region to repaint: ``F = F_rep (1 - M_rep) + F_ctl M_rep``,
  ``M = M_rep``;
* repaint + repaint, control + control: the later unit wins inside its mask:
  ``F = F_1 (1 - M_2) + F_2 M_2``, ``M = max(M_1, M_2)``.

The first two rules do not depend on the order of the units. The release's code does for
(control|repaint, extension): there the control overwrites the extension's kept frames; this module keeps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vdot_jax.errors import VdotError

KINDS = ("text", "reference", "control", "repaint", "extension")
WAN_STRIDE = (4, 8, 8)
WAN_PATCH = (1, 2, 2)


class ConditionError(VdotError, ValueError):
    """Task inputs that do not fit together (the message says what was expected)."""


# ----------------------------------------------------------------------------- the task table


@dataclass(frozen=True)
class Task:
    """One VACE task: the VCU it makes and the files ``conditions.files.task_inputs`` takes for it.

    kind: the VCU's kind (``KINDS``), which decides how it composes; family: how the VCU is built --
    "text" (``t2v``/``r2v``), "control" (``v2v``), "release" (the release's file conventions,
    ``read_task_inputs``), "inpaint", "outpaint", "extension" (``extend``); src_video: what the source video
    must be ("" = the task takes none); src_mask: "no" (refused), "yes" (needed) or "own" (the task makes its
    mask; refused); refs: reference images needed (every task accepts them).
    """

    kind: str
    family: str
    src_video: str = ""
    src_mask: str = "no"
    refs: bool = False


_CONTROL = Task("control", "control", src_video="a control video")
_EXTEND_FRAMES = Task("extension", "extension", src_video="the video or image to extend", src_mask="own")
_EXTEND_CLIPS = Task("extension", "extension", src_video="the video to extend", src_mask="own")

TASKS = {
    "t2v": Task("text", "text"),
    "r2v": Task("reference", "text", refs=True),
    "depth": _CONTROL, "pose": _CONTROL, "scribble": _CONTROL, "flow": _CONTROL, "gray": _CONTROL, "layout": _CONTROL,
    "v2v": Task("control", "release", src_video="a control video"),  # a control video of any kind
    "mv2v": Task("repaint", "release", src_video="the video to edit", src_mask="yes"),  # masked editing
    "inpaint": Task("repaint", "inpaint", src_video="the video to inpaint", src_mask="yes"),
    "outpaint": Task("repaint", "outpaint", src_video="the video to outpaint", src_mask="own"),
    "first_frame": _EXTEND_FRAMES, "last_frame": _EXTEND_FRAMES, "first_clip": _EXTEND_CLIPS,
    "last_clip": _EXTEND_CLIPS, "first_last_frame": _EXTEND_FRAMES, "first_last_clip": _EXTEND_CLIPS,
}
CONTROL_KINDS = tuple(n for n, t in TASKS.items() if t.family == "control")
EXTENSION_MODES = tuple(n for n, t in TASKS.items() if t.family == "extension")


def _unit(task: str, frames, masks, refs=None) -> VCU:
    """A VCU of a task in the table (its kind from there)."""
    return VCU(frames, masks, refs, task=task, kind=TASKS[task].kind)


# ----------------------------------------------------------------------------- the VCU


@dataclass
class VCU:
    """A batch of Video Condition Units.

    frames: float32 [B, 3, T, H, W] in [-1, 1]; masks: float32 [B, 1, T, H, W], binarised at 0.5 on
    construction (1 = generate, 0 = keep); refs: float32 [B, R, 3, H, W] in [-1, 1] (R may be 0),
    already letterboxed to the frame size; task: a name ("t2v", "depth", "inpaint", "r2v+pose", ...);
    kind: how the frames behave when composed, one of ``KINDS``.
    """

    frames: np.ndarray
    masks: np.ndarray
    refs: np.ndarray | None = None
    task: str = "t2v"
    kind: str = "text"

    def __post_init__(self):
        f = np.asarray(self.frames, np.float32)
        if f.ndim != 5 or f.shape[1] != 3:
            raise ConditionError(f"VCU frames must be [B, 3, T, H, W], got shape {f.shape}.")
        b, _, t, h, w = f.shape
        m = np.asarray(self.masks, np.float32)
        if m.ndim != 5 or m.shape[1] != 1:
            raise ConditionError(f"VCU masks must be [B, 1, T, H, W], got shape {m.shape}.")
        if m.shape != (b, 1, t, h, w):
            raise ConditionError(f"VCU masks {m.shape} do not match frames {f.shape} (expected {(b, 1, t, h, w)}).")
        r = np.zeros((b, 0, 3, h, w), np.float32) if self.refs is None else np.asarray(self.refs, np.float32)
        if r.ndim != 5 or r.shape[0] != b or r.shape[2:] != (3, h, w):
            raise ConditionError(f"VCU refs must be [B={b}, R, 3, H={h}, W={w}] (letterboxed to the frame size), "
                                 f"got shape {r.shape}.")
        if self.kind not in KINDS:
            raise ConditionError(f"VCU kind must be one of {KINDS}, got {self.kind!r}.")
        self.frames = f
        self.masks = (m > 0.5).astype(np.float32)
        self.refs = r

    @property
    def batch_size(self) -> int:
        return self.frames.shape[0]

    @property
    def num_frames(self) -> int:
        return self.frames.shape[2]

    @property
    def height(self) -> int:
        return self.frames.shape[3]

    @property
    def width(self) -> int:
        return self.frames.shape[4]

    @property
    def num_refs(self) -> int:
        return self.refs.shape[1]


# ----------------------------------------------------------------------------- array helpers


def video_from_frames(frames) -> np.ndarray:
    """[F, H, W, C] (what ``video_io.read_video`` returns) -> [1, C, F, H, W]."""
    a = np.asarray(frames, np.float32)
    if a.ndim != 4:
        raise ConditionError(f"frames must be [F, H, W, C], got shape {a.shape}.")
    return np.ascontiguousarray(a.transpose(3, 0, 1, 2)[None])


def frames_from_video(video) -> np.ndarray:
    """[B, C, F, H, W] (or [C, F, H, W]) -> [B, F, H, W, C] (or [F, H, W, C]), e.g. for ``write_video``."""
    a = np.asarray(video)
    if a.ndim == 4:
        return a.transpose(1, 2, 3, 0)
    if a.ndim == 5:
        return a.transpose(0, 2, 3, 4, 1)
    raise ConditionError(f"video must be [B, C, F, H, W] or [C, F, H, W], got shape {a.shape}.")


def _as_video(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float32)
    if a.ndim == 4:
        a = a[None]
    if a.ndim != 5 or a.shape[1] != 3:
        raise ConditionError(f"{name} must be [B, 3, T, H, W] or [3, T, H, W] in [-1, 1], got shape {a.shape}.")
    return a


def _as_mask(x, like: np.ndarray, name: str = "mask") -> np.ndarray:
    m = np.asarray(x, np.float32)
    if m.ndim == 4:
        m = m[None]
    if m.ndim == 5 and m.shape[1] == 3:  # an RGB mask: channel 0, as the release reads mask videos
        m = m[:, :1]
    b, _, t, h, w = like.shape
    if m.ndim != 5 or m.shape[1] != 1 or m.shape[2:] != (t, h, w) or m.shape[0] not in (1, b):
        raise ConditionError(f"{name} must be [B, 1, T, H, W] matching the video {like.shape}, got shape {m.shape}.")
    return np.broadcast_to((m > 0.5).astype(np.float32), (b, 1, t, h, w)).copy()


def _resize_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
    """[n_out, n_in] float32 weights of linear interpolation with half-pixel centres.

    ``antialias=False`` is torch's ``interpolate(mode="bilinear", align_corners=False)`` exactly (the
    source coordinate ``(i + 0.5) * n_in / n_out - 0.5`` in float32, clamped at 0, edge-replicated);
    ``antialias=True`` widens the triangle by the shrink factor (PIL / torch ``antialias=True``).
    """
    if n_in == n_out:
        return np.eye(n_out, dtype=np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    w = np.zeros((n_out, n_in), np.float32)
    if not antialias or scale <= 1:
        src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        src = np.maximum(src, np.float32(0))
        i0 = src.astype(np.int64)
        i1 = np.minimum(i0 + 1, n_in - 1)
        l1 = src - i0.astype(np.float32)
        l0 = np.float32(1) - l1
        rows = np.arange(n_out)
        np.add.at(w, (rows, i0), l0)
        np.add.at(w, (rows, i1), l1)
        return w
    support = scale  # triangle of half-width `scale` source pixels
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(0, int(math.floor(center - support))), min(n_in, int(math.ceil(center + support)))
        js = np.arange(lo, hi)
        k = np.maximum(0.0, 1.0 - np.abs((js + 0.5 - center) / support))
        w[i, lo:hi] = k / k.sum()
    return w


def resize(x, height: int, width: int, antialias: bool = True) -> np.ndarray:
    """Bilinear resize of the last two axes of a float array (see ``_resize_matrix``)."""
    a = np.asarray(x, np.float32)
    h, w = a.shape[-2:]
    if (h, w) == (height, width):
        return a
    wy = _resize_matrix(h, height, antialias)
    wx = _resize_matrix(w, width, antialias)
    return np.einsum("yh,...hw,xw->...yx", wy, a, wx, optimize=True).astype(np.float32)


def letterbox(image, height: int, width: int) -> np.ndarray:
    """[3, h, w] in [-1, 1] -> [3, height, width]: aspect kept, centred on a white (1.0) canvas.

    The release's rule: ``scale = min(height / h, width / w)``, size ``int(h * scale), int(w * scale)``,
    bilinear (``align_corners=False``, no antialiasing), offsets ``(canvas - size) // 2``; an image
    already of the canvas size is returned unchanged.
    """
    a = np.asarray(image, np.float32)
    if a.ndim != 3 or a.shape[0] != 3:
        raise ConditionError(f"a reference image must be [3, H, W] in [-1, 1], got shape {a.shape}.")
    h, w = a.shape[1:]
    if (h, w) == (height, width):
        return a.copy()
    scale = min(height / h, width / w)
    nh, nw = int(h * scale), int(w * scale)
    if nh < 1 or nw < 1:
        raise ConditionError(f"a reference image of {w}x{h} pixels shrinks to {nw}x{nh} (0 pixels) in the "
                             f"{width}x{height} frame; crop it to a less extreme aspect ratio.")
    canvas = np.ones((3, height, width), np.float32)
    top, left = (height - nh) // 2, (width - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = resize(a, nh, nw, antialias=False)
    return canvas


def _as_refs(refs, height: int, width: int, batch_size: int | None = None) -> np.ndarray:
    """References -> [B, R, 3, height, width]: an array [B,R,3,H,W] / [R,3,H,W] / [3,H,W] at the frame
    size, or a list of [3, h, w] images of any size (one sample), or a list of such lists (a batch)."""
    if refs is None:
        return np.zeros((batch_size or 1, 0, 3, height, width), np.float32)
    if isinstance(refs, (list, tuple)):
        if refs and isinstance(refs[0], (list, tuple)):
            per = [[letterbox(r, height, width) for r in sample] for sample in refs]
            if len({len(p) for p in per}) > 1:
                raise ConditionError(f"every sample needs the same number of references, got {[len(p) for p in per]}.")
            out = np.stack([np.stack(p) if p else np.zeros((0, 3, height, width), np.float32) for p in per])
        else:
            out = (np.stack([letterbox(r, height, width) for r in refs])[None] if refs
                   else np.zeros((1, 0, 3, height, width), np.float32))
    else:
        a = np.asarray(refs, np.float32)
        if a.ndim == 3:
            a = letterbox(a, height, width)[None, None]
        elif a.ndim == 4:
            a = np.stack([letterbox(r, height, width) for r in a])[None]
        elif a.ndim == 5:
            a = np.stack([np.stack([letterbox(r, height, width) for r in s]) for s in a]) if a.shape[1] else a
        else:
            raise ConditionError(f"references must be [B, R, 3, H, W], [R, 3, H, W] or [3, H, W], got shape {a.shape}.")
        out = a
    if batch_size is not None and out.shape[0] != batch_size:
        if out.shape[0] == 1:
            out = np.repeat(out, batch_size, axis=0)
        else:
            raise ConditionError(f"references are for {out.shape[0]} samples, the video batch has {batch_size}.")
    return out.astype(np.float32)


def check_num_frames(num_frames: int, stride_t: int, what: str = "num_frames") -> int:
    n = int(num_frames)
    if n < 1 or (n - 1) % stride_t:
        lo = (max(n, 1) - 1) // stride_t * stride_t + 1
        raise ConditionError(f"{what} must be 1 + {stride_t}k (e.g. {lo} or {lo + stride_t}) for the VAE's "
                             f"temporal stride {stride_t}, got {num_frames}.")
    return n


# ----------------------------------------------------------------------------- builders


def t2v(num_frames: int, height: int, width: int, batch_size: int = 1) -> VCU:
    """Text-to-video: frames zero (grey), masks one."""
    shape = (batch_size, 3, int(num_frames), int(height), int(width))
    return _unit("t2v", np.zeros(shape, np.float32), np.ones((batch_size, 1) + shape[2:], np.float32))


def r2v(refs, num_frames: int, height: int, width: int, batch_size: int | None = None) -> VCU:
    """Reference-to-video: T2V frames and masks plus references (letterboxed on white if not H x W)."""
    r = _as_refs(refs, height, width, batch_size)
    base = t2v(num_frames, height, width, r.shape[0])
    return _unit("r2v", base.frames, base.masks, r)


def v2v(control, kind: str = "depth") -> VCU:
    """Control-to-video: the control video (depth, pose, scribble, flow, gray, layout) as frames, masks one."""
    if kind not in CONTROL_KINDS:
        raise ConditionError(f"control kind must be one of {CONTROL_KINDS}, got {kind!r}.")
    f = _as_video(control, f"the {kind} control video")
    return _unit(kind, f, np.ones((f.shape[0], 1) + f.shape[2:], np.float32))


def inpaint(video, mask, grey_masked: bool = True) -> VCU:
    """Inpainting: the video with mask (1 = regenerate). ``grey_masked`` blanks the region to regenerate
    to grey 0, as the release's inpainting annotator does (mask colour 128), so the original content
    there does not leak through the reactive latent."""
    f = _as_video(video, "the video to inpaint")
    m = _as_mask(mask, f)
    if grey_masked:
        f = f * (1.0 - m)
    return _unit("inpaint", f, m)


def outpaint(video, top: float = 0.0, bottom: float = 0.0, left: float = 0.0, right: float = 0.0,
             height: int | None = None, width: int | None = None) -> VCU:
    """Outpainting: the video placed in a larger grey canvas; mask 1 on the new border.

    Expansion ratios are fractions of the video's own size per side (the release's annotator:
    ``int(ratio * size)`` pixels each). With ``height`` and ``width`` the canvas is exactly that size:
    the video is resized (bilinear, antialiased) to ``round(height / (1 + top + bottom))`` x
    ``round(width / (1 + left + right))`` and the remaining border split between the sides in the
    ratios' proportion.
    """
    f = _as_video(video, "the video to outpaint")
    for name, r in (("top", top), ("bottom", bottom), ("left", left), ("right", right)):
        if r < 0:
            raise ConditionError(f"outpaint ratio {name} must be >= 0, got {r}.")
    b, _, t, h, w = f.shape
    if height is None and width is None:
        up, down, lft, rgt = int(top * h), int(bottom * h), int(left * w), int(right * w)
        ch, cw = h + up + down, w + lft + rgt
    elif height is None or width is None:
        raise ConditionError("outpaint needs both height and width, or neither.")
    else:
        ih, iw = round(height / (1.0 + top + bottom)), round(width / (1.0 + left + right))
        if ih < 1 or iw < 1:
            raise ConditionError(f"outpainting expansion {top:g},{bottom:g},{left:g},{right:g} leaves the source "
                                 f"{iw}x{ih} (0 pixels) in the {width}x{height} frame; use smaller ratios (--expand).")
        f = resize(f, ih, iw, antialias=True)
        h, w, ch, cw = ih, iw, int(height), int(width)
        up = round((ch - h) * top / (top + bottom)) if top + bottom > 0 else 0
        lft = round((cw - w) * left / (left + right)) if left + right > 0 else 0
    canvas = np.zeros((b, 3, t, ch, cw), np.float32)
    canvas[..., up:up + h, lft:lft + w] = f
    mask = np.ones((b, 1, t, ch, cw), np.float32)
    mask[..., up:up + h, lft:lft + w] = 0.0
    return _unit("outpaint", canvas, mask)


def _as_clip(x, name: str) -> np.ndarray:
    a = np.asarray(x, np.float32)
    if a.ndim == 3:  # [3, H, W] image
        a = a[None, :, None]
    elif a.ndim == 4:  # [B, 3, H, W] images ([3, k, H, W] clips are ambiguous: pass [1, 3, k, H, W])
        a = a[:, :, None]
    if a.ndim != 5 or a.shape[1] != 3:
        raise ConditionError(f"{name} must be an image [3, H, W] / [B, 3, H, W] or a clip [B, 3, k, H, W], "
                             f"got shape {np.shape(x)}.")
    return a


def _kept_ends(mode: str) -> tuple[bool, bool]:
    """(first, last): which ends of the video an extension mode keeps."""
    return mode.startswith("first"), mode.startswith(("last", "first_last"))


def kept_frames(mode: str, clip_frames: int = 1) -> int:
    """Frames an extension mode keeps at each end: one for the ``*_frame`` modes, else ``clip_frames``."""
    k = 1 if mode.endswith("_frame") else int(clip_frames)
    if k < 1:
        raise ConditionError(f"clip_frames must be at least 1, got {clip_frames}.")
    return k


def extend(mode: str, num_frames: int, first=None, last=None) -> VCU:
    """Extension: known frames kept (mask 0), every other frame grey 0 and masked 1.

    ``first_frame``/``first_clip`` put ``first`` at the start, ``last_frame``/``last_clip`` put ``last``
    at the end, ``first_last_frame``/``first_last_clip`` both. Frames are images [3, H, W] / [B, 3, H, W]
    or clips [B, 3, k, H, W]; the result has ``num_frames`` frames.
    """
    if mode not in EXTENSION_MODES:
        raise ConditionError(f"extension mode must be one of {EXTENSION_MODES}, got {mode!r}.")
    need_first, need_last = _kept_ends(mode)
    if need_first != (first is not None) or need_last != (last is not None):
        wanted = " and ".join(n for n, k in (("first", need_first), ("last", need_last)) if k)
        given = " and ".join(n for n, x in (("first", first), ("last", last)) if x is not None) or "neither"
        raise ConditionError(f"extension mode {mode!r} takes {wanted} frames, got {given}.")
    parts = [_as_clip(x, n) for x, n in ((first, "first"), (last, "last")) if x is not None]
    if mode.endswith("_frame") and any(p.shape[2] != 1 for p in parts):
        raise ConditionError(f"extension mode {mode!r} takes single frames; use a *_clip mode for clips.")
    b = max(p.shape[0] for p in parts)
    h, w = parts[0].shape[3:]
    if any(p.shape[3:] != (h, w) or p.shape[0] not in (1, b) for p in parts):
        raise ConditionError(f"first and last frames must share batch and size, got {[p.shape for p in parts]}.")
    n = int(num_frames)
    known = sum(p.shape[2] for p in parts)
    if known > n:
        raise ConditionError(f"extension to {n} frames cannot keep {known} known frames.")
    frames = np.zeros((b, 3, n, h, w), np.float32)
    masks = np.ones((b, 1, n, h, w), np.float32)
    if first is not None:
        k = parts[0].shape[2]
        frames[:, :, :k], masks[:, :, :k] = parts[0], 0.0
    if last is not None:
        k = parts[-1].shape[2]
        frames[:, :, n - k:], masks[:, :, n - k:] = parts[-1], 0.0
    return _unit(mode, frames, masks)


def extension_from_video(video, mode: str, clip_frames: int = 1, num_frames: int | None = None) -> VCU:
    """Extension from a video: keep its first/last frame or ``clip_frames``-frame clip(s) as ``mode`` says
    (the release's ``FrameRefExtractAnnotator``), grey and mask the rest; ``num_frames`` frames in all
    (default: the video's own length, as in training)."""
    v = _as_video(video, "the video")
    k = kept_frames(mode, clip_frames)
    keep_first, keep_last = _kept_ends(mode)
    first = v[:, :, :k] if keep_first else None
    last = v[:, :, -k:] if keep_last else None
    return extend(mode, v.shape[2] if num_frames is None else num_frames, first=first, last=last)


def _combine(a: VCU, b: VCU) -> tuple[np.ndarray, np.ndarray, str]:
    """Frames, masks and kind of two frame-level units (see the module docstring)."""
    if a.kind in ("text", "reference"):
        return b.frames, b.masks, (b.kind if b.kind not in ("text", "reference") else "reference")
    if b.kind in ("text", "reference"):
        return a.frames, a.masks, a.kind
    if "extension" in (a.kind, b.kind):
        ext, other = (a, b) if a.kind == "extension" else (b, a)
        m = ext.masks
        return ext.frames * (1 - m) + other.frames * m, ext.masks * other.masks, "extension"
    if {a.kind, b.kind} == {"repaint", "control"}:
        rep, ctl = (a, b) if a.kind == "repaint" else (b, a)
        m = rep.masks
        return rep.frames * (1 - m) + ctl.frames * m, rep.masks, "repaint"
    m2 = b.masks  # repaint + repaint, control + control: the later unit wins inside its mask
    return a.frames * (1 - m2) + b.frames * m2, np.maximum(a.masks, b.masks), a.kind


def compose(*units: VCU) -> VCU:
    """A composite task (e.g. ``compose(r2v(...), v2v(pose))`` = "animate anything", ``compose(r2v, inpaint)``
    = "swap anything"): references concatenated in order, frames and masks combined pairwise, left to right,
    by the rules in the module docstring. All units need the same batch size, frame count and size."""
    if not units:
        raise ConditionError("compose needs at least one VCU.")
    shape = units[0].frames.shape
    for u in units[1:]:
        if u.frames.shape != shape:
            raise ConditionError(f"composed VCUs must share [B, 3, T, H, W]; got {shape} and {u.frames.shape} "
                                 f"({units[0].task} and {u.task}).")
    acc = units[0]
    for u in units[1:]:
        f, m, kind = _combine(acc, u)
        acc = VCU(f, m, np.concatenate([acc.refs, u.refs], axis=1), task=f"{acc.task}+{u.task}", kind=kind)
    return acc


def batch_vcus(vcus) -> VCU:
    """Stack single- or multi-sample VCUs along the batch axis (same T, H, W and number of references)."""
    vcus = list(vcus)
    if not vcus:
        raise ConditionError("batch_vcus needs at least one VCU.")
    ref = vcus[0]
    for v in vcus[1:]:
        if v.frames.shape[1:] != ref.frames.shape[1:] or v.num_refs != ref.num_refs:
            raise ConditionError(f"batched VCUs must share [3, T, H, W] and the number of references; got "
                                 f"{ref.frames.shape[1:]}/{ref.num_refs} ({ref.task}) and {v.frames.shape[1:]}/"
                                 f"{v.num_refs} ({v.task}).")
    tasks = [v.task for v in vcus]
    return VCU(np.concatenate([v.frames for v in vcus]), np.concatenate([v.masks for v in vcus]),
               np.concatenate([v.refs for v in vcus]),
               task=tasks[0] if len(set(tasks)) == 1 else ",".join(tasks),
               kind=vcus[0].kind)


