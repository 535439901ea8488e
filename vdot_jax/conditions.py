"""The Video Condition Unit (VCU): task inputs -> the VACE context. One module for training and generation.

A VCU is ``[text; frames F; masks M; reference images]`` (docs/method.md, "Conditions"). This module builds VCUs
for every task, reads them from the release's file conventions, and packs them into the context the
VACE blocks consume. Public API::

    VCU(frames [B,3,T,H,W] in [-1,1], masks [B,1,T,H,W] in {0,1}, refs [B,R,3,H,W] in [-1,1], task, kind)

    # builders (arrays channels-first, values in [-1, 1]; [3,T,H,W] / [1,T,H,W] get a batch axis)
    t2v(num_frames, height, width, batch_size=1)
    r2v(refs, num_frames, height, width)                      # refs letterboxed onto a white canvas
    v2v(control, kind="depth")                                # depth/pose/scribble/flow/gray/layout
    inpaint(video, mask)                                      # masked region greyed (0), mask 1 there
    outpaint(video, top=, bottom=, left=, right=, height=None, width=None)
    extend(mode, num_frames, first=None, last=None)           # first_frame, last_frame, first_clip,
    extension_from_video(video, mode, clip_frames=1)          #   last_clip, first_last_frame, first_last_clip
    compose(*vcus)                                            # composites (rules below)
    batch_vcus(vcus)                                          # stack samples along the batch axis

    read_task_inputs(src_video=None, src_mask=None, src_ref_images=None, num_frames=81, height=480, width=832)

    vace_context(vcu, vae) -> [B, 2*z + sh*sw, R + f, h, w]   # 96 channels for Wan (16 + 16 + 64)
    latent_frames(num_frames, vae); latent_shape(vae, ...); noise_shape(vcu, vae)
    drop_reference_frames(latents, num_refs)
    letterbox(image [3,h,w], height, width); video_from_frames / frames_from_video (layout changes)

**Conventions.** Frames and references are RGB float32 in [-1, 1]; grey 127.5 is 0 ("missing content").
Masks are binary, 1 = generate, 0 = keep; ``VCU`` binarises at 0.5 when it is built, so the frame split
and the 64 mask channels see the same mask (the release and diffusers binarise only for the split and
pass a soft mask straight into the mask channels -- identical for binary masks).

**The context** (``vace_context``; the same numbers as diffusers' ``WanVACEPipeline``
``prepare_video_latents`` + ``prepare_masks`` + concatenation):
``inactive = F * (1 - M)``, ``reactive = F * M``, each VAE-encoded (posterior mean) and normalised
(``(z - mean) / std``) -> ``2z`` channels. Each reference image is encoded alone as a one-frame video,
given ``z`` zero channels and prepended in time, in the order given (the VACE release's order; diffusers
reverses several references, see ``REFERENCE_ORDERS``). The pixel mask is space-to-depth'ed by the VAE's
spatial stride: channel ``sy * sw + sx`` of latent pixel ``(i, j)`` is pixel ``(i*sh + sy, j*sw + sx)``; in time it is
nearest-exact resized from T to the latent frame count f: latent frame k takes pixel frame
``floor((k + 1/2) * T / f)`` (for T = 17, f = 5: frames 1, 5, 8, 11, 15 -- not the VAE's own causal
grouping, but what the release and diffusers feed the pretrained model). Reference frames get zero masks.
Channel order: ``[inactive (z), reactive (z), mask (sh*sw)]``.

**Known content is not re-encoded.** When ``inactive`` or ``reactive`` of a sample is all zeros
(text-to-video, control videos' inactive part, the reactive part of the builders' extension and greyed
inpainting) its latent is the encode of zeros, computed once per (VAE, shape) and cached (``ZERO_LATENTS``);
results are identical, and at four sampling steps the VAE is most of the run time.

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

**Files** (``read_task_inputs``, the release's conventions): grey 127 in ``src_video`` marks missing
content, white in ``src_mask`` means generate (channel 0 read, [0, 255] -> [0, 1], binarised at 0.5),
``src_ref_images`` are letterboxed onto a white canvas of the video size. Videos are resized to cover
``(height, width)`` and centre-cropped (see ``vdot_jax.data.video_io``); ``num_frames`` must be
1 + 4k (1 + stride_t * k) -- a clear error otherwise, never a silent trim; with ``num_frames=None`` the
largest 1 + 4k frames the video has are spread uniformly over it (the release's rule). ``height`` and
``width`` must be multiples of the VAE stride times the patch size (16 for Wan).
"""

from __future__ import annotations

import math
import os
import weakref
from dataclasses import dataclass

import numpy as np

from vdot_jax.data import video_io
from vdot_jax.errors import VdotError

CONTROL_KINDS = ("depth", "pose", "scribble", "flow", "gray", "layout")
EXTENSION_MODES = ("first_frame", "last_frame", "first_clip", "last_clip", "first_last_frame", "first_last_clip")
KINDS = ("text", "reference", "control", "repaint", "extension")
# The VACE release prepends reference latents in the order given ([r1, r2, ..., video]); diffusers'
# WanVACEPipeline prepends each in turn, which reverses them ([rR, ..., r1, video]). Same for one reference.
REFERENCE_ORDERS = ("release", "diffusers")

WAN_STRIDE = (4, 8, 8)
WAN_PATCH = (1, 2, 2)


class ConditionError(VdotError, ValueError):
    """Task inputs that do not fit together (the message says what was expected)."""


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


def _check_frames_rule(num_frames: int, stride_t: int, what: str = "num_frames") -> int:
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
    return VCU(np.zeros(shape, np.float32), np.ones((batch_size, 1) + shape[2:], np.float32),
               task="t2v", kind="text")


def r2v(refs, num_frames: int, height: int, width: int, batch_size: int | None = None) -> VCU:
    """Reference-to-video: T2V frames and masks plus references (letterboxed on white if not H x W)."""
    r = _as_refs(refs, height, width, batch_size)
    base = t2v(num_frames, height, width, r.shape[0])
    return VCU(base.frames, base.masks, r, task="r2v", kind="reference")


def v2v(control, kind: str = "depth") -> VCU:
    """Control-to-video: the control video (depth, pose, scribble, flow, gray, layout) as frames, masks one."""
    if kind not in CONTROL_KINDS:
        raise ConditionError(f"control kind must be one of {CONTROL_KINDS}, got {kind!r}.")
    f = _as_video(control, f"the {kind} control video")
    return VCU(f, np.ones((f.shape[0], 1) + f.shape[2:], np.float32), task=kind, kind="control")


def inpaint(video, mask, grey_masked: bool = True) -> VCU:
    """Inpainting: the video with mask (1 = regenerate). ``grey_masked`` blanks the region to regenerate
    to grey 0, as the release's inpainting annotator does (mask colour 128), so the original content
    there does not leak through the reactive latent."""
    f = _as_video(video, "the video to inpaint")
    m = _as_mask(mask, f)
    if grey_masked:
        f = f * (1.0 - m)
    return VCU(f, m, task="inpaint", kind="repaint")


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
        f = resize(f, ih, iw, antialias=True)
        h, w, ch, cw = ih, iw, int(height), int(width)
        up = round((ch - h) * top / (top + bottom)) if top + bottom > 0 else 0
        lft = round((cw - w) * left / (left + right)) if left + right > 0 else 0
    canvas = np.zeros((b, 3, t, ch, cw), np.float32)
    canvas[..., up:up + h, lft:lft + w] = f
    mask = np.ones((b, 1, t, ch, cw), np.float32)
    mask[..., up:up + h, lft:lft + w] = 0.0
    return VCU(canvas, mask, task="outpaint", kind="repaint")


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


def extend(mode: str, num_frames: int, first=None, last=None) -> VCU:
    """Extension: known frames kept (mask 0), every other frame grey 0 and masked 1.

    ``first_frame``/``first_clip`` put ``first`` at the start, ``last_frame``/``last_clip`` put ``last``
    at the end, ``first_last_frame``/``first_last_clip`` both. Frames are images [3, H, W] / [B, 3, H, W]
    or clips [B, 3, k, H, W]; the result has ``num_frames`` frames.
    """
    if mode not in EXTENSION_MODES:
        raise ConditionError(f"extension mode must be one of {EXTENSION_MODES}, got {mode!r}.")
    need_first = mode.startswith("first")
    need_last = mode.startswith("last") or mode.startswith("first_last")
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
    return VCU(frames, masks, task=mode, kind="extension")


def extension_from_video(video, mode: str, clip_frames: int = 1) -> VCU:
    """Extension from a whole video (training): keep its first/last frame or ``clip_frames``-frame clip(s)
    as ``mode`` says (the release's ``FrameRefExtractAnnotator``), grey and mask the rest."""
    v = _as_video(video, "the video")
    k = 1 if mode.endswith("_frame") else int(clip_frames)
    if k < 1:
        raise ConditionError(f"clip_frames must be >= 1, got {clip_frames}.")
    first = v[:, :, :k] if mode.startswith("first") else None
    last = v[:, :, -k:] if mode.startswith(("last", "first_last")) else None
    return extend(mode, v.shape[2], first=first, last=last)


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


# ----------------------------------------------------------------------------- files


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
        num_frames = _check_frames_rule(num_frames, st)
    if src_mask is not None and src_video is None:
        raise ConditionError(f"src_mask {os.fspath(src_mask)} was given without a src_video to apply it to.")

    if src_video is None:
        if num_frames is None:
            raise ConditionError("num_frames is needed when there is no src_video.")
        frames = np.zeros((1, 3, num_frames, height, width), np.float32)
        masks = np.ones((1, 1, num_frames, height, width), np.float32)
        kind, name = "text", "t2v"
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
            kind, name = "control", "v2v"
        else:
            if video_io.is_image_path(mpath):
                m = video_io.resize_center_crop(mimg.astype(np.uint8), height, width)[None]
                m = np.repeat(m, num_frames, axis=0)
            else:
                m = video_io.read_video(mpath, num_frames=num_frames, size=(height, width), fps=fps,
                                        sampling=sampling, normalize=False)
            m = np.clip(m[..., 0].astype(np.float32) / 255.0, 0.0, 1.0)  # channel 0, white = 1 = generate
            masks = (m > 0.5).astype(np.float32)[None, None]
            kind, name = "repaint", "mv2v"

    paths = _ref_paths(src_ref_images)
    refs = [letterbox(video_io.read_image(p).transpose(2, 0, 1), height, width) for p in paths]
    refs = np.stack(refs)[None] if refs else None
    if refs is not None:
        name = "r2v" if name == "t2v" else f"r2v+{name}"
        kind = "reference" if kind == "text" else kind
    return VCU(frames, masks, refs, task=task or name, kind=kind)


# ----------------------------------------------------------------------------- the VAE side


def vae_geometry(vae) -> tuple[int, tuple[int, int, int]]:
    """(z_dim, (stride_t, stride_h, stride_w)) of a VAE: its ``z_dim``/``stride`` attributes, else its
    ``config`` (``z_dim``, ``temporal_factor``, ``spatial_factor``), else Wan's (16, (4, 8, 8))."""
    cfg = getattr(vae, "config", None)
    z = getattr(vae, "z_dim", None) or getattr(cfg, "z_dim", None) or 16
    stride = getattr(vae, "stride", None)
    if stride is None and cfg is not None and hasattr(cfg, "temporal_factor") and hasattr(cfg, "spatial_factor"):
        stride = (cfg.temporal_factor, cfg.spatial_factor, cfg.spatial_factor)
    stride = tuple(int(s) for s in (stride or WAN_STRIDE))
    return int(z), stride


def latent_frames(num_frames: int, vae=None) -> int:
    """Latent frames of a ``num_frames`` video: 1 + (num_frames - 1) / stride_t (1 + 4k -> 1 + k for Wan)."""
    st = vae_geometry(vae)[1][0] if vae is not None else WAN_STRIDE[0]
    return 1 + (_check_frames_rule(num_frames, st) - 1) // st


def latent_shape(vae, num_frames: int, height: int, width: int, num_refs: int = 0,
                 batch_size: int = 1) -> tuple[int, int, int, int, int]:
    """[B, z, R + f, H / sh, W / sw]: the noise / latent shape, reference frames included."""
    z, (st, sh, sw) = vae_geometry(vae)
    if height % sh or width % sw:
        raise ConditionError(f"height and width must be multiples of the VAE stride {sh}x{sw}, got {height}x{width}.")
    return (int(batch_size), z, int(num_refs) + latent_frames(num_frames, vae), height // sh, width // sw)


def noise_shape(vcu: VCU, vae) -> tuple[int, int, int, int, int]:
    """The shape of the noise for a VCU: it covers the reference frames too (drop them before decoding)."""
    return latent_shape(vae, vcu.num_frames, vcu.height, vcu.width, vcu.num_refs, vcu.batch_size)


def drop_reference_frames(latents, num_refs: int):
    """[B, C, R + f, h, w] -> [B, C, f, h, w]: the generated video's latents, ready to decode."""
    if latents.ndim != 5 or latents.shape[2] < num_refs:
        raise ConditionError(f"latents must be [B, C, R + f, h, w] with at least {num_refs} frames, "
                             f"got shape {tuple(latents.shape)}.")
    return latents[:, :, int(num_refs):]


class ZeroLatentCache:
    """Normalised latents of all-zero videos, one per (VAE, frames, height, width).

    Keyed by the VAE object's identity (held weakly where possible) and its run-time dtype, so a
    different or changed VAE never sees another's entries."""

    def __init__(self):
        self._entries: dict[int, tuple] = {}
        self.hits = 0
        self.misses = 0

    def _table(self, vae) -> dict:
        key = id(vae)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is vae:
            return entry[1]
        try:
            ref = weakref.ref(vae, lambda _r, k=key: self._entries.pop(k, None))
        except TypeError:  # not weak-referenceable: hold it (the cache then keeps the VAE alive)
            ref = (lambda v=vae: v)
        table: dict = {}
        self._entries[key] = (ref, table)
        return table

    def get(self, vae, shape: tuple[int, int, int], encode_fn):
        table = self._table(vae)
        key = (tuple(int(s) for s in shape), str(getattr(vae, "dtype", "")))
        if key not in table:
            self.misses += 1
            table[key] = encode_fn()
        else:
            self.hits += 1
        return table[key]

    def clear(self):
        self._entries.clear()
        self.hits = self.misses = 0


ZERO_LATENTS = ZeroLatentCache()


def _encode_normalized(vae, x: np.ndarray, cache: ZeroLatentCache | None) -> np.ndarray:
    """[N, 3, T, H, W] -> normalised latents [N, z, f, h, w] (float32 numpy); all-zero samples from the cache."""
    def enc(v):
        return np.asarray(vae.normalize(vae.encode(v)), np.float32)

    if cache is None:
        return enc(x)
    nonzero = np.any(x.reshape(x.shape[0], -1) != 0, axis=1)
    if nonzero.all():
        return enc(x)
    zero = cache.get(vae, x.shape[2:], lambda: enc(np.zeros((1,) + x.shape[1:], np.float32)))
    out = np.broadcast_to(zero, (x.shape[0],) + zero.shape[1:]).copy()
    if nonzero.any():
        out[nonzero] = enc(x[nonzero])
    return out


def pack_mask(masks, stride=WAN_STRIDE) -> np.ndarray:
    """[B, 1, T, H, W] pixel mask -> [B, sh*sw, f, H/sh, W/sw]: space-to-depth (channel ``sy*sw + sx``) and a
    nearest-exact resize in time to f = ceil(T / st) frames (frame k <- floor((k + 1/2) T / f))."""
    m = np.asarray(masks, np.float32)
    st, sh, sw = (int(s) for s in stride)
    b, c, t, h, w = m.shape
    if c != 1 or h % sh or w % sw:
        raise ConditionError(f"masks must be [B, 1, T, H, W] with H, W multiples of {sh}x{sw}, got {m.shape}.")
    f = (t + st - 1) // st
    m = m.reshape(b, t, h // sh, sh, w // sw, sw).transpose(0, 3, 5, 1, 2, 4).reshape(b, sh * sw, t, h // sh, w // sw)
    idx = np.minimum((2 * np.arange(f) + 1) * t // (2 * f), t - 1)
    return np.ascontiguousarray(m[:, :, idx])


def vace_context(vcu: VCU, vae, zero_cache: ZeroLatentCache | None = ZERO_LATENTS, reference_order: str = "release"):
    """The VACE context of a VCU: float32 [B, 2z + sh*sw, R + f, h, w] (a jax array).

    See the module docstring for the layout. ``vae`` needs ``encode`` (video in [-1, 1] -> posterior mean)
    and ``normalize``; ``z_dim``/``stride`` are read by ``vae_geometry``. ``zero_cache=None`` encodes
    everything (the cache gives the same numbers). ``reference_order="diffusers"`` reverses the references
    as ``WanVACEPipeline`` does (see ``REFERENCE_ORDERS``)."""
    if reference_order not in REFERENCE_ORDERS:
        raise ConditionError(f"reference_order must be one of {REFERENCE_ORDERS}, got {reference_order!r}.")
    import jax.numpy as jnp  # noqa: PLC0415

    z, stride = vae_geometry(vae)
    st, sh, sw = stride
    _check_frames_rule(vcu.num_frames, st, what="the VCU's frame count")
    if vcu.height % sh or vcu.width % sw:
        raise ConditionError(f"the VCU's frames are {vcu.height}x{vcu.width}, "
                             f"not multiples of the VAE stride {sh}x{sw}.")
    m = vcu.masks  # binary (VCU binarises at 0.5)
    inactive = _encode_normalized(vae, vcu.frames * (1.0 - m), zero_cache)
    reactive = _encode_normalized(vae, vcu.frames * m, zero_cache)
    if inactive.shape[1] != z:
        raise ConditionError(f"the VAE returned {inactive.shape[1]} latent channels, its z_dim says {z}.")
    latents = np.concatenate([inactive, reactive], axis=1)
    b, r = vcu.batch_size, vcu.num_refs
    mask = pack_mask(m, stride)
    if mask.shape[2:] != latents.shape[2:]:
        raise ConditionError(f"the VAE's latents {latents.shape[2:]} do not match the mask grid {mask.shape[2:]} "
                             f"for stride {stride}.")
    if r:
        refs = vcu.refs if reference_order == "release" else vcu.refs[:, ::-1]
        ref_lat = _encode_normalized(vae, refs.reshape(b * r, 3, 1, vcu.height, vcu.width), zero_cache)
        ref_lat = ref_lat.reshape(b, r, z, *ref_lat.shape[3:]).transpose(0, 2, 1, 3, 4)
        ref_lat = np.concatenate([ref_lat, np.zeros_like(ref_lat)], axis=1)
        latents = np.concatenate([ref_lat, latents], axis=2)
        mask = np.concatenate([np.zeros((b, sh * sw, r) + mask.shape[3:], np.float32), mask], axis=2)
    return jnp.asarray(np.concatenate([latents, mask], axis=1))
