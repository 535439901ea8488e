"""Face: the release's face reference (``FaceAnnotator``: insightface's ``FaceAnalysis`` with ``antelopev2``,
``MULTI_FACE`` off) -- the crop of the first face the SCRFD detector finds. Only the detector's boxes decide the
crop, so its ONNX file (``antelopev2/scrfd_10g_bnkps.onnx``) is run here by onnxruntime and decoded as insightface
decodes it; insightface itself is not used (its wheel requires opencv-python 5, which replaces the cv2 module of
the pinned headless OpenCV).

The chain, per image (uint8 RGB, h x w):

* letterbox into 640 x 640 (``det_size``): scaled (OpenCV bilinear) so it fits, aspect kept (the other side
  truncated to an integer), pasted top-left on black; ``det_scale`` = new height / h;
* the network input is ``(x - 127.5) / 128`` with the channels reversed (``blobFromImage(swapRB=True)``; the
  release hands insightface the RGB image where it expects BGR, so the network sees BGR -- kept);
* per stride 8, 16, 32 (two anchors a cell, centres ``(column, row) x stride``): the anchors scoring >= 0.5
  (``det_thresh``), boxes ``centre -/+ distances x stride`` (left, top, right, bottom);
* all of them divided by ``det_scale``, ordered by score, NMS at IoU > 0.4 (areas with the +1 pixel convention);
* the first (most confident) face: ``image[int(y1) : int(y2) + 1, int(x1) : int(x2) + 1]`` (corners clipped at 0
  here; the release would slice from the end with a negative one).
"""

from __future__ import annotations

import numpy as np

DET_SIZE, THRESHOLD, NMS_IOU = 640, 0.5, 0.4
STRIDES, ANCHORS = (8, 16, 32), 2


def letterbox(image, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """uint8 [h, w, 3] -> (uint8 [size, size, 3] with the scaled image top-left on black, det_scale)."""
    import cv2

    h, w = image.shape[:2]
    if h / w > 1.0:
        nh, nw = size, int(size / (h / w))
    else:
        nw, nh = size, int(size * (h / w))
    out = np.zeros((size, size, 3), np.uint8)
    out[:nh, :nw] = cv2.resize(image, (nw, nh))
    return out, nh / h


def decode(outputs, det_scale: float, size: int = DET_SIZE, threshold: float = THRESHOLD,
           iou: float = NMS_IOU) -> np.ndarray:
    """SCRFD's outputs (scores per stride, then boxes per stride, then key points) -> faces [n, 5] (x1, y1, x2, y2,
    score) in image pixels, most confident first."""
    from vdot_jax.conditions.annotators.pose import _nms

    found = []
    for k, stride in enumerate(STRIDES):
        scores = np.asarray(outputs[k], np.float64).reshape(-1)
        dist = np.asarray(outputs[k + len(STRIDES)], np.float64).reshape(-1, 4) * stride
        n = size // stride
        centres = np.stack(np.mgrid[:n, :n][::-1], axis=-1).reshape(-1, 2) * stride
        centres = np.repeat(centres, ANCHORS, axis=0)  # the anchors of a cell are consecutive
        keep = scores >= threshold
        boxes = np.concatenate([centres - dist[:, :2], centres + dist[:, 2:]], axis=1)
        found.append(np.concatenate([boxes[keep] / det_scale, scores[keep, None]], axis=1))
    det = np.concatenate(found)
    det = det[det[:, 4].argsort(kind="stable")[::-1]]
    return det[_nms(det[:, :4], det[:, 4], iou)] if len(det) else det.reshape(0, 5)


def crop(image, box) -> np.ndarray:
    """The release's face crop: rows int(y1) .. int(y2), columns int(x1) .. int(x2), inclusive."""
    x1, y1, x2, y2 = (max(0, int(v)) for v in box[:4])
    return image[y1:y2 + 1, x1:x2 + 1]


class FaceDetector:
    def __init__(self, session):
        self.session = session
        self.outputs = [o.name for o in session.get_outputs()]
        if len(self.outputs) not in (6, 9):
            raise ValueError(f"the face detector has {len(self.outputs)} outputs; SCRFD with 3 strides has 6 or 9")

    def inputs(self, image) -> tuple[np.ndarray, float]:
        """uint8 [h, w, 3] RGB -> (float32 [1, 3, 640, 640], det_scale), the release's network input."""
        det, scale = letterbox(image)
        x = (det[..., ::-1].astype(np.float32) - 127.5) / 128.0
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), scale

    def faces(self, image) -> np.ndarray:
        x, scale = self.inputs(image)
        outs = self.session.run(self.outputs, {self.session.get_inputs()[0].name: x})
        return decode([o[0] if o.ndim == 3 else o for o in outs], scale)  # batched exports: drop the batch

    def __call__(self, image):
        """uint8 [h, w, 3] -> the first face's crop, or None when there is no face."""
        det = self.faces(image)
        return crop(image, det[0]) if len(det) else None


def load(path: str) -> FaceDetector:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 -- onnxruntime's errors share no public base
        raise ValueError(f"{path} does not load as an ONNX model: {type(e).__name__}") from None
    return FaceDetector(session)
