"""Exact evaluation in the toy world (``vdot_jax.data.toy_world``): what a generated clip shows, read off its pixels.

Public API::

    a = analyse(clips)                        # [B,3,T,H,W] in [-1,1] -> Analysis (object, colour, shape, motion)
    m = evaluate(clips_or_fn, batch)          # flat {"task/metric": float} for one run (fn: TaskBatch -> clips)
    f = clip_features(clips)                  # [B, FEATURE_DIM] fixed feature map for the distribution distance
    d = sinkhorn_divergence(fx, fy)           # debiased Sinkhorn divergence (ott-jax), epsilon SINKHORN_EPS
    print(to_markdown({"teacher 50": m1, "student 4": m2}))

**Reading a clip** (``analyse``). Foreground = pixels with chroma (max - min over RGB) > 1.0: exact on world
clips (object 2, background <= 0.22). Per frame with at least ``MIN_AREA`` (3) foreground pixels ("valid"):
area, centroid, fill = area / bounding-box area, asym = (centroid_y - bounding-box centre_y) / bbox height.
- colour: nearest palette colour (Euclidean, RGB) to the mean foreground pixel over the clip; -1 if none.
- shape (medians over valid frames): triangle if asym > 0.08 (triangles 0.11..0.17, circles |asym| <= 0.053 at
  32 px), else square if fill >= 0.96 (squares 1.0, circles <= 0.94), else circle; -1 if no valid frame.
- motion: least-squares velocity of the centroid over valid frames; the dominant axis and its sign (y grows
  downwards: up = -y); -1 ("still") under 0.1 px/frame or with fewer than 2 valid frames (world speeds >= 1).
On rendered world clips all three are exact (checked on 2,000 clips each at 9x32x32, 17x32x32, 5x48x48, 9x64x64,
9x32x64 and 300 at 5x128x128; the tests check ~700).

**Metrics** (``evaluate``; keys "<task>/<metric>", "all/<metric>", "coverage/<metric>"):
- ``colour_acc``, ``shape_acc``, ``motion_acc``: recovered attribute == ground truth, over the samples whose
  caption *or condition* fixes that attribute (``batch.determined``); ``attr_acc``: over all such
  (sample, attribute) pairs. A free attribute is not scored here but in coverage.
- ``detect``: fraction of frames with a valid object. ``artifact``: fraction of off-world pixels -- chroma
  > 0.25 (more than any background) and farther than 0.25 (RGB Euclidean) from every palette colour; world
  clips have none, blur and noise make them.
- ``kept_psnr`` (first_frame, first_clip, last_frame, inpaint, outpaint): PSNR in dB of the generated clip vs F
  over the kept pixels (M = 0), peak-to-peak 2 (PSNR = 10 log10(4 / MSE)), the MSE pooled over the task's
  clips; capped at ``PSNR_CAP`` = 100 dB (what an exact copy gets). For extension tasks this is the
  first/last frame (clip) error.
- ``control_iou`` (depth, edges): IoU, over the whole clip, of the generated object mask with the control's
  object region (depth > 0; the edge map filled row by row); averaged over clips.
- ``grey_psnr`` (grey): PSNR of the generated clip's luminance vs the grey control, pooled MSE.
- ``path_err`` (first_clip, depth, edges, grey: tasks whose condition fixes the path): mean distance in pixels
  between the generated and the real object's centroid, over the real clip's frames; a frame where the
  generated clip shows no object counts min(H, W).
- ``sinkhorn`` (per task and "all"): debiased Sinkhorn divergence S = OT_eps(x, y) - (OT_eps(x, x) +
  OT_eps(y, y)) / 2 (ott-jax ``sinkhorn_divergence``, squared-Euclidean cost, uniform weights, absolute
  epsilon ``SINKHORN_EPS`` = 0.5, run to a marginal error < 1e-4) between the features of the generated clips
  and those of the real clips of the same samples (``batch.video``). Median cost between two real clips is
  ~1.6; at epsilon 0.5 the divergence sits between W2^2 and an energy-distance MMD, which keeps its
  finite-sample floor low (two independent real sets: ~0.25 at n = 64, ~0.07 at n = 256; one attribute
  collapsed, e.g. all red / all left / all squares: 0.5-1.1; 2x2 blur ~0.15-0.35; noise sigma 0.1 ~0.8-1.1).
  Compare runs at the same n, next to the real-vs-real floor (``evaluate(world.sample_batch(other_seed, n,
  batch.task).video, batch)["all/sinkhorn"]``). Features (``clip_features``, ``FEATURE_DIM`` = 158, each
  block scaled so two real clips differ by <= ~1 in it): 4x4 average-pooled RGB of frames 0, T//2, T-1
  (144 values, / 12); the time-mean of each frame's share of foreground pixels nearest each palette colour
  (4, / sqrt 2); shape [3 fill, 6 asym] (medians); size 2 sqrt(mean area) / min(H, W); motion = 2 x centroid
  velocity x (T-1) / min(H, W) (2); position = mean centroid / (W, H) - 0.5 (2); jitter = 2 x RMS deviation
  of the centroid from its linear fit / min(H, W); quality [5 edge_rms, 3 artifact] where edge_rms is the RMS
  of horizontal and vertical pixel differences. Missing values (no object) are 0.
- ``fragmented`` (per task and "all"): fraction of the frames showing any foreground whose foreground is more
  than one 8-connected component (``Analysis.components``). A world object is one convex region: real clips
  score 0. Counts what few-step sampling does to shapes -- a broken outline, a detached blob, a second object.
- ``sharpness`` (per task and "all"): high-frequency energy of the generated clips over that of the real clips
  of the same samples, HF energy = mean squared difference of horizontally and vertically neighbouring pixels
  (``Analysis.edge_rms`` squared), summed over the clips. 1 = as sharp as the world; < 1 blurred (a hard
  edge spread over two pixels halves it); > 1 noisy or fragmented (more edges). Compare by |log| distance to 1
  (``sharpness_error``).
- coverage (groups of >= ``min_group`` samples sharing task and caption with an attribute that neither the
  caption nor the condition fixes, e.g. ``ToyWorld.coverage_batch``): for each free attribute with K values,
  p = the recovered value histogram (unrecognised = -1 counts as mass outside the K values): ``hit`` =
  fraction of the K values produced at least once, ``entropy`` = H(p over the K values) / log K, ``tv`` =
  total variation distance to uniform over the K values (0 = uniform, 1 - 1/K = collapsed). Reported as
  means ("coverage/tv", ...) and per group ("coverage: <caption> [<attribute>]/tv"). A stratified
  coverage batch scores its own real clips tv 0, hit 1, entropy 1.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from typing import Mapping, Sequence

import numpy as np

from vdot_jax.data.toy_world import (
    ATTRIBUTES, CHROMA_THRESHOLD, EDIT_TASKS, PALETTE, TASKS, VALUES, TaskBatch, chroma, depth_object_region,
    fill_outline, luminance,
)

__all__ = ["Analysis", "analyse", "count_components", "sharpness_error", "clip_features", "sinkhorn_divergence",
           "evaluate", "to_markdown", "psnr",
           "MIN_AREA", "SINKHORN_EPS", "PSNR_CAP", "PATH_TASKS", "FEATURE_DIM"]

MIN_AREA = 3
TRIANGLE_ASYM = 0.08
SQUARE_FILL = 0.96
STILL_SPEED = 0.1
ARTIFACT_TOL = 0.25
SINKHORN_EPS = 0.5
PSNR_CAP = 100.0
PATH_TASKS = ("first_clip", "depth", "edges", "grey")
_POOL = 4  # pooled frames are _POOL x _POOL
FEATURE_DIM = 3 * 3 * _POOL * _POOL + 4 + 2 + 1 + 2 + 2 + 1 + 2  # 158


@dataclasses.dataclass
class Analysis:
    """What ``analyse`` reads off clips [B,3,T,H,W]."""

    fg: np.ndarray  # [B,T,H,W] bool, chroma > CHROMA_THRESHOLD
    area: np.ndarray  # [B,T] foreground pixels
    valid: np.ndarray  # [B,T] area >= MIN_AREA
    centroid: np.ndarray  # [B,T,2] (x, y) pixels, NaN where not valid
    fill: np.ndarray  # [B] median over valid frames of area / bbox area (NaN if none)
    asym: np.ndarray  # [B] median over valid frames of (centroid_y - bbox centre_y) / bbox height
    velocity: np.ndarray  # [B,2] least-squares px/frame (NaN with < 2 valid frames)
    mean_colour: np.ndarray  # [B,3] mean foreground RGB (NaN if none)
    colour_frac: np.ndarray  # [B,4] time-mean share of foreground pixels nearest each palette colour
    colour: np.ndarray  # [B] int, -1 = none
    shape: np.ndarray  # [B] int, -1 = none
    motion: np.ndarray  # [B] int, -1 = still / none
    artifact: np.ndarray  # [B] fraction of off-world pixels (neither near-grey nor near a palette colour)
    edge_rms: np.ndarray  # [B] RMS of the horizontal and vertical pixel differences (sharpness / noise)
    components: np.ndarray  # [B,T] int, 8-connected foreground components per frame


def _as_clips(clips) -> np.ndarray:
    x = np.asarray(clips, np.float32)
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"clips must be [B, 3, T, H, W] RGB in [-1, 1], got shape {tuple(x.shape)}")
    return x


def analyse(clips) -> Analysis:
    """Clips [B,3,T,H,W] (numpy or jax) in [-1,1] -> Analysis (see the module docstring)."""
    x = _as_clips(clips)
    B, _, T, H, W = x.shape
    fg = chroma(x, 1) > CHROMA_THRESHOLD  # [B,T,H,W]
    area = fg.sum((2, 3)).astype(np.float64)
    valid = area >= MIN_AREA
    safe = np.maximum(area, 1)
    xs, ys = np.arange(W) + 0.5, np.arange(H) + 0.5
    rows, cols = fg.any(3), fg.any(2)  # [B,T,H], [B,T,W]
    cx = (fg.sum(2) * xs).sum(-1) / safe
    cy = (fg.sum(3) * ys).sum(-1) / safe
    centroid = np.where(valid[..., None], np.stack([cx, cy], -1), np.nan)
    top = rows.argmax(-1)
    bottom = H - 1 - rows[..., ::-1].argmax(-1)
    left = cols.argmax(-1)
    right = W - 1 - cols[..., ::-1].argmax(-1)
    bh, bw = bottom - top + 1, right - left + 1
    fill_t = np.where(valid, area / np.maximum(bh * bw, 1), np.nan)
    asym_t = np.where(valid, (cy - (top + bh / 2)) / np.maximum(bh, 1), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices -> NaN
        fill = np.nanmedian(fill_t, 1)
        asym = np.nanmedian(asym_t, 1)
    shape = np.where(asym > TRIANGLE_ASYM, 2, np.where(fill >= SQUARE_FILL, 0, 1))
    shape = np.where(np.isnan(fill), -1, shape).astype(np.int32)

    # motion: weighted least squares of the centroid against the frame index
    w = valid.astype(np.float64)
    nv = w.sum(1)
    t = np.arange(T, dtype=np.float64)
    tm = (w * t).sum(1) / np.maximum(nv, 1)
    dt = (t[None] - tm[:, None]) * w
    c0 = np.nan_to_num(centroid)
    cm = (w[..., None] * c0).sum(1) / np.maximum(nv, 1)[:, None]
    num = (dt[..., None] * (c0 - cm[:, None])).sum(1)
    den = (dt * dt).sum(1)
    velocity = np.where((nv >= 2)[:, None], num / np.maximum(den, 1e-12)[:, None], np.nan)
    vx, vy = np.nan_to_num(velocity).T
    horiz = np.abs(vx) >= np.abs(vy)
    motion = np.where(horiz, np.where(vx < 0, 0, 1), np.where(vy < 0, 2, 3))
    motion = np.where((nv < 2) | (np.hypot(vx, vy) < STILL_SPEED), -1, motion).astype(np.int32)

    # colour: mean foreground pixel over the clip, nearest palette colour; per-pixel shares for the features
    xf = np.moveaxis(x, 1, -1)  # [B,T,H,W,3]
    tot = fg.sum((1, 2, 3))
    mean_colour = np.where((tot > 0)[:, None], (xf * fg[..., None]).sum((1, 2, 3)) / np.maximum(tot, 1)[:, None],
                           np.nan)
    dist = ((np.nan_to_num(mean_colour)[:, None] - PALETTE[None]) ** 2).sum(-1)
    colour = np.where(tot > 0, dist.argmin(1), -1).astype(np.int32)
    nearest = (xf @ PALETTE.T).argmax(-1)  # palette colours have equal norms: max dot = min distance
    onehot = (nearest[..., None] == np.arange(len(PALETTE))) & fg[..., None]  # [B,T,H,W,4]
    colour_frac = (onehot.sum((2, 3)) / np.maximum(area, 1)[..., None]).mean(1)
    # off-world pixels: chroma above any background's and farther than ARTIFACT_TOL from every palette colour
    pal_dist2 = (xf * xf).sum(-1) - 2 * (xf @ PALETTE.T).max(-1) + 3.0  # palette colours all have |p|^2 = 3
    off = (chroma(x, 1) > ARTIFACT_TOL) & (pal_dist2 > ARTIFACT_TOL ** 2)
    dx, dy = np.diff(x, axis=-1), np.diff(x, axis=-2)
    edge_rms = np.sqrt(((dx * dx).mean((1, 2, 3, 4)) + (dy * dy).mean((1, 2, 3, 4))) / 2)
    return Analysis(fg=fg, area=area, valid=valid, centroid=centroid, fill=fill, asym=asym, velocity=velocity,
                    mean_colour=mean_colour, colour_frac=colour_frac, colour=colour, shape=shape, motion=motion,
                    artifact=off.mean((1, 2, 3)), edge_rms=edge_rms, components=count_components(fg))


def count_components(fg) -> np.ndarray:
    """Bool masks [..., H, W] -> int [...]: 8-connected components in each H x W frame."""
    from scipy import ndimage

    fg = np.asarray(fg, bool)
    flat = fg.reshape(-1, *fg.shape[-2:])
    eight = np.ones((3, 3), bool)
    return np.array([ndimage.label(f, structure=eight)[1] for f in flat], np.int64).reshape(fg.shape[:-2])


def sharpness_error(ratio: float) -> float:
    """|log2| distance of a ``sharpness`` ratio from 1 (0 = as sharp as the world; 1 = half or twice)."""
    return abs(math.log2(ratio)) if ratio > 0 and math.isfinite(ratio) else float("inf")


# ----------------------------------------------------------------------------- distribution distance


def clip_features(clips, analysis: Analysis | None = None) -> np.ndarray:
    """Clips [B,3,T,H,W] -> [B, FEATURE_DIM = 144 + 4 + 2 + 1 + 2 + 2 + 1 + 2] float32, the fixed feature map of the
    module docstring (H and W multiples of 4)."""
    x = _as_clips(clips)
    a = analysis if analysis is not None else analyse(x)
    B, _, T, H, W = x.shape
    S = min(H, W)
    if H % _POOL or W % _POOL:
        raise ValueError(f"clip_features pools frames to {_POOL}x{_POOL}; H and W must be multiples of {_POOL}, "
                         f"got {H}x{W}")
    sel = x[:, :, [0, T // 2, T - 1]]  # [B,3,3,H,W]
    pooled = sel.reshape(B, 3, 3, _POOL, H // _POOL, _POOL, W // _POOL).mean((4, 6)).reshape(B, -1)
    pooled = pooled / math.sqrt(pooled.shape[1])
    colour = a.colour_frac / math.sqrt(2)
    shape = np.stack([3 * np.nan_to_num(a.fill), 6 * np.nan_to_num(a.asym)], -1)
    size = 2 * np.sqrt(a.area.mean(1, keepdims=True)) / S
    vel = np.nan_to_num(a.velocity)
    motion = 2 * vel * (T - 1) / S
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_c = np.nanmean(a.centroid, 1)  # [B,2]
        t = np.arange(T) - (T - 1) / 2
        fit = mean_c[:, None] + vel[:, None] * t[None, :, None]
        jitter = np.sqrt(np.nanmean(((a.centroid - fit) ** 2).sum(-1), 1))
    position = np.nan_to_num(mean_c / np.array([W, H]) - 0.5)
    jitter = 2 * np.nan_to_num(jitter)[:, None] / S
    quality = np.stack([5 * a.edge_rms, 3 * a.artifact], -1)
    feats = [pooled, colour, shape, size, motion, position, jitter, quality]
    return np.concatenate(feats, 1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _sinkhorn_fn(epsilon: float):
    import jax
    from ott.geometry import pointcloud
    from ott.tools import sinkhorn_divergence as sd

    @jax.jit
    def fn(x, y, a, b):
        div, _ = sd.sinkhorn_divergence(pointcloud.PointCloud, x, y, a=a, b=b, epsilon=epsilon,
                                        solve_kwargs={"max_iterations": 4000, "threshold": 1e-4})
        return div

    return fn


def _bucket(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad a point cloud to the next power of two (>= 16) rows with zero weight: few shapes, few compiles."""
    n = len(x)
    m = max(16, 1 << (n - 1).bit_length())
    w = np.zeros(m, np.float32)
    w[:n] = 1.0 / n
    return np.concatenate([x, np.zeros((m - n, x.shape[1]), np.float32)]), w


def sinkhorn_divergence(x, y, epsilon: float = SINKHORN_EPS) -> float:
    """Debiased Sinkhorn divergence S(x, y) = OT(x, y) - (OT(x, x) + OT(y, y)) / 2 between point clouds [n, d] and
    [m, d] with uniform weights, squared-Euclidean cost, absolute epsilon (ott-jax, fp32, log domain, until the
    marginal error is < 1e-4). 0 when x and y are the same set; clipped at 0 from below."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f"sinkhorn_divergence needs [n, d] and [m, d] point clouds, got {x.shape} and {y.shape}")
    (xp, a), (yp, b) = _bucket(x), _bucket(y)
    return max(float(_sinkhorn_fn(float(epsilon))(xp, yp, a, b)), 0.0)


# ----------------------------------------------------------------------------- evaluation


def psnr(mse: float, peak_to_peak: float = 2.0) -> float:
    """10 log10(peak^2 / mse), capped at PSNR_CAP (mse 0 -> PSNR_CAP)."""
    if mse <= 0:
        return PSNR_CAP
    return float(min(PSNR_CAP, 10 * math.log10(peak_to_peak ** 2 / mse)))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample IoU of bool [B, ...] masks (1 where both are empty)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    inter, union = (a & b).sum(1), (a | b).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _attr_metrics(out: dict, prefix: str, gen: Analysis, batch: TaskBatch, idx: np.ndarray) -> None:
    hits, count = 0, 0
    for j, k in enumerate(ATTRIBUTES):
        d = batch.determined[idx, j]
        if d.any():
            ok = getattr(gen, k)[idx][d] == getattr(batch, k)[idx][d]
            out[f"{prefix}/{k}_acc"] = float(ok.mean())
            hits += int(ok.sum())
            count += int(d.sum())
    if count:
        out[f"{prefix}/attr_acc"] = hits / count


def _shape_quality(out: dict, prefix: str, gen: Analysis, real: Analysis, idx: np.ndarray) -> None:
    shown = gen.components[idx] > 0
    out[f"{prefix}/fragmented"] = float((gen.components[idx][shown] > 1).mean()) if shown.any() else 0.0
    hf_real = float((real.edge_rms[idx] ** 2).sum())
    out[f"{prefix}/sharpness"] = float((gen.edge_rms[idx] ** 2).sum()) / hf_real if hf_real > 0 else float("nan")


def _coverage(out: dict, gen: Analysis, batch: TaskBatch, min_group: int) -> None:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(batch.task, batch.caption)):
        groups.setdefault(key, []).append(i)
    rows = []
    for (task, caption), idx in groups.items():
        idx = np.array(idx)
        if len(idx) < min_group:
            continue
        for j, k in enumerate(ATTRIBUTES):
            if batch.determined[idx, j].any():
                continue
            K = len(VALUES[k])
            v = getattr(gen, k)[idx]
            p = np.array([(v == c).mean() for c in range(K)])
            nz = p[p > 0]
            ent = float(-(nz * np.log(nz)).sum() / math.log(K))
            tv = float(0.5 * (np.abs(p - 1 / K).sum() + (1 - p.sum())))
            hit = float((p > 0).mean())
            name = f"coverage: {caption}" + (f" ({task})" if task != "t2v" else "") + f" [{k}]"
            out[f"{name}/tv"], out[f"{name}/hit"], out[f"{name}/entropy"] = tv, hit, ent
            rows.append((tv, hit, ent))
    if rows:
        tv, hit, ent = np.mean(rows, 0)
        out["coverage/tv"], out["coverage/hit"], out["coverage/entropy"] = float(tv), float(hit), float(ent)
        out["coverage/groups"] = float(len(rows))


def evaluate(generated, batch: TaskBatch, *, epsilon: float = SINKHORN_EPS, min_group: int = 8,
             sinkhorn: bool = True) -> dict[str, float]:
    """Score generated clips against a TaskBatch; ``generated`` is [B,3,T,H,W] (numpy/jax, in [-1,1]) or a
    function TaskBatch -> such clips. Returns a flat {"<task>/<metric>": float} (module docstring), with
    "all/..." over every sample and "coverage/..." where the batch has groups of prompts with free attributes."""
    clips = generated(batch) if callable(generated) else generated
    clips = _as_clips(clips)
    if clips.shape != batch.video.shape:
        raise ValueError(f"generated clips have shape {tuple(clips.shape)} but the batch's clips are "
                         f"{tuple(batch.video.shape)}")
    clips = np.clip(clips, -1.0, 1.0)
    gen, real = analyse(clips), analyse(batch.video)
    B, _, T, H, W = clips.shape
    S = min(H, W)
    tasks = np.array(batch.task)
    out: dict[str, float] = {}
    feats_g = feats_r = None
    if sinkhorn:
        feats_g, feats_r = clip_features(clips, gen), clip_features(batch.video, real)
    kept_psnrs, ious = [], []
    for task in TASKS:
        idx = np.flatnonzero(tasks == task)
        if not len(idx):
            continue
        out[f"{task}/n"] = float(len(idx))
        _attr_metrics(out, task, gen, batch, idx)
        out[f"{task}/detect"] = float(gen.valid[idx].mean())
        out[f"{task}/artifact"] = float(gen.artifact[idx].mean())
        _shape_quality(out, task, gen, real, idx)
        if task in EDIT_TASKS:
            keep = (1.0 - batch.mask[idx])  # [n,1,T,H,W]
            if keep.sum() > 0:
                mse = float((((clips[idx] - batch.frames[idx]) ** 2) * keep).sum() / (3 * keep.sum()))
                out[f"{task}/kept_psnr"] = psnr(mse)
                kept_psnrs.append(out[f"{task}/kept_psnr"])
        if task == "depth":
            region = depth_object_region(batch.frames[idx])
        elif task == "edges":
            region = fill_outline(batch.frames[idx][:, 0] > 0)
        else:
            region = None
        if region is not None:
            out[f"{task}/control_iou"] = float(_iou(gen.fg[idx], region).mean())
            ious.append(out[f"{task}/control_iou"])
        if task == "grey":
            mse = float(((luminance(clips[idx], 1) - batch.frames[idx][:, 0]) ** 2).mean())
            out[f"{task}/grey_psnr"] = psnr(mse)
        if task in PATH_TASKS:
            rv = real.valid[idx]
            err = np.linalg.norm(gen.centroid[idx] - real.centroid[idx], axis=-1)
            err = np.where(gen.valid[idx], err, S)
            out[f"{task}/path_err"] = float(err[rv].mean()) if rv.any() else float("nan")
        if sinkhorn:
            out[f"{task}/sinkhorn"] = sinkhorn_divergence(feats_g[idx], feats_r[idx], epsilon)
    out["all/n"] = float(B)
    _attr_metrics(out, "all", gen, batch, np.arange(B))
    out["all/detect"] = float(gen.valid.mean())
    out["all/artifact"] = float(gen.artifact.mean())
    _shape_quality(out, "all", gen, real, np.arange(B))
    if kept_psnrs:
        out["all/kept_psnr"] = float(np.mean(kept_psnrs))
    if ious:
        out["all/control_iou"] = float(np.mean(ious))
    if sinkhorn:
        out["all/sinkhorn"] = sinkhorn_divergence(feats_g, feats_r, epsilon)
    _coverage(out, gen, batch, min_group)
    return out


def to_markdown(results: Mapping[str, Mapping[str, float]], keys: Sequence[str] | None = None,
                digits: int = 3) -> str:
    """{run name: metrics} -> a markdown table, one row per metric key (union, in first-seen order unless
    ``keys`` is given), one column per run; missing entries are "-"."""
    if keys is None:
        keys = list(dict.fromkeys(k for m in results.values() for k in m))
    runs = list(results)
    lines = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
    for k in keys:
        cells = []
        for r in runs:
            v = results[r].get(k)
            cells.append("-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) and not float(v).is_integer()
                                                 else f"{v:g}"))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

