"""Report pieces: markdown tables, PNG plots (matplotlib, headless), video grids (mp4 + GIF)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def markdown_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[tuple[str, str, str]],
                   spread: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """rows: {row name: {metric: value}}; columns: (metric key, header, format). Missing values show as '-'.
    With ``spread`` ({row name: {metric: sd}}) a cell reads "mean ± sd" where the sd is known."""
    head = "| | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    lines = [head, sep]
    for name, metrics in rows.items():
        cells = []
        for key, _, fmt in columns:
            v = metrics.get(key)
            cell = "-" if _missing(v) else format(v, fmt)
            sd = (spread or {}).get(name, {}).get(key)
            if not _missing(v) and not _missing(sd):
                cell += f" ± {format(sd, fmt)}"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike, title: str = "") -> None:
    """One panel per metric; one line per run. curves: {run: {metric: values per logged step}}."""
    plt = _plt()
    metrics = sorted({m for c in curves.values() for m in c})
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4 * max(len(metrics), 1), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for run, c in curves.items():
            if metric in c and len(c[metric]):
                y = np.asarray(c[metric], float)
                k = max(1, len(y) // 20)  # light smoothing for noisy per-step losses
                ax.plot(np.convolve(y, np.ones(k) / k, mode="valid"), label=run)
        ax.set_title(metric)
        ax.set_xlabel("logged step")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[tuple[str, str]], path, title: str = "",
              spread: Mapping[str, Mapping[str, float]] | None = None):
    """One panel per metric, one bar per row; metrics: (key, label). ``spread`` ({row: {metric: sd}}) draws
    error bars of +/- one sd."""
    plt = _plt()
    names = list(rows)
    ncol = min(len(metrics), 4)
    nrow = -(-len(metrics) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.4 * ncol, 3.4 * nrow), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, (key, label) in zip(axes.flat, metrics):
        vals = [rows[n].get(key, np.nan) for n in names]
        err = None
        if spread:
            err = [spread.get(n, {}).get(key, np.nan) for n in names]
            err = np.nan_to_num(np.asarray(err, float))
        ax.bar(range(len(names)), vals, yerr=err, capsize=3, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _text_image(text: str, height: int, width: int | None = None) -> np.ndarray:
    """Black text on white, [height, width] uint8 (width: the text's own when None)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(8, height - 5)) if hasattr(ImageFont, "load_default") else None
    w = width or int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(text, font=font)) + 6
    img = Image.new("L", (w, height), 255)
    ImageDraw.Draw(img).text((3, 1), text, fill=0, font=font)
    return np.asarray(img)


def video_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, scale: int = 1,
               col_labels: Sequence[str] | None = None, row_labels: Sequence[str] | None = None) -> np.ndarray:
    """rows of [3, T, H, W] clips in [-1, 1] (same T, H, W) -> [T, H', W', 3] uint8 with white gutters.
    Each clip is upsampled ``scale`` x nearest-neighbour (pixels stay hard-edged); labels are drawn unscaled
    above the columns and left of the rows."""
    from vdot_jax.data.video_io import to_uint8

    clips = [[to_uint8(np.asarray(c, np.float32).transpose(1, 2, 3, 0)).repeat(scale, 1).repeat(scale, 2)
              for c in row] for row in rows]
    t, h, w, _ = clips[0][0].shape
    ncol = max(len(r) for r in clips)
    top = 16 if col_labels else 0
    left = 0
    if row_labels:
        left = max(_text_image(str(r), 14).shape[1] for r in row_labels)
    out = np.full((t, top + len(clips) * (h + pad) + pad, left + ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(clips):
        for j, c in enumerate(row):
            y, x = top + pad + i * (h + pad), left + pad + j * (w + pad)
            out[:, y : y + h, x : x + w] = c
    for j, label in enumerate(col_labels or ()):
        x = left + pad + j * (w + pad)
        out[:, :top, x : x + w] = _text_image(str(label), top, w)[None, :, :, None]
    for i, label in enumerate(row_labels or ()):
        y = top + pad + i * (h + pad) + (h - 14) // 2
        out[:, y : y + 14, :left] = _text_image(str(label), 14, left)[None, :, :, None]
    return out


def write_grid(frames: np.ndarray, stem: str | os.PathLike, fps: int = 4) -> list[Path]:
    """Write [T, H, W, 3] uint8 frames as STEM.mp4 and STEM.gif; returns the paths."""
    import imageio.v2 as imageio

    from vdot_jax.data.video_io import write_video

    stem = Path(stem)
    h, w = frames.shape[1:3]
    even = frames[:, : h - h % 2, : w - w % 2]
    write_video(stem.with_suffix(".mp4"), even, fps=fps)
    imageio.mimsave(stem.with_suffix(".gif"), list(frames), duration=1000 / fps, loop=0)
    return [stem.with_suffix(".mp4"), stem.with_suffix(".gif")]
