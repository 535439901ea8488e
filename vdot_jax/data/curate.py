"""The automated filter of raw videos (``vdot data``): scene cuts split clips; too-short, black, near-static and
low-resolution clips and near-duplicates are dropped; the kept clips become mp4 files and raw manifest rows.

    sources = list_sources(src, captions_file)        # [Source(path, caption)] from a folder, a .txt or a .jsonl
    result = curate(sources, out, Options(...))       # writes clips/, manifest.jsonl, report.json/.md, contact sheet

Everything is decided on small per-frame features, computed while the video streams past (one frame in memory):

* **Scene cuts** (``cut_threshold``, default 0.3): the distance between consecutive frames' colour histograms
  (16 bins per RGB channel of a 64x64 thumbnail; half the L1 distance per channel, averaged over the channels: 0 =
  the same colours, 1 = none in common). A shot's frames stay far below 0.1 under motion (a histogram ignores
  where things are); a cut to another scene is usually above 0.4. A cut between two shots of the same colours is
  missed (no detector without a model sees those), and so are gradual transitions (a dissolve or fade changes
  the colours a little each frame: it stays inside one clip); a flash frame cuts twice (its one-frame clip is then
  too short).
* **Too long** (``max_seconds``, default 10): a shot longer than that is cut into equal pieces no longer than it
  (training samples ``data.num_frames`` spread over the whole clip, so a minute-long clip would train as a
  fast-forward).
* Then each clip is checked in this order, the first failure naming its reason:
  ``low_resolution`` (the source's shorter side below ``min_size``, default 360 pixels);
  ``too_short`` (fewer than ``min_frames`` frames when re-timed to ``fps``, the training pipeline's own rule
  ``video_io.select_frame_indices``; defaults 81 frames at 16 fps, ``data``'s defaults: 5 seconds);
  ``black`` (the median frame's mean luma below ``black_level``, default 0.05 of white: below video black 16/255);
  ``static`` (``motion`` below ``min_motion``, default 0.005: the mean absolute change of a 32x32 grey thumbnail
  between frames a quarter second apart, on a 0..1 scale -- frozen frames, slideshows and still images, not slow
  scenes; raise it to drop talking heads);
  ``duplicate`` (the clip's perceptual hash within ``dup_threshold`` of a kept clip's, default 0.15, pHash's usual
  10 bits of 64: 8 frames spread over the clip, each a 64-bit DCT hash of its 32x32 grey thumbnail -- the 8x8
  lowest frequencies against their median --, distance the fraction of differing bits; a copy or re-encode is
  near 0, a slight tint plus a shift by 3 % of the width 0.12 (the test's), unrelated clips near 0.5; the first
  clip in source order is kept);
  ``no_caption`` (neither the captioner nor a sidecar gave one), ``captioner_error``.
  A source that cannot be decoded is one ``unreadable`` entry; it never stops the run.

**Clips as files.** A kept clip is written as its own mp4 (H.264, imageio quality 8 -- near-lossless --, the source's
rate and size, an odd side cropped by one pixel for yuv420p) rather than as a frame range of its source: every
reader of a manifest (the training pipeline, ``vdot precompute``, ``vdot prepare``) reads whole files and spreads
its frames over the whole file, and a clip file costs no seeking at training time. Each manifest row is a raw row
(``video``, ``caption``) plus what was measured (``frames``, ``fps``, ``height``, ``width``, ``source``, ``start``,
``end``; readers ignore those columns).

**Captions.** A captioner (``module:function`` or ``file.py:function``, called with the clip's mp4 path; or a
command, run with the path as its last argument, its standard output the caption) captions each kept clip.
Without one a clip takes its source's caption: from ``--captions`` (JSON lines ``{"video": PATH, "caption":
TEXT}``, PATH relative to that file's folder or a bare file name), from a .jsonl source list, or from a text file
of the same stem beside the video (``a.mp4`` -> ``a.txt``). A source caption describes every clip cut from it.

**Reruns.** A clip's file name holds its source's identity (path, size, modification time) and frame range, so a
rerun into the same folder decodes again (cheap) but does not re-encode clips that already exist; clip files no
longer kept are removed (``clips/`` is this command's own folder).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vdot_jax.data import video_io
from vdot_jax.errors import VdotError, read_jsonl, read_utf8

VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v")
REASONS = ("unreadable", "low_resolution", "too_short", "black", "static", "duplicate", "no_caption",
           "captioner_error")
CLIP_NAME = re.compile(r".+-[0-9a-f]{8}-[0-9]{6,}-[0-9]{6,}(\.part)?\.mp4")  # STEM-SOURCEID-START-END.mp4
HASH_FRAMES = 8  # frames per clip hash
THUMB = 64  # the square thumbnail features are computed on
SHEET_H = 72  # contact sheet cell height


class CurateError(VdotError, ValueError):
    """A source list, caption file or captioner that cannot be used (the message names it)."""


@dataclass(frozen=True)
class Options:
    cut_threshold: float = 0.3
    max_seconds: float = 10.0  # 0: shots are not split by length
    min_size: int = 360
    min_frames: int = 81
    fps: float = 16.0  # 0: the source's own rate
    black_level: float = 0.05
    min_motion: float = 0.005
    dup_threshold: float = 0.15
    sheet: int = 16  # clips on the contact sheet
    seed: int = 0


@dataclass
class Source:
    path: str
    caption: str | None = None


@dataclass
class Clip:
    source: str
    start: int  # frame range in the source, end exclusive
    end: int
    fps: float
    height: int
    width: int
    motion: float = 0.0
    luma: float = 0.0
    status: str = "kept"  # "kept" or a reason of REASONS
    detail: str = ""
    video: str | None = None  # the written clip, relative to the output folder
    caption: str | None = None
    hash: np.ndarray | None = field(default=None, repr=False)
    thumbs: list = field(default_factory=list, repr=False)  # up to 4 small RGB frames for the contact sheet

    @property
    def frames(self) -> int:
        return self.end - self.start

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("hash", "thumbs")}
        d.update(frames=self.frames, seconds=round(self.frames / self.fps, 3) if self.fps else None,
                 motion=round(self.motion, 5), luma=round(self.luma, 4))
        return d


# ----------------------------------------------------------------------------- pure functions on arrays


def thumbnail(frame: np.ndarray, size: int = THUMB) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] (area average; the aspect ratio is not kept)."""
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


def histogram(thumb: np.ndarray, bins: int = 16) -> np.ndarray:
    """[3, bins] colour histogram of a uint8 RGB image, each channel summing to 1."""
    q = thumb.reshape(-1, 3).astype(np.int64) * bins // 256
    return np.stack([np.bincount(q[:, c], minlength=bins) for c in range(3)]).astype(np.float64) / len(q)


def hist_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Half the L1 distance of two [3, bins] histograms per channel, averaged: 0 (same colours) .. 1 (disjoint)."""
    return float(np.abs(a - b).sum(axis=1).mean() / 2)


def grey(thumb: np.ndarray, size: int = 32) -> np.ndarray:
    """float32 [size, size] luma in 0..1 of a uint8 RGB thumbnail (block mean)."""
    y = thumb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    k = y.shape[0] // size
    return y.reshape(size, k, size, k).mean(axis=(1, 3))


def cuts(scores: np.ndarray, threshold: float) -> list[int]:
    """Frame indices that start a new shot: ``scores[i]`` is the distance between frames i and i + 1."""
    return [int(i) + 1 for i in np.nonzero(np.asarray(scores) > threshold)[0]]


def segments(num_frames: int, starts: list[int], max_len: int | None) -> list[tuple[int, int]]:
    """[start, end) shots between the cuts, each longer than ``max_len`` cut into equal pieces no longer than it."""
    bounds = [0, *starts, num_frames]
    out = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e <= s:
            continue
        pieces = 1 if not max_len else -(-(e - s) // max_len)
        edges = np.rint(np.linspace(s, e, pieces + 1)).astype(int)
        out += [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    return out


def motion(greys: np.ndarray, lag: int) -> float:
    """Mean absolute change of [T, h, w] grey frames ``lag`` frames apart (shortened to fit the clip)."""
    if len(greys) < 2:
        return 0.0
    lag = max(1, min(lag, len(greys) - 1))
    return float(np.abs(greys[lag:] - greys[:-lag]).mean())


def phash(g: np.ndarray) -> np.ndarray:
    """64-bit DCT hash (bool [64]) of a [32, 32] grey image: the 8x8 lowest frequencies (DC dropped for the
    median) compared with their median."""
    from scipy.fft import dctn

    low = dctn(g.astype(np.float64), norm="ortho")[:8, :8].reshape(-1)
    return low > np.median(low[1:])


def clip_hash(greys: np.ndarray, k: int = HASH_FRAMES) -> np.ndarray:
    """bool [k, 64]: the hashes of k frames spread evenly over the clip (first and last included)."""
    idx = np.rint(np.linspace(0, len(greys) - 1, k)).astype(int)
    return np.stack([phash(greys[i]) for i in idx])


def hash_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fraction of differing bits between hash ``a`` [k, 64] and each of ``b`` [n, k, 64] -> [n]."""
    return (np.asarray(b) != a[None]).mean(axis=(1, 2))


def trained_frames(frames: int, src_fps: float, fps: float) -> int:
    """Frames a clip gives the training pipeline when re-timed to ``fps`` (0: its own rate)."""
    return len(video_io.select_frame_indices(frames, None, "uniform", src_fps or None, fps or None))


# ----------------------------------------------------------------------------- one source


@dataclass
class _Features:
    fps: float
    height: int
    width: int
    scores: np.ndarray  # [T - 1] histogram distances
    greys: np.ndarray  # [T, 32, 32]
    thumbs: dict  # frame index -> small RGB frame (a few per second, and each shot's first)


def analyse(path: str, options: Options) -> _Features:
    """Stream a video once and keep its per-frame features (raises VideoError if it cannot be decoded)."""
    fps, (h, w), frames = video_io.stream_video(path)
    every = max(1, round((fps or 16) / 4))
    tw = int(np.clip(round(SHEET_H * w / max(h, 1)), SHEET_H // 2, 3 * SHEET_H))
    scores, greys, thumbs, prev = [], [], {}, None
    for i, frame in enumerate(frames):
        t = thumbnail(frame)
        hist = histogram(t)
        if prev is not None:
            scores.append(hist_distance(prev, hist))
        prev = hist
        greys.append(grey(t))
        if i % every == 0 or (scores and scores[-1] > options.cut_threshold):
            from PIL import Image

            thumbs[i] = np.asarray(Image.fromarray(frame).resize((tw, SHEET_H), Image.Resampling.BILINEAR))
    if not greys:
        raise video_io.VideoError(f"video file {path} has no frames.")
    return _Features(fps, h, w, np.asarray(scores), np.stack(greys), thumbs)


def split(path: str, feats: _Features, options: Options) -> list[Clip]:
    """The clips of one analysed source, each with its measurements and the first reason to drop it (but
    ``duplicate`` and the caption reasons, which need the other clips and the captions)."""
    t = len(feats.greys)
    fps = feats.fps or 16.0
    max_len = max(1, int(options.max_seconds * fps)) if options.max_seconds else None
    lag = max(1, round(fps / 4))
    clips = []
    for s, e in segments(t, cuts(feats.scores, options.cut_threshold), max_len):
        g = feats.greys[s:e]
        c = Clip(path, s, e, feats.fps, feats.height, feats.width, motion=motion(g, lag),
                 luma=float(np.median(g.mean(axis=(1, 2)))))
        have = trained_frames(e - s, feats.fps, options.fps)
        if min(feats.height, feats.width) < options.min_size:
            c.status, c.detail = "low_resolution", f"{feats.height}x{feats.width}, shorter side < {options.min_size}"
        elif have < options.min_frames:
            at = f" at {options.fps:g} fps" if options.fps else ""
            c.status, c.detail = "too_short", f"{have} frames{at}, < {options.min_frames}"
        elif c.luma < options.black_level:
            c.status, c.detail = "black", f"median luma {c.luma:.3f} < {options.black_level}"
        elif c.motion < options.min_motion:
            c.status, c.detail = "static", f"motion {c.motion:.4f} < {options.min_motion}"
        c.hash = clip_hash(g)
        keys = sorted(feats.thumbs)
        for pos in np.linspace(s, e - 1, 4):
            c.thumbs.append(feats.thumbs[min(keys, key=lambda k: (not s <= k < e, abs(k - pos)))])
        clips.append(c)
    return clips


def drop_duplicates(clips: list[Clip], threshold: float) -> None:
    """Mark each clip within ``threshold`` of an earlier kept clip (perceptual hash) as a ``duplicate``."""
    kept: list[Clip] = []
    for c in clips:
        if c.status != "kept":
            continue
        if kept:
            d = hash_distance(c.hash, np.stack([k.hash for k in kept]))
            j = int(np.argmin(d))
            if d[j] <= threshold:
                k = kept[j]
                c.status, c.detail = "duplicate", f"of {k.source} frames {k.start}-{k.end} (distance {d[j]:.3f})"
                continue
        kept.append(c)


# ----------------------------------------------------------------------------- sources and captions


def _read_jsonl(path: Path, what: str) -> list[dict]:
    rows = []
    for n, obj in read_jsonl(path, what, CurateError):
        if not isinstance(obj.get("video"), str) or not obj["video"].strip():
            raise CurateError(f"{what} {path} line {n} is not an object with a \"video\" path.")
        if obj.get("caption") is not None and not isinstance(obj["caption"], str):
            raise CurateError(f"{what} {path} line {n}: \"caption\" must be text.")
        rows.append(obj)
    return rows


def _under(base: Path, p: str) -> str:
    q = Path(os.path.expanduser(p.strip()))
    return str(q if q.is_absolute() else base / q)


def list_sources(src: str, captions: str | None = None) -> list[Source]:
    """The videos of ``src`` (a folder, walked recursively for video files; a .txt list, one path per line; or a
    .jsonl list of ``{"video", "caption"}``), each with its caption from ``captions`` / the list / a sidecar .txt."""
    p = Path(src)
    if not p.exists():
        raise CurateError(f"SRC {src} does not exist.")
    if p.is_dir():
        sources = [Source(str(f)) for f in sorted(p.rglob("*"))
                   if f.is_file() and f.suffix.lower() in VIDEO_SUFFIXES and ".part." not in f.name]
    elif p.suffix.lower() == ".jsonl":
        sources = [Source(_under(p.parent, r["video"]), r.get("caption")) for r in _read_jsonl(p, "source list")]
    elif p.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in read_utf8(p, "source list", CurateError).splitlines()]
        sources = [Source(_under(p.parent, ln)) for ln in lines if ln and not ln.startswith("#")]
    else:
        raise CurateError(f"SRC {src} must be a folder of videos, a .txt list (one path per line) or a .jsonl list "
                          "({\"video\": PATH, \"caption\": TEXT} per line).")
    if not sources:
        raise CurateError(f"SRC {src} holds no videos ({', '.join(VIDEO_SUFFIXES)}).")
    by_path, by_name = {}, {}
    if captions is not None:
        cp = Path(captions)
        if not cp.is_file():
            raise CurateError(f"--captions {captions} does not exist (JSON lines {{\"video\": PATH, \"caption\": "
                              "TEXT}}).")
        for r in _read_jsonl(cp, "--captions file"):
            text = (r.get("caption") or "").strip()
            by_path[os.path.normpath(_under(cp.parent, r["video"]))] = text
            by_name.setdefault(Path(r["video"]).name, []).append(text)
    for s in sources:
        if s.caption:
            continue
        key = os.path.normpath(s.path)
        names = by_name.get(Path(s.path).name, [])
        sidecar = Path(s.path).with_suffix(".txt")
        if key in by_path:
            s.caption = by_path[key]
        elif len(names) == 1:
            s.caption = names[0]
        elif sidecar.is_file():
            s.caption = read_utf8(sidecar, "caption file", CurateError).strip()
    return sources


def load_captioner(spec: str) -> Callable[[str], str]:
    """``module:function`` / ``file.py:function`` (called with a clip's path) or a command (run with the path
    appended; its standard output is the caption). Loaded and checked now, before any video is decoded."""
    head, _, name = spec.rpartition(":")
    if head and name.isidentifier() and " " not in head:
        try:
            if head.endswith(".py"):
                if not Path(head).is_file():
                    raise CurateError(f"--captioner {spec}: {head} does not exist.")
                mod_spec = importlib.util.spec_from_file_location(Path(head).stem, head)
                mod = importlib.util.module_from_spec(mod_spec)
                mod_spec.loader.exec_module(mod)
            else:
                mod = importlib.import_module(head)
        except CurateError:
            raise
        except Exception as e:
            raise CurateError(f"--captioner {spec}: {head} could not be loaded ({type(e).__name__}: {e}).") from None
        fn = getattr(mod, name, None)
        if not callable(fn):
            raise CurateError(f"--captioner {spec}: {head} has no function {name}.")
        return fn
    argv = shlex.split(spec)
    if not argv or shutil.which(argv[0]) is None:
        raise CurateError(f"--captioner {spec}: not module:function, file.py:function, nor a command found on PATH.")

    def run(path: str) -> str:
        done = subprocess.run([*argv, path], capture_output=True, text=True, timeout=600)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
            raise RuntimeError(last)
        return done.stdout

    return run


# ----------------------------------------------------------------------------- the run


def _source_id(path: str) -> str:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha1(key.encode()).hexdigest()[:8]


def _write_clips(source: str, clips: list[Clip], out: Path) -> None:
    """Write the kept clips of one source, streaming it once (existing clip files are whole: kept as they are)."""
    todo = [c for c in clips if c.status == "kept" and not (out / c.video).exists()]
    if not todo:
        return
    fps, _, frames = video_io.stream_video(source)
    k, writer = 0, None
    h2, w2 = todo[0].height // 2 * 2, todo[0].width // 2 * 2
    try:
        for i, frame in enumerate(frames):
            c = todo[k]
            if i == c.start:
                writer = video_io.ClipWriter(out / c.video, fps or 16.0).__enter__()
            if writer is not None:
                writer.append(frame[:h2, :w2])
            if i == c.end - 1:
                writer.__exit__(None, None, None)
                writer, k = None, k + 1
                if k == len(todo):
                    break
    finally:
        if writer is not None:  # the stream ended early or failed: no partial clip is left
            writer.__exit__(RuntimeError, None, None)


def contact_sheet(clips: list[Clip], path: Path, count: int, seed: int) -> Path | None:
    """One PNG: a row per sampled clip (4 frames spread over it), labelled kept or with its drop reason."""
    from PIL import Image, ImageDraw

    shown = [c for c in clips if c.thumbs]
    if not shown:
        return None
    pick = sorted(np.random.default_rng(seed).choice(len(shown), min(count, len(shown)), replace=False))
    rows = [shown[i] for i in pick]
    label_w, gap = 220, 4
    width = label_w + max(sum(t.shape[1] + gap for t in c.thumbs) for c in rows)
    sheet = Image.new("RGB", (width, len(rows) * (SHEET_H + gap) + gap), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, c in enumerate(rows):
        y = gap + r * (SHEET_H + gap)
        draw.text((4, y + 4), f"{Path(c.source).name}  [{c.start}, {c.end})", fill=(0, 0, 0))
        draw.text((4, y + 24), c.status, fill=(0, 120, 0) if c.status == "kept" else (200, 0, 0))
        draw.text((4, y + 44), f"{c.height}x{c.width} {c.frames}f m={c.motion:.3f}", fill=(80, 80, 80))
        x = label_w
        for t in c.thumbs:
            sheet.paste(Image.fromarray(t), (x, y))
            x += t.shape[1] + gap
    sheet.save(path)
    return path


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all: an interrupted run leaves the previous run's file."""
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _markdown(result: dict) -> str:
    lines = ["# vdot data report", "", f"{result['sources']} source videos -> {result['clips']} clips, "
             f"{result['counts']['kept']} kept ({result['kept_seconds']:.1f} s).", "", "| outcome | clips |",
             "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in result["counts"].items()]
    lines += ["", "Thresholds: " + ", ".join(f"{k} {v}" for k, v in result["options"].items()), "",
              "## Dropped", "", "| source | frames | reason | detail |", "|---|---|---|---|"]
    lines += [f"| {c['source']} | {c['start']}-{c['end']} | {c['status']} | {c['detail']} |"
              for c in result["entries"] if c["status"] != "kept"]
    return "\n".join(lines) + "\n"


def curate(sources: list[Source], out, options: Options, captioner: Callable[[str], str] | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Filter ``sources`` into ``out`` (an existing folder the caller checked): the module docstring's rules."""
    out = Path(out)
    clips: list[Clip] = []
    for n, s in enumerate(sources):
        try:
            feats = analyse(s.path, options)
            got = split(s.path, feats, options)
            sid = _source_id(s.path)
        except (video_io.VideoError, OSError) as e:
            got = [Clip(s.path, 0, 0, 0.0, 0, 0, status="unreadable", detail=str(e))]
        for c in got:
            c.caption = s.caption
            if c.status != "unreadable":
                c.video = f"clips/{Path(s.path).stem}-{sid}-{c.start:06d}-{c.end:06d}.mp4"
        clips += got
        log(f"[{n + 1}/{len(sources)}] {s.path}: {len(got)} clip(s), {sum(c.status == 'kept' for c in got)} pass")
    drop_duplicates(clips, options.dup_threshold)
    if captioner is None:
        for c in clips:
            if c.status == "kept" and not (c.caption or "").strip():
                c.status, c.detail = "no_caption", "no --captions entry, list caption or sidecar .txt"
    by_source: dict[str, list[Clip]] = {}
    for c in clips:
        by_source.setdefault(c.source, []).append(c)
    for src, group in by_source.items():
        problem = "the video ended before the clip (did it change during the run?)"
        try:
            _write_clips(src, group, out)
        except (video_io.VideoError, OSError) as e:  # the source changed or broke since it was analysed
            problem = str(e)
        for c in group:
            if c.status == "kept" and not (out / c.video).exists():
                c.status, c.detail = "unreadable", problem
    if captioner is not None:
        for c in clips:
            if c.status != "kept":
                continue
            try:
                text = str(captioner(str(out / c.video)) or "").strip()
            except Exception as e:  # a user's captioner: its failure drops the clip, with its message
                c.status, c.detail = "captioner_error", f"{type(e).__name__}: {e}"
                continue
            if text:
                c.caption = text
            else:
                c.status, c.detail = "no_caption", "the captioner returned no text"
    kept = [c for c in clips if c.status == "kept"]
    for c in clips:
        if c.status != "kept":
            c.video = None
    wanted = {(out / c.video).name for c in kept}
    if (out / "clips").is_dir():
        for f in (out / "clips").iterdir():  # clips of an earlier run that this one does not keep (by their name
            if f.name not in wanted and CLIP_NAME.fullmatch(f.name):  # form: other files, --overwrite's, stay)
                f.unlink()
    rows = [{"video": c.video, "caption": c.caption, "frames": c.frames, "fps": c.fps, "height": c.height // 2 * 2,
             "width": c.width // 2 * 2, "source": c.source, "start": c.start, "end": c.end} for c in kept]
    _write_text(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    counts = {"kept": len(kept), **{r: sum(c.status == r for c in clips) for r in REASONS}}
    result = {"sources": len(sources), "clips": len(clips), "counts": counts,
              "kept_seconds": float(sum(c.frames / (c.fps or 16.0) for c in kept)),
              "options": asdict(options), "manifest": "manifest.jsonl",
              "entries": [c.to_dict() for c in clips]}
    sheet = contact_sheet(clips, out / "contact_sheet.png", options.sheet, options.seed)
    result["contact_sheet"] = sheet.name if sheet else None
    _write_text(out / "report.json", json.dumps(result, indent=1) + "\n")
    _write_text(out / "report.md", _markdown(result))
    return result
