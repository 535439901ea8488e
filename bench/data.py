"""Host-side data throughput: samples per second per CPU core for the three ways a sample reaches training.

    python bench/data.py --out out/data_bench.json                 # 81x480x832 from a 97-frame 1280x720 H.264 source
    python bench/data.py --tiny --out out/data_tiny.json           # 9x32x48: a smoke test (seconds)
    python bench/data.py --parts raw --tasks t2v,inpaint           # a subset

(a) ``raw``: a raw manifest row decoded and its task's inputs derived on the fly, through the training
pipeline's own code (``ManifestSource.derive``: decode + resize-crop + re-time + ``conditions.derive``), per task
of ``conditions.derive.RAW_TASKS`` (layout with a box row); the VAE / umT5 encoding that follows runs on the
accelerator and is not counted. (b) ``shards``: one precomputed record of the Wan geometry at that size (latents
[16, 21, 60, 104] and the VACE context [96, 21, 60, 104] in float32, 120 text tokens of 4096) read back from an
ArrayRecord shard and decoded, as ``PrecomputedSource.load`` does (from the page cache: the disk is not timed).
(c) ``prepare``: one ``vdot prepare TASK`` run in-process (decode, the task, two H.264 encodes, row.json) per
model-free task.

**Per core.** Each sample's cost is its CPU time -- this process's and its children's (the ffmpeg decoder and
encoder processes), from ``resource.getrusage`` -- so samples/s per core = 1 / CPU-seconds per sample, whatever
else the machine runs; wall time is reported beside it. ``--repeats`` samples per row, the median kept.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

PREPARE = {  # task -> its extra arguments (boxes in source pixels of the 1280x720 / 48x32 source)
    "plain": [], "gray": [], "edges": [], "frameref": ["--mode", "random", "--ref-num", "4"],
    "inpaint": ["--box", "{box}"], "layout": ["--box", "{box}"], "outpaint": ["--expand", "0,0,0.25,0.25"],
    "outpaint_inner": ["--expand", "0.1,0.1,0.1,0.1", "--inner"], "first_frame": [],
    "first_clip": ["--clip-frames", "4"],
    "first_last_clip": ["--clip-frames", "4"],
}


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(fn, repeats: int) -> dict:
    fn()  # warm-up: imports, caches
    cpu, wall = [], []
    for _ in range(repeats):
        c, t = cpu_seconds(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(cpu_seconds() - c)
    c = statistics.median(cpu)
    return {"cpu_s": round(c, 4), "wall_s": round(statistics.median(wall), 4),
            "samples_per_s_per_core": round(1.0 / c, 4) if c > 0 else None, "repeats": repeats}


def source_video(path: Path, frames: int, height: int, width: int, fps: float) -> None:
    """A moving smooth colour field (H.264 treats it like natural video better than noise)."""
    from vdot_jax.data import video_io

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    with video_io.ClipWriter(path, fps) as w:
        for k in range(frames):
            f = np.stack([np.sin(x / 40 + k / 5 + c) * np.cos(y / 30 - k / 7) for c in range(3)], -1)
            w.append(np.clip((f + 1) * 127.5, 0, 255).astype(np.uint8))


def bench_raw(video: Path, args, box: str) -> dict:
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    from vdot_jax.conditions import derive as D
    from vdot_jax.data.manifest import ManifestRow
    from vdot_jax.data.pipeline import ManifestSource, make_encoder
    from vdot_jax.train.config import apply_overrides, load_config

    c = load_config(str(Path(__file__).resolve().parents[1] / "configs/tiny.py") + ":flow")
    apply_overrides(c, ["data.source=manifest", f"data.num_frames={args.frames}", f"data.height={args.height}",
                        f"data.width={args.width}", f"data.fps={args.fps}", "data.sampling=uniform"])
    tasks = [t for t in (args.tasks.split(",") if args.tasks else D.RAW_TASKS) if t in D.RAW_TASKS]
    src = ManifestSource(c, make_encoder(c, with_context=True), rows=[ManifestRow(caption="x", video=str(video))])
    out, k = {}, [0]
    for task in tasks:
        row = ManifestRow(caption="x", video=str(video), task=task, boxes=box if task == "layout" else None)

        def one():
            k[0] += 1
            src.derive(row, k[0], 0)

        out[task] = measure(one, args.repeats)
        print(f"raw {task}: {out[task]}", flush=True)
    from vdot_jax.data import video_io

    out["decode_only"] = measure(lambda: video_io.read_video(video, args.frames, (args.height, args.width), args.fps),
                                 args.repeats)
    print(f"raw decode only: {out['decode_only']}", flush=True)
    return out


def bench_shards(tmp: Path, args) -> dict:
    import grain
    from array_record.python.array_record_module import ArrayRecordWriter

    from vdot_jax.data.pipeline import decode_record, encode_record

    t, h, w = (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8
    rng = np.random.default_rng(0)
    n = max(args.repeats + 1, 2)
    path = tmp / "shard.array_record"
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for _ in range(n):
        writer.write(encode_record({"latents": rng.standard_normal((16, t, h, w), np.float32),
                                    "context": rng.standard_normal((96, t, h, w), np.float32),
                                    "text": np.pad(rng.standard_normal((120, 4096), np.float32), ((0, 392), (0, 0))),
                                    "task": "inpaint", "caption": "x"}))
    writer.close()
    source = grain.sources.ArrayRecordDataSource([str(path)])
    k = [0]

    def one():
        k[0] = (k[0] + 1) % n
        out = decode_record(source[k[0]])
        np.ascontiguousarray(out["context"], np.float32)  # the pipeline's batching copy

    res = measure(one, args.repeats)
    res["record_mb"] = round(path.stat().st_size / n / 2**20, 1)
    print(f"shards: {res}", flush=True)
    return res


def bench_prepare(video: Path, tmp: Path, args, box: str) -> dict:
    from vdot_jax.cli import main

    tasks = [t for t in (args.tasks.split(",") if args.tasks else PREPARE) if t in PREPARE]
    out, k = {}, [0]
    for name in tasks:
        task = "outpaint" if name == "outpaint_inner" else name
        extra = [a.format(box=box) for a in PREPARE[name]]

        def one():
            k[0] += 1
            d = tmp / f"p{k[0]}"
            argv = ["prepare", task, "--src-video", str(video), "--out", str(d), "--frames", str(args.frames),
                    "--height", str(args.height), "--width", str(args.width), *extra]
            with contextlib.redirect_stdout(io.StringIO()):
                rc = main(argv)
            if rc != 0:
                raise SystemExit(f"vdot {' '.join(argv)} failed")
            shutil.rmtree(d)

        out[name] = measure(one, args.repeats)
        print(f"prepare {name}: {out[name]}", flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=None, help="training frames (default 81; 9 with --tiny)")
    p.add_argument("--height", type=int, default=None, help="default 480 (32 with --tiny)")
    p.add_argument("--width", type=int, default=None, help="default 832 (48 with --tiny)")
    p.add_argument("--fps", type=float, default=16.0, help="data.fps (the source is written at 24 fps)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--parts", default="raw,shards,prepare")
    p.add_argument("--tasks", default=None, help="comma-separated subset of tasks (default: all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON result file")
    args = p.parse_args()
    args.frames = args.frames or (9 if args.tiny else 81)
    args.height = args.height or (32 if args.tiny else 480)
    args.width = args.width or (48 if args.tiny else 832)
    sh, sw = (48, 64) if args.tiny else (720, 1280)
    src_frames = int((args.frames - 1) * 24 / args.fps) + 1 if args.fps else args.frames + 16
    box = "8,8,40,32" if args.tiny else "300,150,900,600"
    parts = args.parts.split(",")
    load = os.getloadavg()
    result = {"host": {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
                       "load_average_start": [round(v, 2) for v in load]},
              "sizes": {"frames": args.frames, "height": args.height, "width": args.width, "fps": args.fps,
                        "source": f"{src_frames}x{sh}x{sw} at 24 fps"}, "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        video = tmp / "raw.mp4"
        source_video(video, src_frames, sh, sw, 24.0)
        if "raw" in parts:
            result["raw"] = bench_raw(video, args, box)
        if "shards" in parts:
            result["shards"] = bench_shards(tmp, args)
        if "prepare" in parts:
            result["prepare"] = bench_prepare(video, tmp, args, box)
    result["host"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
