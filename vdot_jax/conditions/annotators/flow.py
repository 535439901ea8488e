"""Flow: RAFT (torchvision's ``raft_large`` / ``raft_small``), drawn as the release's ``FlowVisAnnotator`` draws it.

For each pair of consecutive frames (uint8 RGB, scaled to [-1, 1], which torchvision's RAFT takes and the
original RAFT makes of 0..255 itself), the flow after 20 refinement steps (the release's ``iters=20``; torchvision's
default is 12) is coloured with the Middlebury colour wheel (``flow_to_rgb``): hue = direction, saturation =
magnitude relative to the largest of that pair. T frames give T - 1 flows; the release repeats the first, so the
control keeps the video's T frames (``vis[0], vis[0], vis[1], ..., vis[T-2]``).

Frames whose sides are not multiples of 8 are padded by edge replication (the release's ``InputPadder``) and the flow
cropped back (the release forgets to crop; ``vdot`` frames are multiples of 16, where nothing is padded).
"""

from __future__ import annotations

import numpy as np

ITERS = 20
# segments of the colour wheel: red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red
_SEGMENTS = (15, 6, 4, 11, 13, 6)


def colour_wheel() -> np.ndarray:
    """[55, 3] RGB in 0..255: the Middlebury wheel, each segment ramping one channel with ``floor(255 * i / n)``."""
    rows = []
    for seg, n in enumerate(_SEGMENTS):
        up = np.floor(255 * np.arange(n) / n)
        full, zero = np.full(n, 255.0), np.zeros(n)
        rows.append({0: (full, up, zero), 1: (255 - up, full, zero), 2: (zero, full, up),
                     3: (zero, 255 - up, full), 4: (up, zero, full), 5: (full, zero, 255 - up)}[seg])
    return np.concatenate([np.stack(r, 1) for r in rows])


def flow_to_rgb(flow) -> np.ndarray:
    """Flow [H, W, 2] (x, y pixels) -> uint8 [H, W, 3]: scaled by its largest magnitude (+1e-5), angle
    ``atan2(-v, -u)`` on the wheel (interpolated between its entries), whitened toward 0 magnitude."""
    f = np.asarray(flow, np.float64)
    u, v = f[..., 0], f[..., 1]
    scale = np.sqrt(u ** 2 + v ** 2).max() + 1e-5
    u, v = u / scale, v / scale
    rad = np.sqrt(u ** 2 + v ** 2)
    wheel = colour_wheel() / 255.0
    n = len(wheel)
    pos = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1)
    k0 = np.floor(pos).astype(np.int64)
    k1 = (k0 + 1) % n
    w = (pos - k0)[..., None]
    col = (1 - w) * wheel[k0] + w * wheel[k1]
    r = rad[..., None]
    col = np.where(r <= 1, 1 - r * (1 - col), col * 0.75)
    return np.floor(255 * col).astype(np.uint8)


def repeat_first(vis: list) -> list:
    """T - 1 pair images -> T frames: the first repeated, as the release keeps the frame count."""
    return vis[:1] + vis


class Raft:
    def __init__(self, model, iters: int = ITERS):
        self.model, self.iters = model, iters

    def flows(self, frames) -> np.ndarray:
        """uint8 [T, H, W, 3] -> flows [T - 1, H, W, 2] between consecutive frames."""
        import torch
        import torch.nn.functional as F

        h, w = frames.shape[1:3]
        ph, pw = -h % 8, -w % 8
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        x = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).float() / 127.5 - 1.0
        x = F.pad(x, pad, mode="replicate")
        out = []
        with torch.inference_mode():
            for i in range(len(frames) - 1):
                flow = self.model(x[i:i + 1], x[i + 1:i + 2], num_flow_updates=self.iters)[-1][0]
                out.append(flow[:, pad[2]:pad[2] + h, pad[0]:pad[0] + w].permute(1, 2, 0).numpy())
        return np.stack(out) if out else np.zeros((0, h, w, 2), np.float32)

    def __call__(self, frames) -> np.ndarray:
        if len(frames) < 2:
            from vdot_jax.conditions.annotators import AnnotatorError

            raise AnnotatorError("task flow needs at least 2 frames (flow is between consecutive frames).")
        return np.stack(repeat_first([flow_to_rgb(f) for f in self.flows(frames)]))


def load(path: str) -> Raft:
    from torchvision.models.optical_flow import raft_large, raft_small

    from vdot_jax.conditions.annotators import AnnotatorError, state_dict

    state = state_dict(path)
    if any(".fnet." in k or k.startswith("fnet.") for k in state):
        raise AnnotatorError(f"flow weights {path} are in the original RAFT repo's layout (the release's "
                             f"raft-things.pth); give torchvision's (raft_large_C_T_V1 holds the same weights).")
    model = (raft_large if any(k.startswith("mask_predictor.") for k in state) else raft_small)(weights=None)
    model.load_state_dict(state)
    return Raft(model.eval())
