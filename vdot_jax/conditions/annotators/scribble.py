"""Scribble: the release's line-drawing network (``ScribbleVideoAnnotator``, the "informative drawings" generator
its ``anime_style/netG_A_latest.pth`` holds), written here in torch with the release's layer names so that file
loads as it is.

The network: a 7x7 convolution to 64 channels, two stride-2 convolutions (128, 256), three residual blocks, two
stride-2 transposed convolutions back (128, 64), a 7x7 convolution to one channel and a sigmoid; every convolution
but the last followed by an instance norm (no affine parameters) and a ReLU; reflection padding before the 7x7 and
the residual 3x3 convolutions. controlnet_aux's ``lineart`` detector is the same network (its ``Generator``), but
that package needs torchvision and timm, so it is not used.

Per frame, the release's post-processing: RGB scaled to [0, 1] (no normalisation, no resize: the network is fully
convolutional, and frames here are multiples of 16 a side, so it returns their size), the output times 255, clipped,
truncated to uint8, repeated in three channels: dark lines on white, as the network draws them.
"""

from __future__ import annotations

import numpy as np

RESIDUAL_BLOCKS = 3  # the release's N_RESIDUAL_BLOCKS


def network(blocks: int = RESIDUAL_BLOCKS):
    """The generator, its submodules named as the release's (``model0`` ... ``model4``, ``conv_block``)."""
    from torch import nn

    def act(c):  # instance norm (no parameters) + ReLU, after every convolution but the last
        return [nn.InstanceNorm2d(c), nn.ReLU(inplace=True)]

    def down(cin, cout):
        return [nn.Conv2d(cin, cout, 3, stride=2, padding=1), *act(cout)]

    def up(cin, cout):
        return [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1), *act(cout)]

    class Residual(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv_block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), *act(c),
                                            nn.ReflectionPad2d(1), nn.Conv2d(c, c, 3), nn.InstanceNorm2d(c))

        def forward(self, x):
            return x + self.conv_block(x)

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), *act(64))
            self.model1 = nn.Sequential(*down(64, 128), *down(128, 256))
            self.model2 = nn.Sequential(*(Residual(256) for _ in range(blocks)))
            self.model3 = nn.Sequential(*up(256, 128), *up(128, 64))
            self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

        def forward(self, x):
            return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))

    return Generator()


def lines_to_frames(lines) -> np.ndarray:
    """Network output [T, H, W] in [0, 1] -> uint8 [T, H, W, 3]: times 255, clipped, truncated, in three channels."""
    g = (np.asarray(lines, np.float32) * 255.0).clip(0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


class Scribble:
    def __init__(self, model, batch: int = 4):
        self.model, self.batch = model, batch  # frames are independent (instance norm): batched, same result

    def lines(self, frames) -> np.ndarray:
        """uint8 [T, H, W, 3] RGB -> the network's output [T, H, W] in [0, 1]."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(frames), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(frames[i:i + self.batch].transpose(0, 3, 1, 2)))
                out.append(self.model(x.float() / 255.0)[:, 0].numpy())
        return np.concatenate(out)

    def __call__(self, frames) -> np.ndarray:
        return lines_to_frames(self.lines(frames))


def load(path: str) -> Scribble:
    from vdot_jax.conditions.annotators import state_dict

    state = state_dict(path)
    model = network()
    model.load_state_dict(state)  # strict: another network's file is refused, naming its keys
    return Scribble(model.eval())
