"""Pose: DWPose (the release's two ONNX files: a YOLOX person detector and an RTMPose whole-body model, run by
onnxruntime), drawn as the release's ``PoseBodyFaceVideoAnnotator`` draws it: body skeleton and face points on black.

Per frame (uint8 RGB, h x w), the release's chain:

* channels reversed (the networks take BGR), resized so the short side is 1024 and both sides multiples of 64
  (Lanczos up, area down) -- the drawing canvas is that size;
* detector: the frame scaled into a 640 x 640 canvas of grey 114 (top-left, bilinear), raw 0..255 values; YOLOX's
  grid decoding (strides 8, 16, 32), score = objectness x class, per-class NMS (IoU 0.45, score > 0.1), then people
  (class 0) with score > 0.3; no person: the whole frame is one box;
* pose model per box: the box grown 1.25x and widened to the model's aspect, warped (bilinear) to its input size,
  ImageNet mean/std in 0..255; SimCC decoding: per keypoint the argmax of x and of y over bins of half a pixel,
  score the smaller maximum (keypoint -1 where it is <= 0), mapped back through the box;
* the 133 COCO-WholeBody keypoints get a neck (mean of the shoulders, visible when both are > 0.3) and the body's
  first 18 are reordered to OpenPose's; a keypoint with score < 0.3 is not drawn;
* body: 17 limbs as filled ellipses (half-width 4) in the OpenPose colours, the canvas then dimmed to 60 %, 18 joints
  as discs of radius 4; face: 68 points as white discs of radius 3 -- drawn in BGR order and then reversed, so
  the limb listed as red comes out blue;
* the canvas resized back to the frame (Lanczos if that grows it, area otherwise).
"""

from __future__ import annotations

import math

import numpy as np

SHORT_SIDE, DET_SIZE = 1024, (640, 640)
LIMBS = ((2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18))  # OpenPose body joints, 1-based (the release's first 17)
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
# (source, destination) after the neck is inserted at 17; nose 0, left shoulder 5 and left hip 11 stay
MMPOSE_TO_OPENPOSE = ((17, 1), (6, 2), (8, 3), (10, 4), (7, 6), (9, 7), (12, 8), (14, 9), (16, 10), (13, 12),
                      (15, 13), (2, 14), (1, 15), (4, 16), (3, 17))
VISIBLE = 0.3


def canvas_size(height: int, width: int, side: int = SHORT_SIDE) -> tuple[int, int]:
    """The release's ``resize_image``: short side ``side``, each side rounded to a multiple of 64."""
    k = side / min(height, width)
    return int(np.round(height * k / 64.0)) * 64, int(np.round(width * k / 64.0)) * 64


def _resize(img, hw, grow: bool):
    import cv2

    return cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_LANCZOS4 if grow else cv2.INTER_AREA)


def _nms(boxes, scores, iou: float) -> list[int]:
    """Greedy NMS, areas with the +1 pixel convention of the release's numpy NMS."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return keep


def decode_detections(raw, ratio: float, size=DET_SIZE) -> np.ndarray:
    """YOLOX output [N, 5 + classes] on a ``size`` input -> person boxes [n, 4] (x1, y1, x2, y2) in the image
    (divided by ``ratio``, the letterbox scale)."""
    out = np.array(raw, np.float64)
    grids, strides = [], []
    for s in (8, 16, 32):
        ys, xs = np.meshgrid(np.arange(size[0] // s), np.arange(size[1] // s), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    xy, wh = (out[:, :2] + grid) * stride, np.exp(out[:, 2:4]) * stride
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1) / ratio
    scores = out[:, 4:5] * out[:, 5:]
    people = []
    for c in range(scores.shape[1]):
        ok = scores[:, c] > 0.1
        if not ok.any():
            continue
        b, s = boxes[ok], scores[ok, c]
        keep = _nms(b, s, 0.45)
        if c == 0:
            people += [b[k] for k in keep if s[k] > VISIBLE]
    return np.array(people).reshape(-1, 4)


def _warp(center, scale, size):
    """The affine map taking the box (centre, scale w x h) onto a ``size`` = (w, h) input (rotation 0)."""
    import cv2

    w, h = size
    half = scale[0] / 2  # three points: the centre, half a width above it, and that turned 90 degrees (release's)
    src = np.array([center, center + [0, -half], center + [-half, -half]], np.float32)
    dst = np.array([[w / 2, h / 2], [w / 2, h / 2 - w / 2], [0, h / 2 - w / 2]], np.float32)
    return cv2.getAffineTransform(src, dst)


def pose_inputs(img, boxes, size):
    """Each box -> (network input [3, h, w] float32, centre, scale): grown 1.25x, widened to the input's aspect."""
    import cv2

    w, h = size
    out = []
    for x1, y1, x2, y2 in boxes:
        center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
        bw, bh = (x2 - x1) * 1.25, (y2 - y1) * 1.25
        scale = np.array([bw, bw / (w / h)]) if bw > bh * (w / h) else np.array([bh * (w / h), bh])
        crop = cv2.warpAffine(img, _warp(center, scale, size), (int(w), int(h)), flags=cv2.INTER_LINEAR)
        x = (crop - [123.675, 116.28, 103.53]) / [58.395, 57.12, 57.375]
        out.append((x.transpose(2, 0, 1).astype(np.float32), center, scale))
    return out


def decode_simcc(simcc_x, simcc_y, size, center, scale, split: float = 2.0):
    """SimCC [K, Wx], [K, Wy] -> keypoints [K, 2] in the image and scores [K]."""
    sx, sy = np.asarray(simcc_x), np.asarray(simcc_y)
    locs = np.stack([sx.argmax(1), sy.argmax(1)], -1).astype(np.float32)
    vals = np.minimum(sx.max(1), sy.max(1))
    locs[vals <= 0] = -1
    return locs / split / np.asarray(size) * scale + center - scale / 2, vals


def openpose_order(keypoints, scores):
    """[n, 133, 2], [n, 133] -> [n, 134, 2], [n, 134]: the neck inserted at 17, the body reordered to OpenPose's."""
    info = np.concatenate([keypoints, scores[..., None]], -1)
    neck = info[:, [5, 6]].mean(1)
    neck[:, 2] = ((info[:, 5, 2] > VISIBLE) & (info[:, 6, 2] > VISIBLE)).astype(float)
    info = np.insert(info, 17, neck, axis=1)
    src, dst = zip(*MMPOSE_TO_OPENPOSE)
    info[:, list(dst)] = info[:, list(src)]
    return info[..., :2], info[..., 2]


def draw(keypoints, scores, height: int, width: int) -> np.ndarray:
    """Body (18 joints, 17 limbs) and face (68 points) of each person on black [height, width, 3], BGR-drawn then
    reversed as the release does. ``keypoints`` in canvas pixels."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    kp = np.where((scores < VISIBLE)[..., None], -1.0, keypoints / [width, height])  # the release's fractions
    body, seen = kp[:, :18], scores[:, :18] > VISIBLE
    for i, (a, b) in enumerate(LIMBS):
        for p in range(len(kp)):
            if not (seen[p, a - 1] and seen[p, b - 1]):
                continue
            xs, ys = body[p, [a - 1, b - 1], 0] * width, body[p, [a - 1, b - 1], 1] * height
            length = math.hypot(ys[0] - ys[1], xs[0] - xs[1])
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            poly = cv2.ellipse2Poly((int(xs.mean()), int(ys.mean())), (int(length / 2), 4), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, poly, COLOURS[i])
    canvas = (canvas * 0.6).astype(np.uint8)
    for i in range(18):
        for p in range(len(kp)):
            if seen[p, i]:
                cv2.circle(canvas, (int(body[p, i, 0] * width), int(body[p, i, 1] * height)), 4, COLOURS[i], -1)
    for p in range(len(kp)):
        for x, y in kp[p, 24:92]:
            x, y = int(x * width), int(y * height)
            if x > 0.01 and y > 0.01:
                cv2.circle(canvas, (x, y), 3, (255, 255, 255), -1)
    return canvas[..., ::-1]


class DWPose:
    def __init__(self, detector, pose):
        self.det, self.pose = detector, pose
        h, w = pose.get_inputs()[0].shape[2:]
        self.size = (int(w), int(h))

    def detect(self, img) -> np.ndarray:
        import cv2

        canvas = np.full(DET_SIZE + (3,), 114, np.uint8)
        r = min(DET_SIZE[0] / img.shape[0], DET_SIZE[1] / img.shape[1])
        small = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR)
        canvas[:small.shape[0], :small.shape[1]] = small
        x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32)
        return decode_detections(self.det.run(None, {self.det.get_inputs()[0].name: x})[0][0], r)

    def keypoints(self, img):
        """BGR canvas -> keypoints [n, 134, 2] (canvas pixels) and scores [n, 134], OpenPose order."""
        boxes = self.detect(img)
        if not len(boxes):
            boxes = np.array([[0, 0, img.shape[1], img.shape[0]]], np.float64)
        kps, scs = [], []
        name = self.pose.get_inputs()[0].name
        for x, center, scale in pose_inputs(img, boxes, self.size):
            simcc_x, simcc_y = self.pose.run(None, {name: x[None]})[:2]
            k, s = decode_simcc(simcc_x[0], simcc_y[0], self.size, center, scale)
            kps.append(k)
            scs.append(s)
        return openpose_order(np.stack(kps), np.stack(scs))

    def frame(self, rgb) -> np.ndarray:
        h, w = rgb.shape[:2]
        ch, cw = canvas_size(h, w)
        img = _resize(np.ascontiguousarray(rgb[..., ::-1]), (ch, cw), grow=SHORT_SIDE > min(h, w))
        out = draw(*self.keypoints(img), ch, cw)
        return _resize(np.ascontiguousarray(out), (h, w), grow=h * w > ch * cw)

    def __call__(self, frames) -> np.ndarray:
        return np.stack([self.frame(f) for f in frames])


def load(paths: str) -> DWPose:
    import onnxruntime as ort

    sessions = []
    for path in paths.split(","):
        try:
            sessions.append(ort.InferenceSession(path, providers=["CPUExecutionProvider"]))
        except Exception as e:  # noqa: BLE001 -- onnxruntime's errors (InvalidProtobuf, Fail, ...) share no public base
            # AN.load turns it into "cannot load pose weights ..."
            raise ValueError(f"{path} does not load as an ONNX model: {type(e).__name__}") from None
    return DWPose(*sessions)
