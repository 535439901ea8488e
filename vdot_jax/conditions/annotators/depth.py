"""Depth: Depth-Anything-V2 (transformers' ``DepthAnythingForDepthEstimation``), as the release's
``DepthV2VideoAnnotator`` runs it.

Per frame, the release's ``infer_image`` + post-processing:

* the frame's channels reversed (the release calls ``cv2.cvtColor(BGR2RGB)`` on the RGB frames it read, so the
  network sees BGR; kept, as ``gray`` keeps the release's channel weights), scaled to [0, 1];
* resized (OpenCV bicubic) so both sides are at least 518 with the aspect kept, each side then rounded to a multiple
  of 14 (``net_size``), normalised with ImageNet's mean and std;
* the relative depth resized back to the frame (bilinear, corners aligned), shifted to 0 and divided by its maximum
  (per frame), times 255, clipped, truncated to uint8, repeated in three channels: near = white.

A constant depth map (max 0 after the shift) is black here; the release divides by zero there.
"""

from __future__ import annotations

import numpy as np

NET_SIDE, MULTIPLE = 518, 14
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def net_size(height: int, width: int, side: int = NET_SIDE, multiple: int = MULTIPLE) -> tuple[int, int]:
    """The network's input size for a ``height`` x ``width`` frame (the release's ``Resize``: keep aspect, lower
    bound ``side``, sides rounded (half to even) to a multiple of ``multiple``, up if that falls below ``side``)."""
    scale = max(side / height, side / width)

    def fit(x):
        y = int(np.round(x / multiple) * multiple)
        return int(np.ceil(x / multiple) * multiple) if y < side else y

    return fit(scale * height), fit(scale * width)


def depth_to_frames(depth) -> np.ndarray:
    """Relative depth [T, H, W] -> uint8 [T, H, W, 3]: per frame (d - min) / max * 255, clipped, truncated."""
    d = np.asarray(depth, np.float32)
    d = d - d.min(axis=(1, 2), keepdims=True)
    top = d.max(axis=(1, 2), keepdims=True)
    d = np.divide(d, top, out=np.zeros_like(d), where=top > 0)
    g = (d * 255.0).clip(0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


class DepthAnything:
    def __init__(self, model, batch: int = 4, side: int = NET_SIDE):
        self.model, self.batch, self.side = model, batch, side  # side: the release's input_size

    def inputs(self, frames) -> np.ndarray:
        """uint8 [T, H, W, 3] RGB -> float32 [T, 3, h, w], the release's network input."""
        import cv2

        h, w = frames.shape[1:3]
        nh, nw = net_size(h, w, self.side)
        out = []
        for f in frames:
            x = f[..., ::-1] / 255.0  # the release's cvtColor(BGR2RGB) of an RGB frame
            x = cv2.resize(x, (nw, nh), interpolation=cv2.INTER_CUBIC)
            out.append(((x - MEAN) / STD).transpose(2, 0, 1))
        return np.ascontiguousarray(np.stack(out), np.float32)

    def depth(self, frames) -> np.ndarray:
        """uint8 [T, H, W, 3] -> relative depth [T, H, W] (float32, before normalisation)."""
        import torch
        import torch.nn.functional as F

        h, w = frames.shape[1:3]
        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch):
                x = torch.from_numpy(self.inputs(frames[i:i + self.batch]))
                d = self.model(pixel_values=x).predicted_depth
                out.append(F.interpolate(d[:, None], (h, w), mode="bilinear", align_corners=True)[:, 0].numpy())
        return np.concatenate(out)

    def __call__(self, frames) -> np.ndarray:
        return depth_to_frames(self.depth(frames))


def load(path: str) -> DepthAnything:
    from transformers import DepthAnythingForDepthEstimation
    from transformers.utils import logging

    logging.disable_progress_bar()  # vdot's output stays its own lines
    return DepthAnything(DepthAnythingForDepthEstimation.from_pretrained(path, local_files_only=True).eval())
