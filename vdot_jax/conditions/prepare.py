"""The release's model-free preprocessing (``vace_preproccess.py`` and its annotators), arrays in, arrays out.

What ``vdot prepare`` builds from raw videos, in the VCU's conventions (``conditions.vcu``): frames RGB float32
[1, 3, T, H, W] in [-1, 1] with grey 0 (the release's 127.5/128) for missing content, masks [1, 1, T, H, W] with
1 = generate (white in a mask file). Inpainting, outpainting and the extension modes are the VCU builders of
``conditions.vcu`` (the ones ``vdot generate --task`` uses); this module adds what only the preprocessing needs:

* boxes: ``x1,y1,x2,y2`` in source pixels, one for all frames, one per frame, or a keyframe track (linear
  between keyframes); ``map_boxes`` follows the resize-to-cover + centre crop of ``video_io``; ``box_masks`` is
  the release's ``bbox`` rule (start clamped and truncated, end exclusive);
* ``mask_aug``: the release's ``MaskAugAnnotator`` modes (original, bbox, hull, each with ``_expand``);
* ``frame_refs``: ``FrameRefExtractAnnotator`` (first / last / firstlast / random frames kept, the rest grey);
* ``outpaint_inner``: ``OutpaintingInnerAnnotator`` (the border of the frame itself regenerated);
* ``gray``: ``GrayAnnotator``; ``layout_boxes`` / ``layout_masks``: ``LayoutBbox/Mask/TrackAnnotator``;
* ``edges``: a Canny edge map -- a model-free stand-in for a scribble control, NOT the release's scribble model.

Randomness (the random frame references, the expansion sides of ``_expand`` masks, the hull's direction has no
effect here) comes from a ``numpy.random.Generator`` the caller seeds, so a preparation is reproducible.
"""

from __future__ import annotations

import numpy as np

from vdot_jax.conditions.vcu import VCU, ConditionError, extension_from_video

MASKAUG_MODES = ("original", "original_expand", "hull", "hull_expand", "bbox", "bbox_expand", "random")
FRAMEREF_MODES = ("first", "last", "firstlast", "random")


# ----------------------------------------------------------------------------- boxes


def parse_boxes(text: str) -> np.ndarray:
    """``"x1,y1,x2,y2[;x1,y1,x2,y2...]"`` -> float [N, 4] (one box, or one per source frame)."""
    boxes = []
    for part in (p for p in str(text).split(";") if p.strip()):
        try:
            vals = [float(v) for v in part.split(",")]
        except ValueError:
            vals = []
        if len(vals) != 4 or not all(np.isfinite(vals)):
            raise ConditionError(f"a box is four numbers x1,y1,x2,y2, got {part.strip()!r}.")
        boxes.append(vals)
    if not boxes:
        raise ConditionError(f"no box in {text!r}; give x1,y1,x2,y2 (boxes of several frames separated by ';').")
    return np.asarray(boxes, np.float64)


def parse_track(text: str) -> dict[int, np.ndarray]:
    """``"FRAME:x1,y1,x2,y2;FRAME:..."`` -> {source frame: box}, the keyframes of a track."""
    track = {}
    for part in (p for p in str(text).split(";") if p.strip()):
        frame, sep, box = part.partition(":")
        try:
            f = int(frame)
        except ValueError:
            f = -1
        if not sep or f < 0 or f in track:
            raise ConditionError(f"a track keyframe is FRAME:x1,y1,x2,y2 with a new frame number >= 0, got "
                                 f"{part.strip()!r}.")
        track[f] = parse_boxes(box)[0]
    if not track:
        raise ConditionError(f"no keyframe in track {text!r}; give FRAME:x1,y1,x2,y2;FRAME:x1,y1,x2,y2.")
    return track


def interpolate_track(track: dict[int, np.ndarray], num_frames: int) -> np.ndarray:
    """Keyframes -> [num_frames, 4]: linear between keyframes (each keyframe reached exactly), held before the
    first and after the last. The release's 2-box layout steps ``(end - start) / n`` per frame and so never
    reaches its end box; a track here does."""
    keys = sorted(track)
    if keys[-1] >= num_frames:
        raise ConditionError(f"track keyframe {keys[-1]} is past the video's last frame {num_frames - 1}.")
    t = np.arange(num_frames)
    vals = np.stack([track[k] for k in keys])
    return np.stack([np.interp(t, keys, vals[:, i]) for i in range(4)], axis=1)


def boxes_per_frame(boxes: np.ndarray, total: int, src_hw: tuple[int, int]) -> np.ndarray:
    """One box for all ``total`` source frames, or one per frame -> [total, 4]; refused outside the frame."""
    h, w = src_hw
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(b) not in (1, total):
        raise ConditionError(f"give one box for every frame or one per frame of the source ({total}), got {len(b)}.")
    bad = (b[:, 0] < 0) | (b[:, 1] < 0) | (b[:, 2] > w) | (b[:, 3] > h) | (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])
    if bad.any():
        i = int(np.argmax(bad))
        raise ConditionError(f"box {','.join(f'{v:g}' for v in b[i])} is not inside the {w}x{h} frame (x1 < x2 <= "
                             f"{w}, y1 < y2 <= {h}, all >= 0).")
    return np.repeat(b, total, axis=0) if len(b) == 1 else b


def map_boxes(boxes: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Source-pixel boxes -> boxes in the frame ``video_io.resize_center_crop`` makes (scale to cover, centre
    crop; its rounding)."""
    (h, w), (H, W) = src_hw, dst_hw
    if (h, w) == (H, W):
        return np.asarray(boxes, np.float64)
    s = max(W / w, H / h)
    nh, nw = max(H, round(s * h)), max(W, round(s * w))
    y0, x0 = (nh - H) // 2, (nw - W) // 2
    b = np.asarray(boxes, np.float64) * np.array([nw / w, nh / h, nw / w, nh / h])
    return b - np.array([x0, y0, x0, y0])


def box_masks(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """[T, 4] boxes -> masks [1, 1, T, H, W]: 1 in ``[int(max(0, y1)) : int(min(H, y2)), ...]`` (the release's
    ``bbox`` rule: start clamped and truncated, end truncated and exclusive)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    m = np.zeros((1, 1, len(b), height, width), np.float32)
    for t, (x1, y1, x2, y2) in enumerate(b):
        m[0, 0, t, int(max(0, y1)):int(min(height, y2)), int(max(0, x1)):int(min(width, x2))] = 1.0
    return m


# ----------------------------------------------------------------------------- masks


def _grow(mask: np.ndarray, left: int, right: int, top: int, bottom: int) -> np.ndarray:
    """Binary [H, W] grown by that many pixels on each side (a rectangular dilation; outside counts as 0)."""
    def along(a, before, after, axis):
        if before == 0 and after == 0:
            return a
        n = a.shape[axis]
        pad = [(0, 0), (0, 0)]
        pad[axis] = (after + 1, before)  # pixel x is set if any source in [x - after, x + before]
        c = np.cumsum(np.pad(a.astype(np.int64), pad), axis=axis)
        hi = np.take(c, np.arange(n) + after + before + 1, axis=axis)
        lo = np.take(c, np.arange(n), axis=axis)
        return hi - lo > 0
    return along(along(mask, left, right, 1), top, bottom, 0)


def _hull(mask: np.ndarray) -> np.ndarray:
    """The filled convex hull of a binary [H, W] mask's pixels (PIL's polygon fill, outline included)."""
    from PIL import Image, ImageDraw
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(mask)
    pts = np.stack([xs, ys], 1).astype(np.float64)
    try:
        poly = pts[ConvexHull(pts).vertices]
    except (QhullError, ValueError):  # a point or a line: its hull is the segment between its extreme points
        order = np.lexsort((pts[:, 1], pts[:, 0]))
        poly = pts[[order[0], order[-1]]]
        if (poly[0] == poly[1]).all():
            return mask.astype(bool)
    img = Image.new("L", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in poly], fill=255)
    return np.asarray(img) > 0


def mask_aug(masks: np.ndarray, mode: str, rng: np.random.Generator, expand_ratio: float = 0.3,
             expand_iters: int = 5) -> np.ndarray:
    """The release's ``MaskAugAnnotator`` on every frame of [1, 1, T, H, W] masks.

    ``original``: the mask; ``bbox``: its bounding box (inclusive); ``hull``: its filled convex hull; ``random``:
    one of the other six, drawn per frame as the release draws it per call; ``*_expand``:
    then grown ``expand_iters`` times by ``int(u * min(ratio * box side, room / 2) / expand_iters)`` pixels per
    side, ``u`` uniform in [0, 1) drawn per side and per frame (the release's ``rand_expand_mask``; its OpenCV
    kernel is one pixel short of the largest side, so left and top grow at most that minus one). Empty frames
    stay empty.
    """
    if mode not in MASKAUG_MODES:
        raise ConditionError(f"mask mode must be one of {', '.join(MASKAUG_MODES)}, got {mode!r}.")
    if expand_ratio < 0 or int(expand_iters) < 1:
        raise ConditionError(f"expand_ratio must be >= 0 and expand_iters >= 1, got {expand_ratio}, {expand_iters}.")
    m = np.asarray(masks) > 0.5
    out = np.zeros(m.shape, np.float32)
    _, _, t, h, w = m.shape
    for i in range(t):
        f = m[0, 0, i]
        if not f.any():
            continue
        kind = MASKAUG_MODES[rng.integers(6)] if mode == "random" else mode
        base = kind.removesuffix("_expand")
        ys, xs = np.nonzero(f)
        left, right, top, bottom = xs.min(), xs.max(), ys.min(), ys.max()
        if base == "bbox":
            f = np.zeros_like(f)
            f[top:bottom + 1, left:right + 1] = True
        elif base == "hull":
            f = _hull(f)
        if kind.endswith("_expand"):
            n = int(expand_iters)
            bw, bh = (right - left + 1) * expand_ratio, (bottom - top + 1) * expand_ratio
            u = rng.random(4)
            l, r, tp, b = (int(u[0] * min(bw, left / 2) / n), int(u[1] * min(bw, (w - right) / 2) / n),
                           int(u[2] * min(bh, top / 2) / n), int(u[3] * min(bh, (h - bottom) / 2) / n))
            k = max(l, r, tp, b)  # the release's 2k x 2k kernel cuts its last row and column: left and top
            f = _grow(f, n * min(l, k - 1), n * r, n * min(tp, k - 1), n * b) if k else f  # grow <= k - 1
        out[0, 0, i] = f
    return out


# ----------------------------------------------------------------------------- tasks


def frame_refs(video, mode: str, ref_num: int = 1, rng: np.random.Generator | None = None) -> VCU:
    """``FrameRefExtractAnnotator``: keep ``ref_num`` frames (the first, the last, both ends, or a random set),
    grey and mask every other frame; the video keeps its length."""
    v = np.asarray(video, np.float32)
    n = v.shape[2]
    if mode not in FRAMEREF_MODES:
        raise ConditionError(f"frame reference mode must be one of {', '.join(FRAMEREF_MODES)}, got {mode!r}.")
    if not 1 <= int(ref_num) <= n:
        raise ConditionError(f"ref_num must be between 1 and the video's {n} frames, got {ref_num}.")
    if mode != "random":  # the same frames as the clip extension modes keep
        ext = {"first": "first_clip", "last": "last_clip", "firstlast": "first_last_clip"}[mode]
        u = extension_from_video(v, ext, int(ref_num))
        return VCU(u.frames, u.masks, task=f"frameref_{mode}", kind="extension")
    keep = np.sort((rng or np.random.default_rng(0)).choice(n, int(ref_num), replace=False))
    masks = np.ones((v.shape[0], 1) + v.shape[2:], np.float32)
    masks[:, :, keep] = 0.0
    return VCU(v * (1.0 - masks), masks, task="frameref_random", kind="extension")


def outpaint_inner(video, top: float = 0.0, bottom: float = 0.0, left: float = 0.0, right: float = 0.0) -> VCU:
    """``OutpaintingInnerAnnotator``: the frame keeps its size; a border of ``int(ratio * side)`` pixels per side
    is greyed and masked. (The release's mask keeps one more row and column of the grey border, an off-by-one
    of PIL's inclusive rectangle; here the mask is exactly the greyed border.)"""
    v = np.asarray(video, np.float32)
    h, w = v.shape[3:]
    up, down, lft, rgt = int(top * h), int(bottom * h), int(left * w), int(right * w)
    if up + down >= h or lft + rgt >= w:
        raise ConditionError(f"inner outpainting ratios {top},{bottom},{left},{right} leave nothing of the {h}x{w} "
                             f"frame.")
    masks = np.ones((v.shape[0], 1) + v.shape[2:], np.float32)
    masks[..., up:h - down, lft:w - rgt] = 0.0
    return VCU(v * (1.0 - masks), masks, task="outpaint_inner", kind="repaint")


def gray(video) -> np.ndarray:
    """``GrayAnnotator``: the luma repeated in three channels. The release applies OpenCV's BGR weights to RGB
    frames, so R gets 0.114 and B 0.299; kept, so the control matches what the model was trained on."""
    v = np.asarray(video, np.float32)
    y = 0.114 * v[:, 0] + 0.587 * v[:, 1] + 0.299 * v[:, 2]
    return np.repeat(y[:, None], 3, axis=1)


def _stroke(points: np.ndarray, thickness: int) -> np.ndarray:
    """Pixels OpenCV paints when it strokes a line through ``points`` (a binary [H, W] set of pixel centres) with
    ``thickness``: those within Euclidean distance ``(thickness + 1) // 2`` of it (the line alone for 1)."""
    from scipy import ndimage

    if thickness <= 1:
        return points.copy()
    return ndimage.distance_transform_edt(~points) <= (thickness + 1) // 2


def layout_boxes(boxes: np.ndarray, height: int, width: int, thickness: int = 2) -> np.ndarray:
    """``LayoutBboxAnnotator``: a white frame per box with its outline in black -> control frames [1, 3, T, H, W].

    The outline is the rectangle from ``int(x1), int(y1)`` to that plus ``int(x2 - x1), int(y2 - y1)``, stroked as
    OpenCV strokes it at ``thickness`` 2 (the release's), rounded corners included; parts outside the frame are cut."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.ones((1, 3, len(b), height, width), np.float32)
    r = (thickness + 1) // 2 + 1  # margin so an edge just outside the frame still paints its inside
    for t, box in enumerate(b):
        x1, y1 = int(box[0]), int(box[1])  # the release rounds x, y, width, height, each toward zero
        x2, y2 = x1 + int(box[2] - box[0]), y1 + int(box[3] - box[1])
        pts = np.zeros((height + 2 * r, width + 2 * r), bool)
        cx1, cx2 = np.clip([x1 + r, x2 + r], 0, width + 2 * r - 1)
        cy1, cy2 = np.clip([y1 + r, y2 + r], 0, height + 2 * r - 1)
        for y in {y1 + r, y2 + r} & set(range(height + 2 * r)):
            pts[y, cx1:cx2 + 1] = True
        for x in {x1 + r, x2 + r} & set(range(width + 2 * r)):
            pts[cy1:cy2 + 1, x] = True
        out[0, :, t][:, _stroke(pts, thickness)[r:r + height, r:r + width]] = -1.0
    return out


def layout_masks(masks: np.ndarray, thickness: int = 3) -> np.ndarray:
    """``LayoutMaskAnnotator``/``LayoutTrackAnnotator``: each mask's outer outline in black on white ->
    [1, 3, T, H, W]. The outline is what OpenCV's external contours (``RETR_EXTERNAL``: holes ignored) stroke at
    ``thickness`` 3: the filled mask's pixels 4-adjacent to the outside, widened as ``_stroke`` does (at a diagonal
    step a pixel or two differs from OpenCV's polyline)."""
    from scipy import ndimage

    m = np.asarray(masks) > 0.5
    out = np.ones((1, 3) + m.shape[2:], np.float32)
    cross = ndimage.generate_binary_structure(2, 1)
    for t in range(m.shape[2]):
        f = ndimage.binary_fill_holes(m[0, 0, t])
        edge = f & ~ndimage.binary_erosion(f, cross, border_value=0)
        out[0, :, t][:, _stroke(edge, thickness)] = -1.0
    return out


def edges(video, low: float = 100.0, high: float = 200.0, sigma: float = 0.0) -> np.ndarray:
    """Canny edges, white on black, of each frame's luma in [0, 255] -> control frames [1, 3, T, H, W].

    A model-free scribble-like control: an optional Gaussian blur ``sigma``, the 3x3 Sobel gradient's L2 norm,
    non-maximum suppression along the gradient, hysteresis (edges >= ``low`` kept where 8-connected to one >=
    ``high``); with ``sigma=0`` it is OpenCV's ``Canny(luma, low, high, L2gradient=True)`` (ControlNet's canny
    control uses 100, 200). It is NOT the release's scribble annotator (a learned line-art network), so a model
    trained on that sees a somewhat different control.
    """
    from scipy import ndimage

    if not 0 <= low <= high:
        raise ConditionError(f"edge thresholds must satisfy 0 <= low <= high (--edge-low, --edge-high), got {low}, "
                             f"{high}.")
    v = np.asarray(video, np.float32)
    lum = (0.299 * v[0, 0] + 0.587 * v[0, 1] + 0.114 * v[0, 2] + 1.0) * 127.5  # [T, H, W] in [0, 255]
    out = np.full((1, 3) + lum.shape, -1.0, np.float32)
    for t, f in enumerate(lum):
        g = ndimage.gaussian_filter(f, sigma) if sigma > 0 else f
        gx, gy = ndimage.sobel(g, axis=1), ndimage.sobel(g, axis=0)
        mag = np.hypot(gx, gy)
        ang = (np.rad2deg(np.arctan2(gy, gx)) + 180.0) % 180.0
        sector = np.digitize(ang, [22.5, 67.5, 112.5, 157.5]) % 4  # 0: horizontal gradient, 1: 45, 2: 90, 3: 135
        p = np.pad(mag, 1)
        c = p[1:-1, 1:-1]
        nbrs = {0: (p[1:-1, :-2], p[1:-1, 2:]), 1: (p[:-2, :-2], p[2:, 2:]),
                2: (p[:-2, 1:-1], p[2:, 1:-1]), 3: (p[:-2, 2:], p[2:, :-2])}
        peak = np.zeros(c.shape, bool)
        for s, (a, b) in nbrs.items():
            peak |= (sector == s) & (c >= a) & (c >= b)
        weak = peak & (mag >= low)
        labels, _ = ndimage.label(weak, np.ones((3, 3), bool))
        strong_labels = np.unique(labels[weak & (mag >= high)])
        out[0, :, t][:, np.isin(labels, strong_labels[strong_labels > 0])] = 1.0
    return out
