"""A procedural video world for ``vdot demo``: one coloured shape moving over a background, with every VCU task.

Pure numpy, vectorised, deterministic from a seed. Public API::

    world = ToyWorld(frames=9, height=32, width=32)        # T = 1 + 4k frames, H x W pixels (even, 32..128)
    batch = world.sample_batch(seed, 64)                  # default task mix, one task drawn per sample
    batch = world.sample_batch(seed, 64, tasks="inpaint") # one task for all; or a dict mix; or a list of B names
    batch = world.sample_batch(seed, 4, captions=["a red circle moving left", ...])  # clips that fit the prompts
    for batch in world.batches(seed, 16, start=step): ... # endless, resumable at any step (step i uses [seed, i])
    cov = world.coverage_batch(seed, n_per_prompt=12)     # prompts with an unspecified attribute, stratified
    sample = batch[i]                                      # one Sample (arrays without the batch axis)
    enc = ToyTextEncoder(dim=32, text_len=8); emb = enc.encode(batch.caption)   # [B, 8, 32] float32

Module-level ``sample_batch(seed, batch, tasks=None, **world_kwargs)`` is ``ToyWorld(**world_kwargs).sample_batch``.

**The world.** Every clip is ``[3, T, H, W]`` RGB float32 in [-1, 1] and shows one object of a palette colour
(red, green, blue, yellow -- fully saturated, e.g. red = (1, -1, -1)), a shape (square, circle, triangle
pointing up) of radius r (half its width and height, uniform in 0.12..0.20 of min(H, W)), moving in a
straight line at constant speed (left, right, up, down; total travel uniform in 0.25..0.45 of min(H, W) over
the clip). The whole object stays at least one pixel inside the frame in every frame. Rendering is hard
(no anti-aliasing): a pixel belongs to the object iff its centre lies inside the shape, so the object's pixels
are known exactly. The background is a near-grey linear gradient: grey level uniform in [-0.55, 0.05],
gradient amplitude uniform in [0, 0.4] (per min(H, W)) at a uniform random angle, plus a faint tint (norm
<= 0.15, zero-mean over RGB, random hue). Background chroma (max - min over RGB) is <= 0.22 and every
object pixel has chroma 2, so ``foreground = chroma > CHROMA_THRESHOLD (1.0)`` recovers the object exactly;
the four palette colours also have four distinct luminances (-0.40, 0.17, -0.77, 0.77), so a greyscale clip
still fixes the colour.

**Captions** follow one grammar over the vocabulary ``VOCAB``: ``"a [colour] (shape-name | shape) [moving
direction]"`` -- e.g. "a red circle moving left" (all specified), "a circle moving left" (any colour),
"a red shape moving up" (any shape), "a red circle" (any direction), "a shape moving left". An unspecified
attribute is uniform over its values. ``specified[B, 3]`` says what a caption fixes (colour, shape, motion);
``determined[B, 3]`` adds what the condition fixes (the reference image, the kept frames, the control
video), which is what the metrics hold a generator to.

**Tasks** (``TASKS``) and their VCU (F frames ``[3,T,H,W]``, M mask ``[1,T,H,W]`` with 1 = generate,
0 = keep; missing content in F is grey 0, as VACE's 127; refs ``[R,3,H,W]``):

==============  ==========================================================  =========================
task            F / M / refs                                                condition fixes
==============  ==========================================================  =========================
t2v             F = 0, M = 1                                                --
r2v             F = 0, M = 1, refs = [object alone, centred, on white (+1)] colour, shape
first_frame     F = frame 0 then 0, M = 0 on frame 0                        colour, shape
first_clip      F = first (T+1)//2 frames then 0, M = 0 on them             colour, shape, motion
last_frame      F = 0 then frame T-1, M = 0 on frame T-1                    colour, shape
inpaint         box over the object's whole path (+0..2 px) is M = 1, F = 0  --
                there; everywhere else F = clip, M = 0
outpaint        a border (each side 15..30 % of the frame) is M = 1, F = 0;  colour/shape/motion when
                the centre is kept (F = clip, M = 0)                        the object is seen there
depth           F = layer map: background -1 (top) .. -0.3 (bottom), object  shape, motion
                a flat level 0.4..1.0 growing with r ("nearer"), M = 1
edges           F = +1 on the object's outline (object pixels with a         shape, motion
                4-neighbour outside it), -1 elsewhere, M = 1
grey            F = luminance (0.299 R + 0.587 G + 0.114 B) in all 3 chans  colour, shape, motion
==============  ==========================================================  =========================

r2v captions name only the motion ("a shape moving left"): the reference carries colour and shape. Other
tasks draw captions from ``CAPTION_MIX`` (55 % full, 15 % each with one attribute left out).
Batches carry ``refs [B, R, 3, H, W]`` with R the most references any sample has (0 or 1) and ``n_refs [B]``
(padding is zeros). ``batches()`` yields one task per batch (``homogeneous=True``, so R is fixed within a
batch), the task drawn from the mix each step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "COLOURS", "PALETTE", "SHAPES", "MOTIONS", "MOTION_VECTORS", "ATTRIBUTES", "VALUES", "VOCAB", "LUMA",
    "CHROMA_THRESHOLD", "TASKS", "TASK_KIND", "EDIT_TASKS", "CONTROL_TASKS", "DEFAULT_TASK_MIX", "CAPTION_MIX",
    "COVERAGE_PROMPTS", "ToyWorld", "TaskBatch", "Sample", "ToyTextEncoder", "sample_batch", "make_caption",
    "parse_caption", "luminance", "chroma", "outline", "fill_outline", "depth_object_region",
]

# ----------------------------------------------------------------------------- vocabulary

COLOURS = ("red", "green", "blue", "yellow")
PALETTE = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]], np.float32)  # RGB in [-1, 1]
SHAPES = ("square", "circle", "triangle")
MOTIONS = ("left", "right", "up", "down")
MOTION_VECTORS = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]], np.float32)  # (dx, dy); image y grows downwards
ATTRIBUTES = ("colour", "shape", "motion")
VALUES = {"colour": COLOURS, "shape": SHAPES, "motion": MOTIONS}
VOCAB = ("a", *COLOURS, *SHAPES, "shape", "moving", *MOTIONS)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # Rec. 601
CHROMA_THRESHOLD = 1.0  # foreground iff max_c - min_c > this (object pixels: 2, background: <= 0.22)

TASKS = ("t2v", "r2v", "first_frame", "first_clip", "last_frame", "inpaint", "outpaint", "depth", "edges", "grey")
EDIT_TASKS = ("first_frame", "first_clip", "last_frame", "inpaint", "outpaint")  # MV2V: F = video, M = mask
CONTROL_TASKS = ("depth", "edges", "grey")  # V2V control: F = control video, M = 1
TASK_KIND = {"t2v": "t2v", "r2v": "r2v", **{t: "edit" for t in EDIT_TASKS}, **{t: "control" for t in CONTROL_TASKS}}
DEFAULT_TASK_MIX = {t: (2.0 if t == "t2v" else 1.0) for t in TASKS}  # t2v 2/11, every other task 1/11

# (colour, shape, motion) specified, probability -- captions for every task but r2v
CAPTION_MIX = (((True, True, True), 0.55), ((False, True, True), 0.15), ((True, False, True), 0.15),
               ((True, True, False), 0.15))
R2V_SPECIFIED = (False, False, True)  # r2v: the reference image gives colour and shape

# prompts with unspecified attributes, for mode coverage (the stratified coverage batch)
COVERAGE_PROMPTS = ("a circle moving left", "a red shape moving up", "a blue square", "a shape moving right")

# background / depth constants (see the module docstring)
_BG_LEVEL = (-0.55, 0.05)
_BG_GRADIENT = (0.0, 0.4)
_BG_TINT = 0.15
_DEPTH_BG = (-1.0, -0.3)
_DEPTH_OBJ = (0.4, 1.0)
_TINT_BASIS = np.array([[1, -1, 0], [1, 1, -2]], np.float64) / np.array([[np.sqrt(2)], [np.sqrt(6)]])


# ----------------------------------------------------------------------------- captions


def make_caption(colour: int, shape: int, motion: int, specified=(True, True, True)) -> str:
    """Attribute indices (and which of colour/shape/motion to name) -> caption, e.g. "a red circle moving left"."""
    words = ["a"]
    if specified[0]:
        words.append(COLOURS[colour])
    words.append(SHAPES[shape] if specified[1] else "shape")
    if specified[2]:
        words += ["moving", MOTIONS[motion]]
    return " ".join(words)


def parse_caption(caption: str) -> dict[str, int | None]:
    """Caption -> {"colour": idx | None, "shape": idx | None, "motion": idx | None}; None = left unspecified.

    Raises ValueError (one sentence) for anything outside the grammar "a [colour] (shape-name|shape)
    [moving direction]".
    """
    words = caption.lower().split()
    bad = [w for w in words if w not in VOCAB]
    if bad:
        raise ValueError(f"caption {caption!r} has words outside the toy vocabulary {bad}; known words: {VOCAB}")
    out: dict[str, int | None] = {"colour": None, "shape": None, "motion": None}
    ok = len(words) >= 2 and words[0] == "a"
    i = 1
    if ok and words[i] in COLOURS:
        out["colour"] = COLOURS.index(words[i])
        i += 1
    if ok and i < len(words) and (words[i] in SHAPES or words[i] == "shape"):
        out["shape"] = SHAPES.index(words[i]) if words[i] in SHAPES else None
        i += 1
    else:
        ok = False
    if ok and i < len(words):
        if words[i] == "moving" and i + 2 == len(words) and words[i + 1] in MOTIONS:
            out["motion"] = MOTIONS.index(words[i + 1])
        else:
            ok = False
    if not ok:
        raise ValueError(f"caption {caption!r} does not follow the toy grammar "
                         "'a [colour] (square|circle|triangle|shape) [moving left|right|up|down]'")
    return out


# ----------------------------------------------------------------------------- pixel helpers (shared with eval)


def luminance(video: np.ndarray, axis: int = -4) -> np.ndarray:
    """Rec. 601 luminance over the RGB axis (default: the C of [..., 3, T, H, W]); the axis is removed."""
    v = np.moveaxis(np.asarray(video, np.float32), axis, -1)
    return v @ LUMA


def chroma(video: np.ndarray, axis: int = -4) -> np.ndarray:
    """max - min over the RGB axis (0 for greys, 2 for the palette colours); the axis is removed."""
    v = np.asarray(video, np.float32)
    return v.max(axis=axis) - v.min(axis=axis)


def outline(mask: np.ndarray) -> np.ndarray:
    """Inner 4-neighbour boundary of a boolean mask [..., H, W] (outside the frame counts as outside)."""
    m = np.asarray(mask, bool)
    p = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(1, 1), (1, 1)])
    inner = p[..., :-2, 1:-1] & p[..., 2:, 1:-1] & p[..., 1:-1, :-2] & p[..., 1:-1, 2:]
    return m & ~inner


def fill_outline(edges: np.ndarray) -> np.ndarray:
    """Fill an outline [..., H, W] row by row between its leftmost and rightmost pixel.

    Exact for the world's shapes (each row of a square, circle or triangle is one interval, whose two ends are
    outline pixels), so ``fill_outline(outline(fg)) == fg``.
    """
    e = np.asarray(edges, bool)
    return np.maximum.accumulate(e, axis=-1) & np.maximum.accumulate(e[..., ::-1], axis=-1)[..., ::-1]


def depth_object_region(depth: np.ndarray) -> np.ndarray:
    """Object pixels of a depth control [..., 3, T, H, W] -> bool [..., T, H, W] (object >= 0.4 > 0 > background)."""
    return np.asarray(depth)[..., 0, :, :, :] > 0.0


# ----------------------------------------------------------------------------- batches


@dataclass
class Sample:
    """One task sample (arrays without the batch axis); fields as in ``TaskBatch``."""

    task: str
    caption: str
    video: np.ndarray  # [3, T, H, W] the target clip
    frames: np.ndarray  # [3, T, H, W] F: source / control frames, grey 0 where content is missing
    mask: np.ndarray  # [1, T, H, W] M: 1 = generate, 0 = keep
    refs: np.ndarray  # [R, 3, H, W] reference images (R = 0 or 1)
    colour: int
    shape: int
    motion: int
    radius: float
    centre: np.ndarray  # [T, 2] (x, y) of the shape's centre in pixels (pixel i spans [i, i+1))
    fg_mask: np.ndarray  # [T, H, W] bool, the object's pixels
    specified: np.ndarray  # [3] bool: colour, shape, motion named by the caption
    determined: np.ndarray  # [3] bool: fixed by the caption or by the condition


@dataclass
class TaskBatch:
    """A batch of task samples; ``batch[i]`` is a ``Sample``. All arrays are numpy, float32 unless noted."""

    task: list[str]
    caption: list[str]
    video: np.ndarray  # [B, 3, T, H, W] target clips in [-1, 1]
    frames: np.ndarray  # [B, 3, T, H, W] F
    mask: np.ndarray  # [B, 1, T, H, W] M (0/1)
    refs: np.ndarray  # [B, R, 3, H, W], R = max(n_refs); zeros where n_refs[b] <= r
    n_refs: np.ndarray  # [B] int32
    colour: np.ndarray  # [B] int32 index into COLOURS
    shape: np.ndarray  # [B] int32 index into SHAPES
    motion: np.ndarray  # [B] int32 index into MOTIONS
    radius: np.ndarray  # [B] pixels
    centre: np.ndarray  # [B, T, 2] (x, y) pixels
    fg_mask: np.ndarray  # [B, T, H, W] bool
    specified: np.ndarray  # [B, 3] bool
    determined: np.ndarray  # [B, 3] bool

    def __len__(self) -> int:
        return len(self.task)

    def __getitem__(self, i: int) -> Sample:
        kw = {f.name: getattr(self, f.name)[i] for f in dataclasses.fields(Sample) if f.name != "refs"}
        kw["refs"] = self.refs[i, : self.n_refs[i]]
        for k in ("colour", "shape", "motion"):
            kw[k] = int(kw[k])
        kw["radius"] = float(kw["radius"])
        return Sample(**kw)

    def select(self, index) -> "TaskBatch":
        """A sub-batch (index: int array or boolean mask over B); refs are re-trimmed to the new max count."""
        idx = np.arange(len(self))[index]
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = [v[i] for i in idx] if isinstance(v, list) else v[idx]
        r = int(out["n_refs"].max()) if len(idx) else 0
        out["refs"] = out["refs"][:, :r]
        return TaskBatch(**out)


# ----------------------------------------------------------------------------- the world


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclass(frozen=True)
class ToyWorld:
    """Sizes and ranges of the world; everything else is fixed (module docstring)."""

    frames: int = 9
    height: int = 32
    width: int = 32
    radius: tuple[float, float] = (0.12, 0.20)  # object half-size, fraction of min(H, W)
    travel: tuple[float, float] = (0.25, 0.45)  # path length over the clip, fraction of min(H, W)
    task_mix: Mapping[str, float] | tuple = tuple(DEFAULT_TASK_MIX.items())  # {task: weight}; kept as pairs

    def __post_init__(self):
        t, h, w = self.frames, self.height, self.width
        if not (isinstance(t, int) and t >= 5 and (t - 1) % 4 == 0):
            raise ValueError(f"ToyWorld.frames must be 1 + 4k with k >= 1 (5, 9, 13, 17, ...), got {t!r}")
        for name, v in (("height", h), ("width", w)):
            if not (isinstance(v, int) and 32 <= v <= 128 and v % 2 == 0):
                raise ValueError(f"ToyWorld.{name} must be an even int in 32..128 (smaller shapes are ambiguous; "
                                 f"the toy VAE halves it), got {v!r}")
        mix = dict(self.task_mix)
        _check_mix(mix)
        object.__setattr__(self, "task_mix", tuple((k, float(v)) for k, v in mix.items()))  # hashable

    # ---- scenes

    @property
    def size(self) -> int:
        return min(self.height, self.width)

    def radius_range(self) -> tuple[float, float]:
        return self.radius[0] * self.size, self.radius[1] * self.size

    def _sample_scene(self, rng, n, colour=None, shape=None, motion=None) -> dict:
        """Attributes (-1 or None = uniform) -> scene parameters, all arrays over n."""
        T, H, W, S = self.frames, self.height, self.width, self.size

        def pick(v, k):
            v = np.full(n, -1, np.int64) if v is None else np.asarray(v, np.int64).reshape(n)
            return np.where(v < 0, rng.integers(0, k, n), v).astype(np.int32)

        colour, shape, motion = pick(colour, len(COLOURS)), pick(shape, len(SHAPES)), pick(motion, len(MOTIONS))
        r = rng.uniform(*self.radius_range(), n)
        travel = rng.uniform(self.travel[0] * S, self.travel[1] * S, n)
        vec = MOTION_VECTORS[motion].astype(np.float64)
        horizontal = vec[:, 0] != 0
        lo = r + 1.0  # the shape spans [c - r, c + r]; keep one pixel of background around it
        avail = np.where(horizontal, W, H) - 2 * lo
        travel = np.minimum(travel, avail)
        low = lo + rng.uniform(0, 1, n) * (avail - travel)  # low end of the path on the motion axis
        perp = lo + rng.uniform(0, 1, n) * (np.where(horizontal, H, W) - 2 * lo)
        frac = np.arange(T) / (T - 1)  # [T]
        sign = vec.sum(1)  # +1 right/down, -1 left/up
        start = np.where(sign > 0, low, low + travel)
        axis_pos = start[:, None] + (sign * travel)[:, None] * frac[None]  # [n, T]
        perp_pos = np.broadcast_to(perp[:, None], (n, T))
        cx = np.where(horizontal[:, None], axis_pos, perp_pos)
        cy = np.where(horizontal[:, None], perp_pos, axis_pos)
        theta = rng.uniform(0, 2 * np.pi, n)
        amp = rng.uniform(*_BG_GRADIENT, n) / S
        hue = rng.uniform(0, 2 * np.pi, n)
        tint = rng.uniform(0, _BG_TINT, n)[:, None] * (np.cos(hue)[:, None] * _TINT_BASIS[0] + np.sin(hue)[:, None]
                                                      * _TINT_BASIS[1])
        return dict(colour=colour, shape=shape, motion=motion, radius=r, centre=np.stack([cx, cy], -1),
                    bg_level=rng.uniform(*_BG_LEVEL, n),
                    bg_grad=np.stack([amp * np.cos(theta), amp * np.sin(theta)], -1),
                    bg_tint=tint)

    def _shape_mask(self, shape, radius, cx, cy, h, w) -> np.ndarray:
        """shape [n], radius [n], centres cx, cy [n, T] -> bool [n, T, h, w] (pixel centres inside the shape)."""
        x = np.arange(w, dtype=np.float64) + 0.5
        y = np.arange(h, dtype=np.float64) + 0.5
        dx = x[None, None, None, :] - cx[..., None, None]  # [n,T,1,w]
        dy = y[None, None, :, None] - cy[..., None, None]  # [n,T,h,1]
        r = radius[:, None, None, None]
        square = (np.abs(dx) <= r) & (np.abs(dy) <= r)
        circle = dx * dx + dy * dy <= r * r
        triangle = (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)  # apex (cx, cy - r), base at cy + r, width 2r
        s = shape[:, None, None, None]
        return np.where(s == 0, square, np.where(s == 1, circle, triangle))

    def render(self, scene: dict) -> tuple[np.ndarray, np.ndarray]:
        """Scene -> (video [n, 3, T, H, W] float32, fg_mask [n, T, H, W] bool)."""
        H, W = self.height, self.width
        fg = self._shape_mask(scene["shape"], scene["radius"], scene["centre"][..., 0], scene["centre"][..., 1], H, W)
        x = np.arange(W, dtype=np.float64) + 0.5 - W / 2
        y = np.arange(H, dtype=np.float64) + 0.5 - H / 2
        g = scene["bg_grad"]
        grey = (scene["bg_level"][:, None, None] + g[:, 0, None, None] * x[None, None, :]
                + g[:, 1, None, None] * y[None, :, None])
        bg = np.clip(grey[:, None] + scene["bg_tint"][:, :, None, None], -1, 1).astype(np.float32)  # [n,3,H,W]
        col = PALETTE[scene["colour"]][:, :, None, None, None]  # [n,3,1,1,1]
        video = np.where(fg[:, None], col, bg[:, :, None])
        return video.astype(np.float32), fg

    def render_refs(self, scene: dict) -> np.ndarray:
        """The object alone, centred, on a white (+1) canvas of the video size -> [n, 1, 3, H, W]."""
        H, W = self.height, self.width
        n = len(scene["shape"])
        c = np.full((n, 1), W / 2), np.full((n, 1), H / 2)
        fg = self._shape_mask(scene["shape"], scene["radius"], c[0], c[1], H, W)[:, 0]  # [n,H,W]
        col = PALETTE[scene["colour"]][:, :, None, None]
        return np.where(fg[:, None], col, np.float32(1.0)).astype(np.float32)[:, None]

    # ---- conditions

    def _condition(self, task, rng, video, fg, scene):
        """One task for n samples -> (frames [n,3,T,H,W], mask [n,1,T,H,W], refs [n,R,3,H,W], cond_fixes [n,3])."""
        n, _, T, H, W = video.shape
        ones = np.ones((n, 1, T, H, W), np.float32)
        zeros = np.zeros_like(video)
        none = np.zeros((n, 0, 3, H, W), np.float32)
        fixes = np.zeros((n, 3), bool)
        if task == "t2v":
            return zeros, ones, none, fixes
        if task == "r2v":
            fixes[:, :2] = True
            return zeros, ones, self.render_refs(scene), fixes
        if task in ("first_frame", "first_clip", "last_frame"):
            keep_t = np.zeros(T, bool)
            if task == "first_frame":
                keep_t[0] = True
            elif task == "last_frame":
                keep_t[-1] = True
            else:
                keep_t[: (T + 1) // 2] = True
                fixes[:, 2] = True
            fixes[:, :2] = True
            mask = np.broadcast_to((~keep_t)[None, None, :, None, None], ones.shape).astype(np.float32)
            return video * (1 - mask), mask, none, fixes
        if task == "inpaint":
            c, r = scene["centre"], scene["radius"]
            margin = rng.integers(0, 3, (n, 4))
            x0 = c[..., 0].min(1) - r - 1 - margin[:, 0]
            x1 = c[..., 0].max(1) + r + 1 + margin[:, 1]
            y0 = c[..., 1].min(1) - r - 1 - margin[:, 2]
            y1 = c[..., 1].max(1) + r + 1 + margin[:, 3]
            x = np.arange(W) + 0.5
            y = np.arange(H) + 0.5
            inx = (x[None] >= x0[:, None]) & (x[None] <= x1[:, None])  # [n,W]
            iny = (y[None] >= y0[:, None]) & (y[None] <= y1[:, None])  # [n,H]
            box = (iny[:, :, None] & inx[:, None, :]).astype(np.float32)  # [n,H,W]
            mask = np.broadcast_to(box[:, None, None], ones.shape).astype(np.float32)
            return video * (1 - mask), mask, none, fixes
        if task == "outpaint":
            bh = np.floor(rng.uniform(0.15, 0.30, (n, 2)) * H).astype(int)  # top, bottom
            bw = np.floor(rng.uniform(0.15, 0.30, (n, 2)) * W).astype(int)  # left, right
            iy, ix = np.arange(H), np.arange(W)
            keep_y = (iy[None] >= bh[:, :1]) & (iy[None] < H - bh[:, 1:])
            keep_x = (ix[None] >= bw[:, :1]) & (ix[None] < W - bw[:, 1:])
            kept = keep_y[:, :, None] & keep_x[:, None, :]  # [n,H,W]
            mask = np.broadcast_to((~kept)[:, None, None], ones.shape).astype(np.float32)
            fg_kept = fg & kept[:, None]  # [n,T,H,W]
            whole = (fg_kept.sum((2, 3)) == fg.sum((2, 3))) & (fg.sum((2, 3)) > 0)  # [n,T]: object fully kept
            fixes[:, 0] = fg_kept.any((1, 2, 3))
            fixes[:, 1] = whole.any(1)
            fixes[:, 2] = whole.sum(1) >= 2
            return video * (1 - mask), mask, none, fixes
        if task == "depth":
            rmin, rmax = self.radius_range()
            level = _DEPTH_OBJ[0] + (_DEPTH_OBJ[1] - _DEPTH_OBJ[0]) * (scene["radius"] - rmin) / (rmax - rmin)
            ramp = _DEPTH_BG[0] + (_DEPTH_BG[1] - _DEPTH_BG[0]) * (np.arange(H) + 0.5) / H  # [H]
            d = np.where(fg, level[:, None, None, None], ramp[None, None, :, None])  # [n,T,H,W]
            fixes[:, 1:] = True
            return np.repeat(d[:, None].astype(np.float32), 3, 1), ones, none, fixes
        if task == "edges":
            e = np.where(outline(fg), np.float32(1), np.float32(-1))
            fixes[:, 1:] = True
            return np.repeat(e[:, None], 3, 1), ones, none, fixes
        if task == "grey":
            fixes[:] = True
            return np.repeat(luminance(video, 1)[:, None], 3, 1).astype(np.float32), ones, none, fixes
        raise ValueError(f"unknown toy task {task!r}; tasks are {TASKS}")

    # ---- sampling

    def _task_list(self, rng, batch, tasks) -> list[str]:
        if tasks is None:
            tasks = dict(self.task_mix)
        if isinstance(tasks, str):
            tasks = [tasks] * batch
        elif isinstance(tasks, Mapping):
            _check_mix(tasks)
            names = list(tasks)
            p = np.array([tasks[k] for k in names], np.float64)
            tasks = [names[i] for i in rng.choice(len(names), batch, p=p / p.sum())]
        else:
            tasks = list(tasks)
            if len(tasks) != batch:
                raise ValueError(f"tasks is a list of {len(tasks)} names but the batch has {batch} samples "
                                 "(give one name, a dict mix, or one name per sample)")
        bad = sorted({t for t in tasks if t not in TASKS})
        if bad:
            raise ValueError(f"unknown toy task(s) {bad}; tasks are {TASKS}")
        return tasks

    def sample_batch(self, seed, batch: int, tasks=None, *, captions: Sequence[str] | None = None,
                     attributes: Mapping[str, np.ndarray] | None = None) -> TaskBatch:
        """Render ``batch`` task samples.

        seed: int / sequence / np.random.Generator. tasks: None (the world's mix), one task name, a dict
        {task: weight}, or a list of one name per sample. captions: optional list of B prompts; the clips are
        then drawn from what each prompt allows (unspecified attributes uniform) and the captions are kept
        as given. attributes: optional {"colour"|"shape"|"motion": int [B]} with -1 = free (overrides both).
        """
        rng = _rng(seed)
        task = self._task_list(rng, batch, tasks)
        want = {k: np.full(batch, -1, np.int64) for k in ATTRIBUTES}
        specified = np.zeros((batch, 3), bool)
        if captions is not None:
            captions = list(captions)
            if len(captions) != batch:
                raise ValueError(f"got {len(captions)} captions for a batch of {batch}")
            for i, c in enumerate(captions):
                for j, (k, v) in enumerate(parse_caption(c).items()):
                    if v is not None:
                        want[k][i] = v
                        specified[i, j] = True
        for k, v in (attributes or {}).items():
            if k not in ATTRIBUTES:
                raise ValueError(f"unknown attribute {k!r}; attributes are {ATTRIBUTES}")
            v = np.asarray(v, np.int64).reshape(batch)
            want[k] = np.where(v >= 0, v, want[k])
        scene = self._sample_scene(rng, batch, **want)
        video, fg = self.render(scene)
        if captions is None:
            specs = np.array([s for s, _ in CAPTION_MIX], bool)
            p = np.array([q for _, q in CAPTION_MIX])
            specified = specs[rng.choice(len(specs), batch, p=p / p.sum())]
            specified[np.array([t == "r2v" for t in task], bool)] = R2V_SPECIFIED
            captions = [make_caption(scene["colour"][i], scene["shape"][i], scene["motion"][i], specified[i])
                        for i in range(batch)]

        T, H, W = self.frames, self.height, self.width
        frames = np.zeros_like(video)
        mask = np.ones((batch, 1, T, H, W), np.float32)
        fixes = np.zeros((batch, 3), bool)
        groups = {}
        for i, t in enumerate(task):
            groups.setdefault(t, []).append(i)
        n_refs = np.zeros(batch, np.int32)
        ref_parts = {}
        for t in TASKS:  # fixed order: the rng stream does not depend on the order samples appear in
            if t not in groups:
                continue
            idx = np.array(groups[t])
            sub = {k: v[idx] for k, v in scene.items()}
            f, m, r, fx = self._condition(t, rng, video[idx], fg[idx], sub)
            frames[idx], mask[idx], fixes[idx] = f, m, fx
            n_refs[idx] = r.shape[1]
            ref_parts[t] = (idx, r)
        refs = np.zeros((batch, int(n_refs.max(initial=0)), 3, H, W), np.float32)
        for idx, r in ref_parts.values():
            refs[idx, : r.shape[1]] = r
        return TaskBatch(task=task, caption=list(captions), video=video, frames=frames, mask=mask, refs=refs,
                         n_refs=n_refs, colour=scene["colour"], shape=scene["shape"], motion=scene["motion"],
                         radius=scene["radius"].astype(np.float32), centre=scene["centre"].astype(np.float32),
                         fg_mask=fg, specified=specified, determined=specified | fixes)

    def batches(self, seed: int, batch: int, tasks=None, *, start: int = 0,
                homogeneous: bool = True) -> Iterator[TaskBatch]:
        """Endless training batches. Step i is rendered from ``default_rng([seed, i])``, so resuming at
        ``start=i`` continues the same stream. homogeneous: one task per batch (drawn from the mix), else one
        task per sample."""
        step = start
        while True:
            rng = np.random.default_rng([seed, step])
            t = tasks
            if homogeneous and not isinstance(tasks, str):
                t = self._task_list(rng, 1, tasks)[0]
            yield self.sample_batch(rng, batch, t)
            step += 1

    def coverage_batch(self, seed, n_per_prompt: int = 12, prompts: Sequence[str] = COVERAGE_PROMPTS,
                       task: str = "t2v") -> TaskBatch:
        """n_per_prompt samples of each prompt (consecutive), the unspecified attributes stratified: every value
        appears equally often when n_per_prompt is a multiple of the number of combinations (12 by default:
        lcm of 4 colours, 3 shapes, 4 motions covers any single free attribute and colour x shape)."""
        caps, attrs = [], {k: [] for k in ATTRIBUTES}
        for p in prompts:
            parsed = parse_caption(p)
            for i in range(n_per_prompt):
                rest = i
                for k in ATTRIBUTES:
                    if parsed[k] is not None:
                        attrs[k].append(parsed[k])
                    else:
                        kk = len(VALUES[k])
                        attrs[k].append(rest % kk)
                        rest //= kk
                caps.append(p)
        n = len(caps)
        return self.sample_batch(seed, n, task, captions=caps, attributes={k: np.array(v) for k, v in attrs.items()})


def _check_mix(mix: Mapping[str, float]) -> None:
    bad = sorted(set(mix) - set(TASKS))
    if bad:
        raise ValueError(f"unknown toy task(s) {bad} in the task mix; tasks are {TASKS}")
    if not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"the task mix needs non-negative weights with a positive sum, got {dict(mix)}")


def sample_batch(seed, batch: int, tasks=None, **world_kwargs) -> TaskBatch:
    """``ToyWorld(**world_kwargs).sample_batch(seed, batch, tasks)``."""
    return ToyWorld(**world_kwargs).sample_batch(seed, batch, tasks)


# ----------------------------------------------------------------------------- text encoder


class ToyTextEncoder:
    """Deterministic text encoder for ``VOCAB``: each word -> a fixed random vector (seeded normal, rescaled to
    norm sqrt(dim), i.e. unit RMS per element), one per token, then zeros up to ``text_len`` -- as Wan zeroes
    the T5 features after the prompt. The empty prompt "" encodes to all zeros (the unconditional input).

    ``encode(["a red circle moving left"]) -> [1, text_len, dim]`` float32. Unknown words and prompts longer than
    ``text_len`` words raise ValueError. No training, no grammar check (use ``parse_caption`` for that).
    """

    def __init__(self, dim: int = 32, text_len: int = 8, seed: int = 0):
        if dim < 1 or text_len < 1:
            raise ValueError(f"ToyTextEncoder needs dim >= 1 and text_len >= 1, got dim={dim}, text_len={text_len}")
        self.dim, self.text_len, self.seed = dim, text_len, seed
        self.vocab = VOCAB
        self.index = {w: i for i, w in enumerate(VOCAB)}
        table = np.random.default_rng([seed, dim]).standard_normal((len(VOCAB), dim))
        self.table = (table / np.linalg.norm(table, axis=1, keepdims=True) * np.sqrt(dim)).astype(np.float32)

    def tokenize(self, prompt: str) -> list[int]:
        words = prompt.lower().split()
        bad = [w for w in words if w not in self.index]
        if bad:
            raise ValueError(f"prompt {prompt!r} has words outside the toy vocabulary {bad}; known words: {VOCAB}")
        if len(words) > self.text_len:
            raise ValueError(f"prompt {prompt!r} has {len(words)} words; the toy text encoder takes at most "
                             f"text_len={self.text_len}")
        return [self.index[w] for w in words]

    def lengths(self, prompts: Sequence[str] | str) -> np.ndarray:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        return np.array([len(self.tokenize(p)) for p in prompts], np.int32)

    def encode(self, prompts: Sequence[str] | str) -> np.ndarray:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = np.zeros((len(prompts), self.text_len, self.dim), np.float32)
        for i, p in enumerate(prompts):
            ids = self.tokenize(p)
            out[i, : len(ids)] = self.table[ids]
        return out

    __call__ = encode
