"""Video and image files: round trips through real H.264 mp4s, frame selection, sizes, and clear errors."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("imageio_ffmpeg")
from PIL import Image  # noqa: E402

from vdot_jax.data import video_io as V  # noqa: E402


def smooth_video(t=17, h=32, w=48):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(xx * 4 + i * 8) % 256, (yy * 6) % 256, np.full_like(xx, 10 * i)], -1)
                     for i in range(t)]).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    d = tmp_path_factory.mktemp("io")
    frames = smooth_video()
    return V.write_video(d / "clip.mp4", frames, fps=16), frames


def test_round_trip_values_and_layout(clip):
    path, frames = clip
    info = V.probe_video(path)
    assert (info.num_frames, info.fps, info.height, info.width) == (17, 16.0, 32, 48)
    out = V.read_video(path)
    assert out.shape == (17, 32, 48, 3) and out.dtype == np.float32
    assert -1.0 <= out.min() and out.max() <= 1.0
    raw = V.read_video(path, normalize=False)
    np.testing.assert_allclose(out, raw / 127.5 - 1.0, atol=1e-6)
    # H.264 at quality 8 is close to lossless on smooth content (chroma is subsampled)
    assert np.abs(raw.mean(axis=(1, 2, 3)) - frames.astype(np.float32).mean(axis=(1, 2, 3))).max() < 2.0
    assert np.median(np.abs(raw - frames)) <= 2.0


def test_frame_selection(clip):
    path, frames = clip
    blue = V.read_video(path, normalize=False)[..., 2].mean(axis=(1, 2))  # channel 2 encodes the frame index
    first = V.read_video(path, num_frames=5, sampling="first", normalize=False)[..., 2].mean(axis=(1, 2))
    np.testing.assert_allclose(first, blue[:5])
    uni = V.read_video(path, num_frames=5, normalize=False)[..., 2].mean(axis=(1, 2))
    np.testing.assert_allclose(uni, blue[[0, 4, 8, 12, 16]])  # spread over the clip, last frame included
    half = V.read_video(path, fps=8, normalize=False)[..., 2].mean(axis=(1, 2))
    np.testing.assert_allclose(half, blue[::2])  # re-timed to 8 fps: every other frame
    np.testing.assert_array_equal(V.select_frame_indices(17, 9, "uniform"), np.arange(0, 17, 2))
    doubled = V.select_frame_indices(10, None, src_fps=10, fps=20)  # 20 fps from 10: each frame twice
    np.testing.assert_array_equal(doubled, np.repeat(np.arange(10), 2)[:19])
    with pytest.raises(ValueError, match="has 17 frames, 18 are needed"):
        V.select_frame_indices(17, 18)


def test_resize_center_crop(clip):
    path, _ = clip
    out = V.read_video(path, num_frames=1, size=(16, 16), sampling="first")
    assert out.shape == (1, 16, 16, 3)
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 10:30] = 255  # a centred white band: the crop keeps the centre
    cropped = V.resize_center_crop(a, 10, 10)
    assert cropped.shape == (10, 10, 3) and cropped[:, 1:-1].min() >= 250  # edges: bicubic blend


def test_write_accepts_float_and_grey_and_refuses_odd_sizes(tmp_path):
    f = np.linspace(-1, 1, 5 * 16 * 16 * 3, dtype=np.float32).reshape(5, 16, 16, 3)
    back = V.read_video(V.write_video(tmp_path / "f.mp4", f))
    assert back.shape == (5, 16, 16, 3) and np.abs(back - f).mean() < 0.03
    grey = np.full((3, 16, 16), 255, np.uint8)
    assert V.read_video(V.write_video(tmp_path / "g.mp4", grey), normalize=False).min() >= 250
    with pytest.raises(V.VideoError, match="even frame size.*odd.mp4 are 15x16"):
        V.write_video(tmp_path / "odd.mp4", np.zeros((2, 15, 16, 3), np.uint8))


def test_images(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # bottom half transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = V.read_image(tmp_path / "a.png", normalize=False)
    assert img.shape == (4, 6, 3)
    np.testing.assert_array_equal(img[:2, 0], [[255, 0, 0]] * 2)
    np.testing.assert_array_equal(img[2:, 0], [[255, 255, 255]] * 2)
    Image.fromarray(np.full((4, 6), 7, np.uint8), "L").save(tmp_path / "l.png")
    assert V.read_image(tmp_path / "l.png").shape == (4, 6, 3)
    p = V.write_image(tmp_path / "w.png", np.zeros((4, 6, 3), np.float32))
    assert V.read_image(p, normalize=False).max() in (127.0, 128.0)


def test_errors_are_one_sentence_naming_the_file(tmp_path, clip):
    path, _ = clip
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(np.random.default_rng(1).bytes(5000))
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    cases = [
        (lambda: V.read_video(tmp_path / "nope.mp4"), "nope.mp4 does not exist"),
        (lambda: V.read_video(bad), "garbage.mp4 could not be read as a video"),
        (lambda: V.probe_video(bad), "garbage.mp4 could not be read as a video"),
        (lambda: V.read_video(path, num_frames=21), "clip.mp4 has 17 frames, 21 are needed"),
        (lambda: V.read_video(path, num_frames=21, sampling="first"), "clip.mp4 has 17 frames, 21 are needed"),
        (lambda: V.read_image(tmp_path / "garbage.jpg"), "garbage.jpg could not be read as an image"),
        (lambda: V.read_image(tmp_path / "nope.png"), "nope.png does not exist"),
        (lambda: V.read_video(tmp_path), "is a directory"),
    ]
    for fn, pattern in cases:
        with pytest.raises(V.VideoError, match=pattern) as info:
            fn()
        msg = str(info.value)
        assert isinstance(info.value, ValueError) and "\n" not in msg and msg.endswith("."), msg


def _children() -> list[int]:
    me = str(os.getpid())
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            out.append(int(stat.parent.name))
    return out


def test_ffmpeg_starts_in_its_own_process_group_without_a_python_fork(clip, tmp_path):
    """With JAX's threads running, imageio-ffmpeg's ``preexec_fn=os.setpgrp`` forks and runs Python in the child,
    which can deadlock there and leave ``Popen`` waiting forever (video_io's docstring). Catches that path coming
    back (JAX's at-fork hook warns "os.fork() was called") and ffmpeg losing its own process group (Ctrl-C would
    kill a half-read or half-written video)."""
    import jax.numpy as jnp

    jnp.ones(3).block_until_ready()  # JAX loaded, its threads started
    path, frames = clip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, stream = V.stream_video(path)
        next(stream)  # ffmpeg is decoding now
        groups = {pid: os.getpgid(pid) for pid in _children()}
        stream.close()
        V.write_video(tmp_path / "again.mp4", frames)
    assert not [w for w in caught if "fork" in str(w.message)], [str(w.message) for w in caught]
    assert groups and all(g == pid != os.getpgrp() for pid, g in groups.items()), groups
