"""A model-free task's inputs derived from its ground-truth video: training from raw videos.

A manifest row with only ``video`` and ``caption`` (optionally ``task``, ``boxes``, ``mask``) is trained on a
task drawn from ``config.data.raw_task_mix``; its VCU is built here from the decoded video with the builders that
``vdot prepare`` and ``vdot generate --task`` use (``conditions.vcu``, ``conditions.prepare``), parameters drawn
from a caller-seeded generator (the pipeline seeds it with ``[seed, step, slot]``, so resume is exact):

    params = draw_params(task, rng, num_frames, height, width, region=None)   # plain dict: the draws
    vcu = derive(task, video [1,3,T,H,W], params, region=None)

``region`` is what the row marks: ``("boxes", [T, 4] output pixels)`` or ``("mask", [1, 1, T, H, W])``.

Tasks (``RAW_TASKS``) and what is drawn:

* ``t2v``: nothing (grey frames, all generated); ``plain``: the video itself as a control (``v2v``);
  ``gray``: the release's grey control; ``edges``: Canny edges (``conditions.prepare.edges``, a stand-in for
  scribble, NOT the release's scribble model), low threshold uniform in [50, 150], high = 2 x low;
* ``layout`` (needs a region): box outlines (``layout_boxes``) or mask outlines (``layout_masks``);
* ``frameref``: mode uniform over first / last / firstlast / random, ``ref_num`` in [1, max(1, T // 4)];
* ``inpaint``: the row's region through the release's mask augmentation (kind uniform over its six modes), or
  without one a random box (sides 20-60 % of the frame's, anywhere inside it) for every frame;
* ``outpaint``: inner outpainting (the frame's own border regenerated, so the condition stays aligned with the
  ground truth), each side's ratio uniform in [0.05, 0.3];
* the extension modes ``first_frame`` ... ``first_last_clip``: ``extension_from_video``, clips of ``k`` frames,
  ``k`` uniform in [1, max(1, (T - 1) // 2)] so at least one frame is generated.

Tasks that need an annotator model (depth, pose, flow, the release's scribble) or files (r2v, v2v, mv2v) are not
derivable (``check_task``).
"""

from __future__ import annotations

import numpy as np

from vdot_jax.conditions import prepare as PR
from vdot_jax.conditions.vcu import (
    CONTROL_KINDS, EXTENSION_MODES, VCU, ConditionError, extension_from_video, inpaint, t2v, v2v,
)

RAW_TASKS = ("t2v", "plain", "gray", "edges", "layout", "frameref", "inpaint", "outpaint") + EXTENSION_MODES
REGION_TASKS = ("layout",)  # only with a region the row gives (inpaint draws a box without one)
ANNOTATOR_TASKS = tuple(k for k in CONTROL_KINDS if k not in RAW_TASKS)  # depth, pose, scribble, flow


def check_task(task: str, has_region: bool) -> None:
    """A one-sentence ``ConditionError`` unless ``task`` can be derived from a row's video (and region)."""
    if task in ANNOTATOR_TASKS:
        raise ConditionError(f"task {task} needs an annotator model and the row has no condition files (src_video); "
                             f"make them first (`vdot precompute --annotate {task}=WEIGHTS` writes them and a "
                             f"manifest naming them), or train a model-free task ({', '.join(RAW_TASKS)}).")
    if task not in RAW_TASKS:
        raise ConditionError(f"task {task} cannot be derived from the video alone (it needs src_video / "
                             f"src_ref_images files); model-free tasks are {', '.join(RAW_TASKS)}.")
    if task in REGION_TASKS and not has_region:
        raise ConditionError(f"task {task} needs boxes or a mask in the row.")


def draw_task(mix: dict, rng: np.random.Generator, has_region: bool) -> str:
    """A task from ``mix`` (name -> weight), among those the row can do; the names sorted, so the draw does not
    depend on the mix's key order (which a config file, an override or a saved config may change)."""
    names = sorted(k for k, w in mix.items() if float(w) > 0 and (has_region or k not in REGION_TASKS))
    if not names:
        raise ConditionError("no task of the raw task mix can be derived for this row (layout needs boxes or a "
                             "mask).")
    p = np.array([float(mix[k]) for k in names], np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def random_box(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One box [4] (x1, y1, x2, y2) with sides 20-60 % of the frame's, inside it."""
    bw, bh = rng.uniform(0.2, 0.6) * width, rng.uniform(0.2, 0.6) * height
    x1, y1 = rng.uniform(0, width - bw), rng.uniform(0, height - bh)
    return np.array([x1, y1, x1 + bw, y1 + bh])


def draw_params(task: str, rng: np.random.Generator, num_frames: int, height: int, width: int,
                has_region: bool = False) -> dict:
    """The random choices of ``task`` (module docstring), as plain numbers."""
    check_task(task, has_region)
    t = int(num_frames)
    if task == "edges":
        low = float(rng.uniform(50.0, 150.0))
        return {"low": low, "high": 2.0 * low}
    if task == "frameref":
        return {"mode": PR.FRAMEREF_MODES[int(rng.integers(len(PR.FRAMEREF_MODES)))],
                "ref_num": int(rng.integers(1, max(1, t // 4) + 1)), "seed": int(rng.integers(2**31))}
    if task == "inpaint":
        if has_region:
            return {"mask_kind": PR.MASKAUG_MODES[int(rng.integers(6))], "seed": int(rng.integers(2**31))}
        return {"box": [float(v) for v in random_box(rng, height, width)]}
    if task == "outpaint":
        return {"ratios": [float(v) for v in rng.uniform(0.05, 0.3, 4)]}  # top, bottom, left, right
    if task in EXTENSION_MODES and task.endswith("_clip"):
        return {"clip_frames": int(rng.integers(1, max(1, (t - 1) // 2) + 1))}
    return {}


def region_masks(region, height: int, width: int) -> np.ndarray:
    kind, value = region
    return PR.box_masks(value, height, width) if kind == "boxes" else np.asarray(value, np.float32)


def derive(task: str, video, params: dict, region=None) -> VCU:
    """``task``'s one-sample VCU from the ground-truth ``video`` [1, 3, T, H, W] in [-1, 1] (module docstring)."""
    v = np.asarray(video, np.float32)
    _, _, t, h, w = v.shape
    check_task(task, region is not None)
    if task == "t2v":
        return t2v(t, h, w)
    if task == "plain":
        return VCU(v, np.ones((1, 1, t, h, w), np.float32), task="v2v", kind="control")
    if task == "gray":
        return v2v(PR.gray(v), "gray")
    if task == "edges":
        return v2v(PR.edges(v, params["low"], params["high"]), "scribble")
    if task == "layout":
        kind, value = region
        return v2v(PR.layout_boxes(value, h, w) if kind == "boxes" else PR.layout_masks(value), "layout")
    if task == "frameref":
        return PR.frame_refs(v, params["mode"], params["ref_num"], np.random.default_rng(params["seed"]))
    if task == "inpaint":
        if region is None:
            return inpaint(v, PR.box_masks(np.asarray([params["box"]]).repeat(t, 0), h, w))
        masks = PR.mask_aug(region_masks(region, h, w), params["mask_kind"], np.random.default_rng(params["seed"]))
        return inpaint(v, masks)
    if task == "outpaint":
        return PR.outpaint_inner(v, *params["ratios"])
    return extension_from_video(v, task, params.get("clip_frames", 1))
