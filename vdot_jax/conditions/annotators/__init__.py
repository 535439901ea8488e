"""Annotator models (optional, ``pip install -e ".[annotators]"``): raw frames -> the control video of a task,
post-processed exactly as the release's annotators (``inference/annotators/`` of VDOT / VACE) post-process it.

One small module per backend; this registry names, per task, what to install, what the weights path is and why a
backend is unavailable, without importing any of them (so ``vdot --help`` stays light)::

    AN.check("depth", weights)                 # AnnotatorError (one line) unless the packages import and the
                                               # weights path exists -- before any video is read
    model = AN.load("depth", weights)          # the network, loaded once (a folder or file given by path; nothing
                                               # is downloaded)
    control = AN.annotate(model, video)        # video [1, 3, T, H, W] in [-1, 1] -> control frames, same shape
    vcu = C.v2v(control, BACKENDS["depth"].kind)

A backend's model is a callable ``uint8 [T, H, W, 3] RGB -> uint8 [T, H, W, 3]``: the release works on uint8
RGB frames and writes uint8, so its rounding is kept. Frames reach it already resized and cropped to the output
size (``video_io``), so the control comes out at the size and frame count of the video it conditions.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from vdot_jax.errors import VdotError

INSTALL = 'pip install -e ".[annotators]"'


class AnnotatorError(VdotError):
    """An annotator that cannot run here: its package is missing, or its weights are missing or unreadable."""


@dataclass(frozen=True)
class Backend:
    task: str  # the name of `vdot prepare TASK` and of a manifest row's task
    kind: str  # the control kind of the VCU (conditions.vcu.CONTROL_KINDS)
    module: str  # vdot_jax.conditions.annotators.<module>: load(path) -> callable
    packages: tuple[str, ...]  # import names the backend needs
    weights: str  # what --weights points at
    release: str  # the release's weights file, and how to use it here
    install: str = INSTALL  # how to get the packages
    parts: int = 1  # paths in --weights, comma-separated
    min_frames: int = 1
    min_side: int = 1  # the network's smallest input side


BACKENDS = {
    "depth": Backend(
        "depth", "depth", "depth", ("torch", "transformers", "cv2"),
        "a Depth-Anything-V2 model folder in transformers' layout (config.json + model.safetensors, e.g. "
        "depth-anything/Depth-Anything-V2-Large-hf)",
        "depth_anything_v2_vitl.pth, which transformers' convert_depth_anything_to_hf.py converts"),
    "flow": Backend(
        "flow", "flow", "flow", ("torch", "torchvision"),
        "a torchvision RAFT state dict file (raft_large or raft_small, e.g. raft_large_C_T_V1-22a6c225.pth, the "
        "paper's weights ported)",
        "raft-things.pth, whose port torchvision ships as raft_large_C_T_V1",
        install=INSTALL + " and torchvision==0.28.0 built for your torch (CPU torch: pip install torchvision==0.28.0 "
                          "--index-url https://download.pytorch.org/whl/cpu)",
        min_frames=2, min_side=128),  # flow is between frames; RAFT's correlation pyramid needs 16 x 8 pixels
    "pose": Backend(
        "pose", "pose", "pose", ("onnxruntime", "cv2"),
        "the two DWPose ONNX files, detector then pose model: DET.onnx,POSE.onnx",
        "yolox_l.onnx,dw-ll_ucoco_384.onnx (give those two)", parts=2),
    "scribble": Backend(
        "scribble", "scribble", "scribble", ("torch",),
        "the release's scribble network, a torch state dict file (VACE-Annotators' scribble/anime_style/"
        "netG_A_latest.pth)",
        "scribble/anime_style/netG_A_latest.pth, which loads as it is"),
    # not a control: masks of the object a box marks on the first frame, for inpainting and layout
    "track": Backend(
        "track", "mask", "sam2", ("torch", "transformers"),
        "a SAM 2 video model folder in transformers' layout (config.json + model.safetensors, e.g. "
        "facebook/sam2.1-hiera-large)",
        "sam2.1_hiera_large.pt, which transformers' convert_sam2_to_hf.py converts"),
    # not a control: the box a label or caption names on the first frame, which "track" then follows
    "detect": Backend(
        "detect", "box", "gdino", ("torch", "transformers", "PIL"),
        "a Grounding DINO model folder in transformers' layout with its tokenizer (config.json, model.safetensors, "
        "tokenizer files; e.g. IDEA-Research/grounding-dino-tiny)",
        "groundingdino_swint_ogc.pth with bert-base-uncased, which transformers' convert_grounding_dino_to_hf.py "
        "converts (IDEA-Research/grounding-dino-tiny)"),
    # not a control: the salient object of the first frame, as a mask or as the box "track" follows
    "salient": Backend(
        "salient", "mask", "salient", ("torch", "PIL", "cv2"),
        "the release's U^2-Net, a torch state dict file (VACE-Annotators' salient/u2net.pt)",
        "salient/u2net.pt, which loads as it is"),
    # not a control: the crop of the first face of a reference image
    "face": Backend(
        "face", "reference", "face", ("onnxruntime", "cv2"),
        "the release's face detector ONNX file (antelopev2/scrfd_10g_bnkps.onnx of VACE-Annotators' face folder)",
        "face/antelopev2/ (insightface's FaceAnalysis; only its detector, scrfd_10g_bnkps.onnx, decides the crop)"),
}
NOT_CONTROLS = ("mask", "box", "reference")  # the kinds of the backends that make masks, boxes or reference crops
ANNOTATOR_TASKS = tuple(k for k, b in BACKENDS.items() if b.kind not in NOT_CONTROLS)  # those that make a control


def backend(task: str) -> Backend:
    if task not in BACKENDS:
        raise AnnotatorError(f"no annotator for task {task!r}; annotator tasks are {', '.join(BACKENDS)}.")
    return BACKENDS[task]


def check(task: str, weights, flag: str = "--weights") -> Backend:
    """The backend of ``task`` if its packages import and ``weights`` exists; else one ``AnnotatorError`` line
    naming what to install or where the weights go (nothing is read or written before this)."""
    b = backend(task)
    for name in b.packages:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 -- a missing package, or one that cannot load beside this torch
            why = "is not installed" if isinstance(e, ModuleNotFoundError) else f"cannot be loaded ({_short(e)})"
            raise AnnotatorError(f"task {task} needs the Python package {name}, which {why}: {b.install}; then give "
                                 f"{flag}: {b.weights}.") from None
    if not weights:
        raise AnnotatorError(f"task {task} needs its model's weights: give {flag}, {b.weights}; nothing is "
                             f"downloaded (the release uses {b.release}).")
    paths = str(weights).split(",")
    if len(paths) != b.parts:
        raise AnnotatorError(f"{task} weights are {b.parts} path(s) separated by ',': {b.weights}; got {weights}.")
    for p in paths:
        if not Path(p).exists():
            raise AnnotatorError(f"{task} weights {p} do not exist; give {b.weights}.")
    return b


def check_size(task: str, num_frames: int, height: int, width: int) -> None:
    """One line unless the backend can run on ``num_frames`` frames of ``height`` x ``width``."""
    b = backend(task)
    if num_frames < b.min_frames:
        raise AnnotatorError(f"task {task} needs at least {b.min_frames} frames, got {num_frames}.")
    if min(height, width) < b.min_side:
        raise AnnotatorError(f"task {task} needs frames of at least {b.min_side} pixels a side, got {height}x{width} "
                             f"(raise --height/--width).")


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:160] or type(e).__name__


def load(task: str, weights, flag: str = "--weights"):
    """``check``, then the backend's model loaded from ``weights`` (an ``AnnotatorError`` if it cannot be)."""
    b = check(task, weights, flag)
    module = importlib.import_module(f"{__name__}.{b.module}")
    try:
        return module.load(str(weights))
    except AnnotatorError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        raise AnnotatorError(f"cannot load {task} weights from {weights} ({_short(e)}); give {b.weights}.") from None


def state_dict(path: str) -> dict:
    """A torch state dict file's tensors (``weights_only``: nothing in it runs); a ``ValueError`` naming the file if
    it is not one (torch.load raises pickle, struct, EOF or runtime errors for other files)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- any file that is not a torch save
        raise ValueError(f"{path} is not a torch state dict file: {type(e).__name__}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    return state


def to_uint8(video) -> np.ndarray:
    """[1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (the frames the release's annotators read)."""
    import numpy as np

    v = np.asarray(video, np.float32)[0].transpose(1, 2, 3, 0)
    return np.clip(np.rint((v + 1.0) * 127.5), 0, 255).astype(np.uint8)


def from_uint8(frames) -> np.ndarray:
    """uint8 [T, H, W, 3] -> [1, 3, T, H, W] in [-1, 1]."""
    import numpy as np

    return (np.asarray(frames, np.float32) / 127.5 - 1.0).transpose(3, 0, 1, 2)[None]


def annotate(model, video) -> np.ndarray:
    """A loaded model over ``video`` [1, 3, T, H, W] in [-1, 1] -> control frames of the same shape."""
    import numpy as np

    frames = to_uint8(video)
    out = np.asarray(model(frames))
    if out.shape != frames.shape or out.dtype != np.uint8:
        raise AssertionError(f"annotator returned {out.shape} {out.dtype} for frames {frames.shape}")  # a bug
    return from_uint8(out)
