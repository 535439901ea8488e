"""Salient object: the release's U^2-Net (``SalientAnnotator``, its ``salient/u2net.pt``), written here in torch
with the release's layer names so that file loads as it is; its map of the first frame marks the object to inpaint
(the release's ``salient`` and ``salientbboxtrack`` inpainting modes).

The network: six encoder stages of residual U-blocks (RSU-7, 6, 5, 4 and two dilated RSU-4F), max pooling (2,
ceil) between them, five decoder stages on the upsampled (bilinear) deeper stage joined to the skip, a 3x3 side
output per stage upsampled to the first's size and a 1x1 fusion of the six; the fused map's sigmoid is the saliency.
Every convolution of a block is 3x3 + batch norm + ReLU (``REBNCONV``).

The release's post-processing of a frame: RGB resized to 320 x 320 (PIL bilinear), scaled to [0, 1], ImageNet's mean
and std; the fused map min-max normalised, times 255, truncated to uint8, resized to the frame (OpenCV bilinear).
Its ``salient`` mode masks that map > 0 on every frame; ``salientbboxtrack`` gives SAM 2 the box of its pixels >= 1
(``get_mask_box(mask, threshold=1)``: first and last such column and row, inclusive); as a reference image (the
release's image ``salient`` task) the object is kept where the map is > 1, on white, cropped to it.
"""

from __future__ import annotations

import numpy as np

SIDE = 320  # the release's NORM_SIZE
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# stage: (RSU depth, 0 = the dilated 4F block; in, mid, out channels), the release's U2NET(3, 1)
ENCODER = {"stage1": (7, 3, 32, 64), "stage2": (6, 64, 32, 128), "stage3": (5, 128, 64, 256),
           "stage4": (4, 256, 128, 512), "stage5": (0, 512, 256, 512), "stage6": (0, 512, 256, 512)}
DECODER = {"stage5d": (0, 1024, 256, 512), "stage4d": (4, 1024, 128, 256), "stage3d": (5, 512, 64, 128),
           "stage2d": (6, 256, 32, 64), "stage1d": (7, 128, 16, 64)}
SIDES = (64, 64, 128, 256, 512, 512)  # channels into side1 ... side6


def network(scale: float = 1.0):
    """U^2-Net, its submodules named as the release's; ``scale`` narrows every block (tests only: same graph)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    ch = lambda c: c if c == 3 else max(1, int(c * scale))  # noqa: E731

    def up_to(x, like):
        return F.interpolate(x, size=like.shape[2:], mode="bilinear", align_corners=False)

    class REBNCONV(nn.Module):
        def __init__(self, cin, cout, dilation=1):
            super().__init__()
            self.conv_s1 = nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation)
            self.bn_s1 = nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.relu(self.bn_s1(self.conv_s1(x)))

    class RSU(nn.Module):
        """RSU-``depth``: an encoder of ``depth - 1`` convolutions with pooling between, a dilated one at the
        bottom, a decoder back up joining each skip; plus the input convolution as a residual."""

        def __init__(self, depth, cin, mid, cout):
            super().__init__()
            self.depth = depth
            self.rebnconvin = REBNCONV(cin, cout)
            for i in range(1, depth + 1):
                setattr(self, f"rebnconv{i}", REBNCONV(cout if i == 1 else mid, mid, 2 if i == depth else 1))
            for i in range(depth - 1, 0, -1):
                setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid, cout if i == 1 else mid))

        def forward(self, x):
            xin = self.rebnconvin(x)
            skips, h = [], xin
            for i in range(1, self.depth):
                h = getattr(self, f"rebnconv{i}")(h)
                skips.append(h)
                if i < self.depth - 1:
                    h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            h = getattr(self, f"rebnconv{self.depth}")(h)
            for i in range(self.depth - 1, 0, -1):
                h = getattr(self, f"rebnconv{i}d")(torch.cat((h, skips[i - 1]), 1))
                if i > 1:
                    h = up_to(h, skips[i - 2])
            return h + xin

    class RSU4F(nn.Module):
        """RSU-4F: no pooling, dilations 1, 2, 4, 8 down and 4, 2, 1 back."""

        def __init__(self, cin, mid, cout):
            super().__init__()
            self.rebnconvin = REBNCONV(cin, cout)
            for i, d in zip(range(1, 5), (1, 2, 4, 8)):
                setattr(self, f"rebnconv{i}", REBNCONV(cout if i == 1 else mid, mid, d))
            for i, d in zip((3, 2, 1), (4, 2, 1)):
                setattr(self, f"rebnconv{i}d", REBNCONV(2 * mid, cout if i == 1 else mid, d))

        def forward(self, x):
            xin = self.rebnconvin(x)
            h1 = self.rebnconv1(xin)
            h2 = self.rebnconv2(h1)
            h3 = self.rebnconv3(h2)
            h = self.rebnconv3d(torch.cat((self.rebnconv4(h3), h3), 1))
            h = self.rebnconv2d(torch.cat((h, h2), 1))
            return self.rebnconv1d(torch.cat((h, h1), 1)) + xin

    def block(depth, cin, mid, cout):
        return RSU(depth, ch(cin), ch(mid), ch(cout)) if depth else RSU4F(ch(cin), ch(mid), ch(cout))

    class U2NET(nn.Module):
        def __init__(self):
            super().__init__()
            for name, spec in {**ENCODER, **DECODER}.items():
                setattr(self, name, block(*spec))
            for i, c in enumerate(SIDES, 1):
                setattr(self, f"side{i}", nn.Conv2d(ch(c), 1, 3, padding=1))
            self.outconv = nn.Conv2d(6, 1, 1)

        def forward(self, x):
            enc, h = [], x
            for i in range(1, 7):
                h = getattr(self, f"stage{i}")(h)
                enc.append(h)
                if i < 6:
                    h = F.max_pool2d(h, 2, stride=2, ceil_mode=True)
            dec = [enc[5]]  # stage 6 is the deepest decoder output
            for i in range(5, 0, -1):
                dec.append(getattr(self, f"stage{i}d")(torch.cat((up_to(dec[-1], enc[i - 1]), enc[i - 1]), 1)))
            dec = dec[::-1]  # stage1d ... stage5d, stage6
            sides = [getattr(self, f"side{i}")(d) for i, d in enumerate(dec, 1)]
            sides = [sides[0]] + [up_to(s, sides[0]) for s in sides[1:]]
            return torch.sigmoid(self.outconv(torch.cat(sides, 1)))

    return U2NET()


def map_to_uint8(saliency, height: int, width: int) -> np.ndarray:
    """The fused map [h, w] -> uint8 [height, width]: min-max normalised, times 255, truncated, OpenCV-bilinear
    resized. A constant map is 0 (the release divides by zero there)."""
    import cv2

    d = np.asarray(saliency, np.float32)
    d = d - d.min()
    top = d.max()
    d = d / top if top > 0 else np.zeros_like(d)
    return cv2.resize((d * 255).astype(np.uint8), (width, height))


def mask_box(saliency_map, threshold: int = 1):
    """(x1, y1, x2, y2) of the pixels >= ``threshold`` (inclusive corners), or None: the release's box for SAM 2."""
    ys, xs = np.nonzero(np.asarray(saliency_map) >= threshold)
    return None if not len(xs) else np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


def subject(image, saliency_map):
    """The release's salient reference image (``SalientAnnotator`` with ``RETURN_IMAGE`` and ``USE_CROP``): the
    image where the map is > 1, white elsewhere, cropped to those pixels' bounding rectangle; None if there are
    none (the release's crop is then empty)."""
    keep = np.asarray(saliency_map) > 1
    ys, xs = np.nonzero(keep)
    if not len(xs):
        return None
    out = np.where(keep[..., None], image, 255).astype(np.uint8)
    return out[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


class Salient:
    def __init__(self, model):
        self.model = model

    def inputs(self, frame) -> np.ndarray:
        """uint8 [H, W, 3] RGB -> float32 [1, 3, 320, 320], the release's network input."""
        from PIL import Image

        x = np.asarray(Image.fromarray(frame).resize((SIDE, SIDE), Image.BILINEAR), np.float64) / 255.0
        return np.ascontiguousarray(((x - MEAN) / STD).transpose(2, 0, 1)[None], np.float32)

    def __call__(self, frame) -> np.ndarray:
        """uint8 [H, W, 3] -> the release's saliency map, uint8 [H, W]."""
        import torch

        with torch.inference_mode():
            d = self.model(torch.from_numpy(self.inputs(frame)))[0, 0].numpy()
        return map_to_uint8(d, *frame.shape[:2])


def load(path: str) -> Salient:
    from vdot_jax.conditions.annotators import state_dict

    state = state_dict(path)
    model = network()
    model.load_state_dict(state)  # strict: another network's file is refused, naming its keys
    return Salient(model.eval())
