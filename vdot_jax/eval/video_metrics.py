"""Offline video metrics (numpy, no weights) and the metric registry ``vdot eval`` scores with.

Per-video metrics take a ``Sample``: the generated frames (uint8 [F, H, W, 3]) and, when the task had a source
video, the source frames ([-1, 1], the generated size) with the VCU mask (1 = generate, 0 = keep):

* ``temporal_consistency`` = 1 - mean |x_{t+1} - x_t| (pixels in [0, 1]): 1 for a still video; low when frames
  change a lot from one to the next.
* ``flicker`` = mean |x_{t+1} - 2 x_t + x_{t-1}| (x 255, in grey levels): the second temporal difference, which
  smooth motion keeps small and frame-to-frame flicker does not. Lower is better.
* ``kept_psnr`` / ``kept_mae`` (editing tasks: inpainting, outpainting, extension): PSNR (dB) and mean absolute
  error (x 255) between the generated and the source video over the pixels the mask keeps -- fidelity to the
  source where it should not change.

Batch metrics score a folder of videos at once (``compute_batch``); ``vbench_metrics()`` wraps VBench dimensions
as such, run through VBench's own command line (``vbench evaluate --mode=custom_input``) in a separate process,
and available only when the ``vbench`` command is installed and the dimension's weights are in VBench's cache
(``$VBENCH_CACHE_DIR`` or ``~/.cache/vbench``): nothing is downloaded. ``register`` adds a metric; a metric
that is not available is listed as skipped with its reason.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np


@dataclasses.dataclass
class Sample:
    frames: np.ndarray  # uint8 [F, H, W, 3], the generated video
    source: np.ndarray | None = None  # float32 [F, H, W, 3] in [-1, 1] at the generated size, or None
    mask: np.ndarray | None = None  # float32 [F, H, W] in {0, 1}: 1 = generated, 0 = kept from the source
    family: str = ""  # text | reference | control | repaint | extension | composite


@dataclasses.dataclass
class Metric:
    name: str
    compute: Callable[[Sample], float | None] | None = None  # per video; None = not applicable to this sample
    compute_batch: Callable[[Path, Sequence[Path]], Mapping[str, float]] | None = None  # folder -> {file: value}
    available: Callable[[], str | None] = lambda: None  # None, or why it cannot run here
    higher_is_better: bool = True
    description: str = ""


REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    if (metric.compute is None) == (metric.compute_batch is None):
        raise ValueError(f"metric {metric.name} needs exactly one of compute and compute_batch")
    REGISTRY[metric.name] = metric
    return metric


def _unit(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames, np.float32) / 255.0


def _ints(frames: np.ndarray) -> np.ndarray:
    return np.asarray(frames).astype(np.int16)  # exact differences of uint8 frames


def temporal_consistency(s: Sample) -> float | None:
    x = _ints(s.frames)
    if x.shape[0] < 2:
        return None
    return float(1.0 - np.mean(np.abs(np.diff(x, axis=0)), dtype=np.float64) / 255.0)


def flicker(s: Sample) -> float | None:
    x = _ints(s.frames)
    if x.shape[0] < 3:
        return None
    return float(np.mean(np.abs(x[2:] - 2 * x[1:-1] + x[:-2]), dtype=np.float64))


def _kept(s: Sample) -> tuple[np.ndarray, np.ndarray] | None:
    if s.source is None or s.mask is None:
        return None
    keep = s.mask < 0.5
    if not keep.any():
        return None
    gen = _unit(s.frames)
    src = np.clip(np.asarray(s.source, np.float32) * 0.5 + 0.5, 0.0, 1.0)
    if gen.shape != src.shape:
        raise ValueError(f"generated video {gen.shape} and source {src.shape} differ in shape")
    return gen[keep], src[keep]


def kept_psnr(s: Sample) -> float | None:
    kept = _kept(s)
    if kept is None:
        return None
    mse = float(np.mean((kept[0] - kept[1]) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def kept_mae(s: Sample) -> float | None:
    kept = _kept(s)
    return None if kept is None else float(255.0 * np.mean(np.abs(kept[0] - kept[1])))


register(Metric("temporal_consistency", temporal_consistency,
                description="1 - mean absolute difference of consecutive frames (pixels in [0, 1])"))
register(Metric("flicker", flicker, higher_is_better=False,
                description="mean absolute second temporal difference, in grey levels"))
register(Metric("kept_psnr", kept_psnr, description="PSNR (dB) to the source where the mask keeps it"))
register(Metric("kept_mae", kept_mae, higher_is_better=False,
                description="mean absolute error (grey levels) to the source where the mask keeps it"))


# ----------------------------------------------------------------------------- VBench dimensions


# The checkpoints each VBench dimension loads from its cache folder (VBench's ``init_submodules``); a dimension
# is offered only when all of them are there.
VBENCH_WEIGHTS = {
    "subject_consistency": ("dino_model/dino_vitbase16_pretrain.pth",),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "aesthetic_quality": ("aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth", "clip_model/ViT-L-14.pt"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "temporal_flickering": (),
}


def vbench_cache() -> Path:
    return Path(os.environ.get("VBENCH_CACHE_DIR") or Path.home() / ".cache" / "vbench")


def _vbench_available(dimension: str) -> str | None:
    if shutil.which("vbench") is None:
        return "the vbench command is not installed (pip install vbench)"
    missing = [w for w in VBENCH_WEIGHTS[dimension] if not (vbench_cache() / w).exists()]
    if missing:
        return f"VBench weights not found in {vbench_cache()}: {', '.join(missing)}"
    return None


def _vbench_batch(dimension: str):
    def run(folder: Path, videos: Sequence[Path]) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="vbench_") as out:
            cmd = ["vbench", "evaluate", "--dimension", dimension, "--videos_path", str(folder),
                   "--mode=custom_input", "--output_path", out, "--load_ckpt_from_local", "True"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"vbench evaluate --dimension {dimension} failed: {proc.stderr.strip()[-500:]}")
            results = {}
            for f in Path(out).glob("*_eval_results.json"):
                data = json.loads(f.read_text()).get(dimension)
                if data and len(data) > 1:
                    for item in data[1]:
                        if isinstance(item, dict) and "video_path" in item:
                            results[Path(item["video_path"]).name] = float(item["video_results"])
            return results

    return run


def vbench_metrics() -> list[Metric]:
    return [Metric(f"vbench_{d}", compute_batch=_vbench_batch(d), available=lambda d=d: _vbench_available(d),
                   description=f"VBench {d.replace('_', ' ')} (custom input mode)") for d in VBENCH_WEIGHTS]


for _m in vbench_metrics():
    register(_m)
