"""Training logs: JSONL and TensorBoard scalars, a tqdm bar, PNG loss plots, sample videos (mp4 + GIF grid).

    WORKDIR/metrics.jsonl        one JSON object per logged step: {"step": ..., "critic_flow_loss": ..., ...}
    WORKDIR/tb/                  TensorBoard event files (tensorboardX), the same scalars (on a bucket: written
                                 locally, the files copied up every 30 s and at the end)
    WORKDIR/train.log            warnings and notices (bad samples, skipped updates, resume, stop reasons)
    WORKDIR/plots/losses.png     every loss against the step (raw and smoothed)
    WORKDIR/samples/step_N/      sample_K.mp4 per sample and grid.gif / grid.mp4 (one row per sample)

Only the first process writes. On resume the JSONL is cut back to the restored step (later lines are dropped:
those steps run again), so it reads as one run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from vdot_jax.data.video_io import write_video
from vdot_jax.train.paths import RemoteAppendFile, is_local, local_dir, workdir_path


class MetricLogger:
    def __init__(self, workdir, *, enabled: bool = True, total_steps: int = 0, start_step: int = 0,
                 progress: bool = True, resume_from: int | None = None):
        self.local = is_local(workdir)
        self.workdir = Path(workdir) if self.local else workdir_path(workdir)  # local: exactly as before
        self.enabled = enabled
        self.jsonl = self.workdir / "metrics.jsonl"
        self._tb = None
        self._tb_dir: Path | None = None
        self._tb_uploaded = 0.0
        self._bar = None
        if not enabled:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        if resume_from is not None and self.jsonl.exists():
            self._truncate(resume_from)
        if self.local:
            self._fh = self.jsonl.open("a")
            self._log = (self.workdir / "train.log").open("a")
        else:  # a bucket has no append: rewritten whole, every 30 s and at close
            self._fh, self._log = RemoteAppendFile(self.jsonl), RemoteAppendFile(self.workdir / "train.log")
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                             mininterval=1.0, disable=None)

    def _truncate(self, step: int) -> None:
        keep = []
        for line in self.jsonl.read_text().splitlines():
            try:
                if json.loads(line).get("step", -1) <= step:
                    keep.append(line)
            except ValueError:
                continue
        if not self.local:
            self.jsonl.write_text("".join(x + "\n" for x in keep))  # one object write: atomic on a bucket
            return
        tmp = self.jsonl.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(x + "\n" for x in keep))
        os.replace(tmp, self.jsonl)

    @property
    def tb(self):
        if self._tb is None and self.enabled:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # optional at run time
                self._tb = False
            else:
                # a bucket has no append: the event files are written locally and copied up whole (_upload_tb)
                self._tb_dir = self.workdir / "tb" if self.local else Path(tempfile.mkdtemp(prefix="vdot-tb-"))
                self._tb = SummaryWriter(str(self._tb_dir), flush_secs=30)
        return self._tb or None

    def _upload_tb(self, force: bool = False) -> None:
        if self.local or not self._tb or (not force and time.time() - self._tb_uploaded < 30):
            return
        self._tb.flush()
        for f in sorted(self._tb_dir.rglob("*")):
            if f.is_file():
                dst = self.workdir / "tb" / str(f.relative_to(self._tb_dir))
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(f.read_bytes())
        self._tb_uploaded = time.time()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _num(v) for k, v in metrics.items()}}
        self._fh.write(json.dumps(row) + "\n")
        self._fh.flush()
        tb = self.tb
        if tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    tb.add_scalar(k, v, step)
            self._upload_tb()

    def advance(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        if self._bar is not None:
            self._bar.n = int(step)
            if postfix:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self._bar.refresh()

    def message(self, text: str, *, warning: bool = False, console: bool = True) -> None:
        """A line for the user (stderr, above the bar) and for train.log."""
        if not self.enabled:
            return
        line = ("warning: " if warning else "") + text
        if not console:
            pass
        elif self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)
        self._log.write(time.strftime("%Y-%m-%d %H:%M:%S ") + line + "\n")
        self._log.flush()

    def plot(self) -> Path | None:
        if not self.enabled or not self.jsonl.exists():
            return None
        if self.local:
            return plot_losses(self.jsonl, self.workdir / "plots" / "losses.png")
        self._fh.flush(force=True)
        with local_dir(self.workdir / "plots") as d:
            (d / "metrics.jsonl").write_text(self.jsonl.read_text())
            made = plot_losses(d / "metrics.jsonl", d / "losses.png")
            (d / "metrics.jsonl").unlink()
        return self.workdir / "plots" / "losses.png" if made else None

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb:
            self._upload_tb(force=True)
            self._tb.close()
            if not self.local:
                shutil.rmtree(self._tb_dir, ignore_errors=True)
        self._fh.close()
        self._log.close()


def _num(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def read_metrics(path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


# Training metrics that move: real losses, GAN logits, the Sinkhorn cost <P,C> of fake vs real x0, the DMD
# direction's norm and the critic/teacher x0 gap. The DMD/OT surrogate losses (``surrogate/*``) are left out:
# their value is constant by construction (only their gradient carries the direction).
CURVES = ("d_real", "d_fake", "g_d_real", "g_d_fake", "ot_cost", "dmd_direction_norm", "x0_gap_rms")


def is_curve(key: str) -> bool:
    return key.endswith("_loss") or key in CURVES


def plot_losses(jsonl, out) -> Path | None:
    """One panel per loss in a metrics.jsonl: raw values and an exponential moving average."""
    rows = read_metrics(jsonl)
    keys = sorted({k for r in rows for k in r if is_curve(k)})
    if not keys:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(keys)
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, k in zip(axes.ravel(), keys):
        pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if not pts:
            ax.set_visible(False)
            continue
        x, y = (np.asarray(v, np.float64) for v in zip(*pts))
        ax.plot(x, y, lw=0.6, alpha=0.35, color="C0")
        ema, acc = np.empty_like(y), y[0]
        beta = 1.0 - 1.0 / max(3.0, min(50.0, len(y) / 10.0))
        for i, v in enumerate(y):
            acc = beta * acc + (1 - beta) * v
            ema[i] = acc
        ax.plot(x, ema, lw=1.4, color="C0")
        ax.set_title(k, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- sample videos


def _to_uint8_frames(video: np.ndarray, scale: int) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H*scale, W*scale, 3] uint8."""
    v = np.clip((np.asarray(video, np.float32).transpose(1, 2, 3, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
    if scale > 1:
        v = v.repeat(scale, axis=1).repeat(scale, axis=2)
    return v


def grid_frames(columns: Sequence[np.ndarray], scale: int = 1, pad: int = 2) -> np.ndarray:
    """Columns of videos [N, 3, T, H, W] (same N, T, H, W) -> frames [T, rows, cols] tiled with white gaps."""
    n, _, t, h, w = columns[0].shape
    hs, ws = h * scale, w * scale
    out = np.full((t, n * hs + (n + 1) * pad, len(columns) * ws + (len(columns) + 1) * pad, 3), 255, np.uint8)
    for c, col in enumerate(columns):
        for i in range(n):
            y, x = pad + i * (hs + pad), pad + c * (ws + pad)
            out[:, y:y + hs, x:x + ws] = _to_uint8_frames(col[i], scale)
    return out


def write_gif(path, frames: np.ndarray, fps: float) -> Path:
    import imageio.v3 as iio

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(p, list(frames), extension=".gif", duration=int(round(1000.0 / max(fps, 1e-3))), loop=0)
    return p


def write_samples(outdir, columns: Mapping[str, np.ndarray], fps: float = 16.0, scale: int | None = None) -> dict:
    """Write one mp4 per sample (its columns side by side) and a GIF + mp4 grid of all samples.

    ``columns``: {name: videos [N, 3, T, H, W] in [-1, 1]}, e.g. {"condition": ..., "real": ..., "generated": ...}.
    Small (toy) videos are enlarged by an integer factor so they can be seen."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    cols = [np.asarray(v) for v in columns.values()]
    n, _, _, h, w = cols[0].shape
    scale = scale or max(1, 128 // max(h, w))
    written = {"names": list(columns), "samples": []}
    for i in range(n):
        frames = grid_frames([c[i:i + 1] for c in cols], scale=scale, pad=0)
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        written["samples"].append(str(write_video(outdir / f"sample_{i}.mp4", frames, fps=fps)))
    grid = grid_frames(cols, scale=scale)
    written["gif"] = str(write_gif(outdir / "grid.gif", grid, fps))
    even = grid[:, : grid.shape[1] // 2 * 2, : grid.shape[2] // 2 * 2]
    written["mp4"] = str(write_video(outdir / "grid.mp4", even, fps=fps))
    (outdir / "columns.json").write_text(json.dumps(list(columns)))
    return written
