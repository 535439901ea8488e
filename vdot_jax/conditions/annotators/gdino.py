"""Text -> box: Grounding DINO (transformers' ``GroundingDinoForObjectDetection``) finds the object a label or a
caption names on the first frame; SAM 2 (``sam2.py``) then follows that box -- the release's ``label`` / ``caption``
inpainting modes (``GDINOAnnotator`` feeding ``SAM2VideoAnnotator``).

The release's chain (its ``GDINOAnnotator`` over the groundingdino package's ``Model``), kept here:

* text: labels ``a,b`` become the caption ``"a. b"`` (``predict_with_classes``); a caption is taken as given; then
  lower-cased, stripped and ended with ``"."`` (``preprocess_caption``);
* image: the RGB frame resized (PIL bilinear) so its short side is 800 unless the long side would pass 1333, then
  the long side is 1333 (DETR's ``RandomResize([800], max_size=1333)``, sizes truncated to integers), scaled to
  [0, 1] and normalised with ImageNet's mean and std;
* boxes: a query is kept when its largest sigmoid score over the text tokens is > 0.25 (``BOX_THRESHOLD``), its
  confidence that score; its normalised centre/size box times the frame's width and height, as corners (not
  clipped); non-maximum suppression at IoU 0.5 (``USE_NMS``: torchvision's, IoU > 0.5 suppressed, highest first);
  the first box left -- the most confident -- is the one tracked (``gdino_res['boxes'][0]``). No box: one line
  (the release raises ``Unable to find the corresponding boxes``). ``TEXT_THRESHOLD`` only names phrases, which
  choose no box, so it is not needed.
"""

from __future__ import annotations

import numpy as np

SIZE, MAX_SIZE = 800, 1333
BOX_THRESHOLD, IOU_THRESHOLD = 0.25, 0.5
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def caption_text(labels=None, caption=None) -> str:
    """The text the model reads: labels joined as ``"a. b"`` or the caption, lower-cased, stripped, ending in '.'."""
    text = ". ".join(labels) if labels is not None else caption
    text = text.lower().strip()
    return text if text.endswith(".") else text + "."


def input_size(height: int, width: int, size: int = SIZE, max_size: int = MAX_SIZE) -> tuple[int, int]:
    """The network's input (height, width) for a frame: DETR's resize to a short side ``size`` capped by a long
    side ``max_size`` (sizes truncated to integers)."""
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if min(height, width) == size:
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = IOU_THRESHOLD) -> np.ndarray:
    """Indices of the boxes kept, most confident first: a box is dropped when its IoU with a kept, more confident
    box is > ``iou`` (torchvision's ``nms``: corners, area (x2 - x1)(y2 - y1))."""
    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        order = rest[inter / (area[i] + area[rest] - inter) <= iou]
    return np.asarray(keep, np.int64)


def detections(logits, boxes, height: int, width: int, box_threshold: float = BOX_THRESHOLD,
               iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """The release's post-processing of one image's outputs: ``logits`` [queries, text tokens] (before the
    sigmoid; -inf past the text), ``boxes`` [queries, 4] normalised (cx, cy, w, h) -> boxes [n, 4] (x1, y1, x2, y2)
    in frame pixels and their confidences [n], most confident first."""
    score = 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    score = score.max(axis=-1)
    keep = score > box_threshold
    cx, cy, w, h = (np.asarray(boxes, np.float64)[keep] * [width, height, width, height]).T
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1).reshape(-1, 4)
    order = nms(xyxy, score[keep], iou_threshold)
    return xyxy[order], score[keep][order]


class GroundingDino:
    def __init__(self, model, tokenizer, size: int = SIZE, max_size: int = MAX_SIZE):
        self.model, self.tokenizer, self.size, self.max_size = model, tokenizer, size, max_size

    def inputs(self, frame) -> np.ndarray:
        """uint8 [H, W, 3] RGB -> float32 [1, 3, h, w], the release's network input."""
        from PIL import Image

        h, w = input_size(*frame.shape[:2], self.size, self.max_size)
        x = np.asarray(Image.fromarray(frame).resize((w, h), Image.BILINEAR), np.float64) / 255.0
        return np.ascontiguousarray(((x - MEAN) / STD).transpose(2, 0, 1)[None], np.float32)

    def detect(self, frame, text: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [H, W, 3] and the model's text (``caption_text``) -> (boxes [n, 4], confidences [n])."""
        import torch

        tokens = self.tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            out = self.model(pixel_values=torch.from_numpy(self.inputs(frame)), **tokens)
        return detections(out.logits[0].float().numpy(), out.pred_boxes[0].float().numpy(), *frame.shape[:2])

    def __call__(self, frame, text: str) -> np.ndarray:
        """The box (x1, y1, x2, y2) in frame pixels that the release tracks: the most confident one."""
        from vdot_jax.conditions.annotators import AnnotatorError

        boxes, _ = self.detect(frame, text)
        if not len(boxes):
            raise AnnotatorError(f"the detector finds no box for {text!r} on the first frame (none scores above "
                                 f"{BOX_THRESHOLD}); name the object otherwise, or give --box.")
        return boxes[0]


def load(path: str) -> GroundingDino:
    from transformers import AutoTokenizer, GroundingDinoForObjectDetection
    from transformers.utils import logging

    logging.disable_progress_bar()  # vdot's output stays its own lines
    model = GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True).eval()
    return GroundingDino(model, AutoTokenizer.from_pretrained(path, local_files_only=True))
