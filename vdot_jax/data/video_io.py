"""Reading and writing videos and images for VCU inputs and generated outputs.

Public API::

    frames = read_video(path, num_frames=None, size=None, fps=None, sampling="uniform")
        # -> float32 [F, H, W, 3], RGB, values in [-1, 1] (``normalize=False``: [0, 255])
    image = read_image(path, size=None)          # -> float32 [H, W, 3] in [-1, 1] (or [0, 255])
    write_video(path, frames, fps=16)            # mp4, H.264, yuv420p; frames uint8 or float in [-1, 1]
    write_image(path, image)                     # png/jpg; the same value conventions as write_video
    info = probe_video(path)                     # VideoInfo(num_frames, fps, height, width)
    fps, (h, w), frames = stream_video(path)     # uint8 [H, W, 3] frames one at a time (long videos)
    with ClipWriter(path, fps) as w: w.append(frame_uint8)   # the streaming form of write_video
    resize_center_crop(frame_uint8, height, width)

Conventions (the VACE release's, where it has one):

* **Values.** Everything this module returns is float32 RGB in [-1, 1] (``x / 127.5 - 1``), what the
  VAE consumes; ``normalize=False`` gives [0, 255]. Grey 127.5 is 0; a uint8 file holds 127 or 128
  (about -0.004 / +0.004) -- thresholds downstream (masks at 0.5 of [0, 1]) are far from that.
* **Frame selection** (in this order). ``fps``: when given and different from the file's rate, the
  clip is first re-timed to that rate (output frame k shows the source frame on screen at time k/fps).
  ``num_frames``: ``sampling="first"`` keeps the first ``num_frames`` frames; ``sampling="uniform"``
  (default, the release's ``keep_last`` behaviour) spreads ``num_frames`` frames evenly over the whole
  clip, first and last frame included (indices ``round(linspace(0, n-1, num_frames))``). A clip with
  fewer frames than asked for is an error, never padded.
* **Size.** ``size=(height, width)``: scale so the frame *covers* the target (``max`` of the two
  ratios, rounded), then centre-crop -- the release's ``resize_crop``. Resampling is PIL bicubic on
  uint8 frames (antialiased when shrinking, like the release's ``bicubic, antialias=True``).
* **Images.** RGBA / palette images are composited onto white (the release's ``VaceImageProcessor``);
  greyscale becomes RGB.
* **Writing.** H.264 in yuv420p needs even sizes: odd sizes are refused (no silent resize).

Every problem a user can cause (missing file, unreadable or corrupt file, too few frames, bad shape)
raises :class:`VideoError`, a ``ValueError`` whose message is one sentence naming the file.
``imageio``'s ffmpeg backend (``imageio-ffmpeg``) is imported only when a video is read or written.

**ffmpeg without a Python fork.** imageio-ffmpeg puts ffmpeg in its own process group (so Ctrl-C reaches us, not a
half-written file) with ``preexec_fn=os.setpgrp``, which makes Python fork and run Python code in the child. In a
multi-threaded process (JAX always is) that child can deadlock before it execs, and the ``Popen`` then never
returns (imageio-ffmpeg's issue 58; JAX warns "os.fork() was called"). ``_imageio`` has it ask for the same process
group through ``process_group=0``, which the subprocess module sets in C without running Python after the fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vdot_jax.errors import VdotError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SAMPLING_MODES = ("first", "uniform")


class VideoError(VdotError, ValueError):
    """A video or image file that cannot be used as asked (the message names the file)."""


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


# ----------------------------------------------------------------------------- helpers


def _imageio():
    try:
        import imageio.v2 as iio  # noqa: PLC0415  (lazy: only video paths need ffmpeg)
        import imageio_ffmpeg._io as ffmpeg_io  # noqa: PLC0415
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise VideoError(
            f"reading and writing videos needs imageio and imageio-ffmpeg (pip install imageio imageio-ffmpeg): {e}"
        ) from None
    if os.name == "posix" and getattr(ffmpeg_io, "_popen_kwargs", None) not in (None, _popen_kwargs):
        ffmpeg_io._popen_kwargs = _popen_kwargs  # module docstring: ffmpeg without a Python fork
    return iio


def _popen_kwargs(prevent_sigint: bool = False) -> dict:
    """Popen options for imageio-ffmpeg's ffmpeg: its own process group when asked, set without ``preexec_fn``."""
    return {"process_group": 0} if prevent_sigint else {}


def _check_exists(path, what: str) -> str:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise VideoError(f"{what} file {p} does not exist.")
    if os.path.isdir(p):
        raise VideoError(f"{what} path {p} is a directory, not a file.")
    return p


def _short(err: BaseException) -> str:
    """A one-line reason from an exception; for ffmpeg, its last error line rather than its banner."""
    text = str(err)
    if "=== stderr ===" in text:
        lines = [ln.strip() for ln in text.split("=== stderr ===", 1)[1].splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower() or "invalid" in ln.lower() or "not found" in ln.lower()]
        text = (errors or lines or [text.split("===", 1)[0]])[-1]
    msg = " ".join(text.split()).rstrip(".") or type(err).__name__
    return msg if len(msg) <= 160 else msg[:157] + "..."


def to_unit_range(frames_uint8: np.ndarray) -> np.ndarray:
    """uint8 (or [0, 255] float) -> float32 in [-1, 1]."""
    return np.asarray(frames_uint8, np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(frames) -> np.ndarray:
    """uint8 passes through; floats are taken to be in [-1, 1] and rounded to uint8 (clipped)."""
    a = np.asarray(frames)
    if a.dtype == np.uint8:
        return a
    if not np.issubdtype(a.dtype, np.floating):
        raise VideoError(f"frames must be uint8 or float in [-1, 1], got dtype {a.dtype}.")
    return np.clip(np.rint((a.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def resize_center_crop(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, C] -> uint8 [height, width, C]: scale to cover (max ratio), then centre crop.

    The release's ``resize_crop``: new size ``round(scale * h), round(scale * w)`` with
    ``scale = max(width / w, height / h)``, crop offset ``(new - target) // 2``; PIL bicubic.
    """
    from PIL import Image  # noqa: PLC0415

    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    scale = max(width / w, height / h)
    nh, nw = max(height, round(scale * h)), max(width, round(scale * w))
    squeeze = frame.ndim == 3 and frame.shape[2] == 1
    img = Image.fromarray(frame[..., 0] if squeeze else frame)
    img = img.resize((nw, nh), resample=Image.Resampling.BICUBIC)
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    out = np.asarray(img)[y0:y0 + height, x0:x0 + width]
    return out[..., None] if squeeze else out


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise VideoError(f"size must be (height, width), got {size!r}.") from None
    if h <= 0 or w <= 0:
        raise VideoError(f"size must be positive (height, width), got {size!r}.")
    return h, w


# ----------------------------------------------------------------------------- images


def read_image(path, size=None, normalize: bool = True) -> np.ndarray:
    """An image file -> float32 [H, W, 3] RGB in [-1, 1] (``normalize=False``: [0, 255]).

    Transparent pixels are composited onto white. ``size=(height, width)`` resizes to cover and
    centre-crops (see the module docstring); references are *letterboxed* instead, by
    ``vdot_jax.conditions.letterbox``.
    """
    p = _check_exists(path, "image")
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415

    try:
        with Image.open(p) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit grey: scaled, not clamped to white
                top = 65535.0 if img.mode.startswith("I;16") or np.asarray(img).max() > 255 else 255.0
                grey = np.asarray(img, dtype=np.float64) * (255.0 / top)
                img = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
            if img.mode == "P":
                img = img.convert("RGBA")
            if img.mode in ("RGBA", "LA", "PA"):
                rgba = img.convert("RGBA")
                canvas = Image.new("RGB", rgba.size, (255, 255, 255))
                canvas.paste(rgba, (0, 0), mask=rgba)
                img = canvas
            elif img.mode != "RGB":
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8).copy()
    except Image.DecompressionBombError as e:  # PIL's guard against decompression bombs: not a traceback
        raise VideoError(f"image file {p} is too large to read safely ({_short(e)}); resize it first.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise VideoError(f"image file {p} could not be read as an image ({_short(e)}).") from None
    hw = _check_size(size)
    if hw is not None:
        arr = resize_center_crop(arr, *hw)
    return to_unit_range(arr) if normalize else arr.astype(np.float32)


def write_image(path, image) -> Path:
    """Write [H, W, 3] (uint8, or float in [-1, 1]) or [H, W] greyscale to png/jpg/...; returns the path."""
    from PIL import Image  # noqa: PLC0415

    a = to_uint8(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise VideoError(f"an image to write to {os.fspath(path)} must be [H, W, 3] or [H, W], got {a.shape}.")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(p)
    return p


# ----------------------------------------------------------------------------- videos


def probe_video(path) -> VideoInfo:
    """Frame count (exact: decodes the stream), frame rate and size of a video file."""
    p = _check_exists(path, "video")
    iio = _imageio()
    try:
        with iio.get_reader(p, format="FFMPEG") as reader:
            meta = reader.get_meta_data()
            n = int(reader.count_frames())
            w, h = (int(v) for v in meta["size"])
            fps = float(meta.get("fps") or 0.0)
    except VideoError:
        raise
    except Exception as e:  # imageio/ffmpeg raise OSError, RuntimeError, IndexError, ...
        raise VideoError(f"video file {p} could not be read as a video ({_short(e)}).") from None
    return VideoInfo(num_frames=n, fps=fps, height=h, width=w)


def select_frame_indices(total: int, num_frames: int | None, sampling: str = "uniform",
                         src_fps: float | None = None, fps: float | None = None) -> np.ndarray:
    """Which source frames ``read_video`` returns (see the module docstring); raises ValueError if too few."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}.")
    idx = np.arange(total)
    if fps is not None and src_fps and abs(float(fps) - float(src_fps)) > 1e-6:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}.")
        # output frame k shows the source frame on screen at time k / fps
        count = int(np.floor((total - 1) * fps / src_fps + 1e-6)) + 1 if total else 0
        idx = np.minimum(np.floor(np.arange(count) * (src_fps / fps) + 1e-6).astype(np.int64), total - 1)
    if num_frames is None:
        return idx
    num_frames = int(num_frames)
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}.")
    if len(idx) < num_frames:
        raise ValueError(f"has {len(idx)} frames{' at the requested fps' if len(idx) != total else ''}, "
                         f"{num_frames} are needed")
    if sampling == "first" or num_frames == len(idx):
        return idx[:num_frames]
    pick = np.rint(np.linspace(0, len(idx) - 1, num_frames)).astype(np.int64)
    return idx[pick]


def read_video(path, num_frames: int | None = None, size=None, fps: float | None = None,
               sampling: str = "uniform", normalize: bool = True) -> np.ndarray:
    """A video file -> float32 [F, H, W, 3] RGB in [-1, 1] (``normalize=False``: [0, 255]).

    ``num_frames`` (default: all), ``fps`` (default: the file's own rate), ``sampling`` ("uniform" or
    "first") and ``size=(height, width)`` (resize to cover, centre crop) as in the module docstring.
    """
    p = _check_exists(path, "video")
    hw = _check_size(size)
    if sampling not in SAMPLING_MODES:
        raise VideoError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r} (reading {p}).")
    iio = _imageio()
    frames: list[np.ndarray] = []
    try:
        with iio.get_reader(p, format="FFMPEG") as reader:
            meta = reader.get_meta_data()
            src_fps = float(meta.get("fps") or 0.0) or None
            needs_total = num_frames is None or sampling == "uniform" or (
                fps is not None and src_fps is not None and abs(float(fps) - src_fps) > 1e-6)
            if needs_total:
                total = int(reader.count_frames())
            else:  # "first" at the native rate: no need to decode the whole clip to count it
                total = None
            if total is None:
                indices = np.arange(int(num_frames))
            else:
                try:
                    indices = select_frame_indices(total, num_frames, sampling, src_fps, fps)
                except ValueError as e:
                    raise VideoError(f"video file {p} {e}.") from None
            wanted = {int(i) for i in indices}
            last = max(wanted) if wanted else -1
            decoded: dict[int, np.ndarray] = {}
            for i, frame in enumerate(reader):
                if i in wanted:
                    decoded[i] = np.asarray(frame)[..., :3]
                if i >= last:
                    break
    except VideoError:
        raise
    except Exception as e:  # corrupt container/stream: OSError, RuntimeError, IndexError, StopIteration ...
        raise VideoError(f"video file {p} could not be read as a video ({_short(e)}).") from None
    if not len(indices):
        raise VideoError(f"video file {p} has no frames.")
    if len(decoded) < len(wanted):
        if total is None:  # "first" sampling: the clip simply ended
            raise VideoError(f"video file {p} has {len(decoded)} frames, {len(indices)} are needed.")
        raise VideoError(f"video file {p} ended early: only {len(decoded)} of the {len(indices)} frames "
                         f"needed could be decoded (is it truncated?).")
    for i in indices:
        f = decoded[int(i)]
        if f.ndim == 2:
            f = np.repeat(f[..., None], 3, axis=2)
        frames.append(resize_center_crop(f, *hw) if hw is not None else f)
    out = np.stack(frames).astype(np.uint8, copy=False)
    return to_unit_range(out) if normalize else out.astype(np.float32)


def write_video(path, frames, fps: float = 16, quality: float = 8) -> Path:
    """Write [F, H, W, 3] (or [F, H, W] grey) frames -- uint8, or float in [-1, 1] -- to an H.264 mp4.

    yuv420p (plays everywhere) needs even height and width: odd sizes raise VideoError. ``quality``
    is imageio's 1..10 scale (8 -> x264 crf 10, near-lossless enough for masks to survive).
    """
    a = to_uint8(frames)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3:
        a = np.repeat(a[..., None], 3, axis=3)
    p = Path(path)
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[0] < 1:
        raise VideoError(f"frames to write to {p} must be [F, H, W, 3] or [F, H, W] with F >= 1, got {a.shape}.")
    f, h, w = a.shape[:3]
    if h % 2 or w % 2:
        raise VideoError(f"H.264 (yuv420p) needs an even frame size, but the frames for {p} are {h}x{w}; "
                         "crop or pad them to even height and width first.")
    if fps <= 0:
        raise VideoError(f"fps must be positive to write {p}, got {fps}.")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        _encode(p, a, fps, quality)
        size = p.stat().st_size
        if size == 0:
            raise VideoError(f"video file {p} is 0 bytes after writing (a full disk?); it was removed.")
        got = probe_video(p).num_frames
        if got != f:
            raise VideoError(f"video file {p} could not be read back ({got} of {f} frames); it was removed.")
    except BaseException as e:  # a failed or interrupted write leaves no file that looks like a result
        p.unlink(missing_ok=True)
        if isinstance(e, VideoError):
            raise
        if isinstance(e, Exception):
            raise VideoError(f"video file {p} could not be written ({_short(e)}).") from None
        raise
    return p


def _writer(p: Path, fps: float, quality: float):
    return _imageio().get_writer(p, format="FFMPEG", mode="I", fps=fps, codec="libx264", pixelformat="yuv420p",
                                 quality=quality, macro_block_size=1, ffmpeg_log_level="error")


def _encode(p: Path, a: np.ndarray, fps: float, quality: float) -> None:
    with _writer(p, fps, quality) as writer:
        for frame in a:
            writer.append_data(np.ascontiguousarray(frame))


def stream_video(path):
    """A video file -> ``(fps, (height, width), frames)``: ``frames`` yields uint8 [H, W, 3] RGB one at a time (memory
    of one frame, for videos too long to hold); a decoding failure midway raises VideoError from the iteration."""
    p = _check_exists(path, "video")
    iio = _imageio()
    try:
        reader = iio.get_reader(p, format="FFMPEG")
        meta = reader.get_meta_data()
        w, h = (int(v) for v in meta["size"])
        fps = float(meta.get("fps") or 0.0)
    except Exception as e:  # imageio/ffmpeg raise OSError, RuntimeError, IndexError, ...
        raise VideoError(f"video file {p} could not be read as a video ({_short(e)}).") from None

    def frames():
        try:
            for frame in reader:
                f = np.asarray(frame)
                yield np.repeat(f[..., None], 3, axis=2) if f.ndim == 2 else f[..., :3]
        except Exception as e:
            raise VideoError(f"video file {p} could not be decoded to the end ({_short(e)}).") from None
        finally:
            reader.close()

    return fps, (h, w), frames()


class ClipWriter:
    """``write_video`` one frame at a time (uint8 [H, W, 3], even sizes): written to a temporary name and renamed
    into place on a clean exit after the frame count read back matches, so a file at ``path`` is always whole."""

    def __init__(self, path, fps: float = 16, quality: float = 8):
        if fps <= 0:
            raise VideoError(f"fps must be positive to write {os.fspath(path)}, got {fps}.")
        self.path, self.fps, self.quality, self.count = Path(path), fps, quality, 0
        self.tmp = self.path.with_name(self.path.stem + ".part" + self.path.suffix)
        self._w = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w = _writer(self.tmp, self.fps, self.quality)
        return self

    def append(self, frame) -> None:
        a = np.ascontiguousarray(to_uint8(frame))
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] % 2 or a.shape[1] % 2:
            raise VideoError(f"frames to write to {self.path} must be [H, W, 3] of even size, got {a.shape}.")
        self._w.append_data(a)
        self.count += 1

    def __exit__(self, kind, value, tb):
        try:
            self._w.close()
            if kind is None:
                got = probe_video(self.tmp).num_frames if self.count else 0
                if got != self.count or not self.count:
                    raise VideoError(f"video file {self.path} could not be read back ({got} of {self.count} frames).")
                os.replace(self.tmp, self.path)
        except Exception as e:
            if kind is None:
                raise e if isinstance(e, VideoError) else VideoError(
                    f"video file {self.path} could not be written ({_short(e)}).") from None
        finally:
            self.tmp.unlink(missing_ok=True)
        return False


def is_image_path(path) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)
