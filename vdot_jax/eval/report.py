"""Report pieces: markdown tables, PNG plots (matplotlib, headless), video grids (mp4 + GIF)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def markdown_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[tuple[str, str, str]]) -> str:
    """rows: {row name: {metric: value}}; columns: (metric key, header, format). Missing values show as '-'."""
    head = "| | " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|---|" + "---|" * len(columns)
    lines = [head, sep]
    for name, metrics in rows.items():
        cells = []
        for key, _, fmt in columns:
            v = metrics.get(key)
            cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt))
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


def plot_bars(rows: Mapping[str, Mapping[str, float]], metrics: Sequence[tuple[str, str]], path, title: str = ""):
    """Grouped bars: one group per metric, one bar per row. metrics: (key, label)."""
    plt = _plt()
    names = list(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, (key, label) in zip(axes[0], metrics):
        vals = [rows[n].get(key, np.nan) for n in names]
        ax.bar(range(len(names)), vals, color=[f"C{i}" for i in range(len(names))])
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def video_grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2, scale: int = 1) -> np.ndarray:
    """rows of [3, T, H, W] clips in [-1, 1] (same T, H, W) -> [T, H', W', 3] uint8 with white gutters."""
    from vdot_jax.data.video_io import to_uint8

    clips = [[to_uint8(np.asarray(c, np.float32).transpose(1, 2, 3, 0)) for c in row] for row in rows]
    t, h, w, _ = clips[0][0].shape
    ncol = max(len(r) for r in clips)
    out = np.full((t, len(clips) * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(clips):
        for j, c in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[:, y : y + h, x : x + w] = c
    if scale > 1:
        out = out.repeat(scale, axis=1).repeat(scale, axis=2)
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
