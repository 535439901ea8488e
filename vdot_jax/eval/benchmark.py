"""UVCBench-style benchmarks: generate every row of a JSONL index, save the videos, score them, write a table.

An index line is a JSON object with ``subtask, sample_id, en_prompt, src_video, src_mask, src_ref_images`` (the
VACE-Benchmark / UVCBench format; paths relative to ``root``; ``src_ref_images`` a list or one comma-separated
string; absent inputs ``null`` or ""). The inputs are already in the VACE release's file conventions (grey 127
marks missing content, white in the mask means generate), so every row becomes a VCU with
``vdot_jax.conditions.read_task_inputs``; the subtask name routes the row to its task family, which says which
inputs it must have and which metrics apply:

===========  =====================================================================  ==========================
family       subtasks (case-insensitive; ``-``/spaces = ``_``; prefixes as noted)    needs
===========  =====================================================================  ==========================
text         t2v                                                                     --
reference    r2v, reference, face, object, subject (and ``image_reference``...)     src_ref_images
control      depth*, pose*, flow*, scribble*, gray*, layout* (V2V)                  src_video
repaint      inpainting, outpainting, inpaint, outpaint, mv2v, repaint (MV2V)        src_video, src_mask
extension    extension, firstframe, lastframe, firstlastframe, firstclip,           src_video, src_mask
             lastclip, firstlastclip, i2v, frameref, clipref (+ ``first_frame``...)
composite    animate_anything (R2V + pose), swap_anything (R2V + inpainting),       as listed
             expand_anything (R2V + frames + outpainting), move_anything (frame
             R2V + layout), reference_anything (face + object R2V)
===========  =====================================================================  ==========================

A subtask not in the table is routed by its files (the release's rule: no video = text/reference, a video alone =
control, a video with a mask = masked editing) and flagged in the table.

Output (``out``)::

    videos/<subtask>/<sample_id>.mp4      the generated videos (what resuming looks for)
    vbench/<subtask>/<prompt>-<k>.mp4     the same videos in VBench's layout (custom-input mode reads the prompt
                                          from the file name; k counts repeated prompts), one folder per subtask
    vbench/<subtask>/index.json           file name -> sample_id and the full prompt (names are truncated)
    results.jsonl                         one record per row: status, paths, metrics, timings
    table.md, table.json                  per-subtask table (means), skipped rows and metrics with reasons

Resuming: a row whose ``videos/...mp4`` exists, is readable, has the requested frame count and size, and whose
sidecar ``videos/...mp4.json`` records the same generation settings (model, steps, guidance, shift, solver, seed,
negative prompt, size, reference order) is not generated again (its metrics are reused when the file is
unchanged); any other video there is generated again. An index with no usable row, or a run in which no row
could be generated or reused, is an error. A row whose input file is missing is
reported and skipped; so is a row whose inputs cannot be read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from vdot_jax.errors import VdotError, read_utf8

FIELDS = ("subtask", "sample_id", "en_prompt", "src_video", "src_mask", "src_ref_images")
FAMILIES = ("text", "reference", "control", "repaint", "extension", "composite")
_V, _M, _R = "src_video", "src_mask", "src_ref_images"


class BenchmarkError(VdotError, ValueError):
    """The index or the output folder cannot be used (the message names the file and the line)."""


@dataclasses.dataclass(frozen=True)
class Route:
    family: str
    needs: tuple[str, ...]
    control: str | None = None  # the control signal of control tasks (depth, pose, ...)


_EXACT = {
    "t2v": Route("text", ()),
    **{k: Route("reference", (_R,)) for k in ("r2v", "reference", "face", "object", "subject", "image_reference",
                                              "image_face", "image_object", "image_subject", "ref2v")},
    **{k: Route("repaint", (_V, _M)) for k in ("inpainting", "outpainting", "inpaint", "outpaint", "mv2v",
                                               "repaint", "video_inpainting", "video_outpainting",
                                               "outpainting_inner")},
    **{k: Route("extension", (_V, _M)) for k in ("extension", "firstframe", "lastframe", "firstlastframe",
                                                 "firstclip", "lastclip", "firstlastclip", "first_frame",
                                                 "last_frame", "first_last_frame", "first_clip", "last_clip",
                                                 "first_last_clip", "i2v", "frameref", "clipref", "framerefext")},
    "animate_anything": Route("composite", (_V, _R), "pose"),
    "swap_anything": Route("composite", (_V, _M, _R)),
    "expand_anything": Route("composite", (_V, _M, _R)),
    "move_anything": Route("composite", (_V,), "layout"),
    "reference_anything": Route("composite", (_R,)),
}
CONTROL_PREFIXES = ("depth", "pose", "flow", "scribble", "gray", "layout")


def normalize(subtask: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(subtask).strip().lower())


def route(subtask: str) -> Route | None:
    """The task family of a subtask name, or None when the name is unknown (then the files decide)."""
    name = normalize(subtask)
    if name in _EXACT:
        return _EXACT[name]
    for kind in CONTROL_PREFIXES:
        if name.startswith(kind) or name == f"v2v_{kind}":
            return Route("control", (_V,), kind)
    return None


def _by_files(video, mask, refs) -> Route:
    if video is None:
        return Route("reference", (_R,)) if refs else Route("text", ())
    return Route("repaint", (_V, _M)) if mask is not None else Route("control", (_V,))


@dataclasses.dataclass
class Row:
    line: int
    subtask: str
    sample_id: str
    prompt: str
    src_video: Path | None
    src_mask: Path | None
    refs: list[Path]
    route: Route
    routed_by_files: bool

    @property
    def key(self) -> str:
        return f"{self.subtask}/{self.sample_id}"

    def inputs(self) -> list[Path]:
        return [p for p in (self.src_video, self.src_mask, *self.refs) if p is not None]


def _path(value, root: Path) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    p = Path(os.path.expanduser(str(value).strip()))
    return p if p.is_absolute() else root / p


def _refs(value, root: Path) -> list[Path]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return [p for p in (_path(v, root) for v in items) if p is not None]


def read_index(index: str | os.PathLike, root: str | os.PathLike) -> tuple[list[Row], list[dict]]:
    """(rows, problems): every well-formed line as a Row; malformed lines as {"line", "sample", "reason"}."""
    index, root = Path(index), Path(root)
    if not index.is_file():
        raise BenchmarkError(f"benchmark index {index} does not exist (expected a JSONL file, one row per line)")
    rows, problems, seen = [], [], set()
    for n, text in enumerate(read_utf8(index, "benchmark index", BenchmarkError).splitlines(), 1):
        if not text.strip():
            continue
        try:
            d = json.loads(text)
        except ValueError as e:
            problems.append({"line": n, "sample": None, "reason": f"not valid JSON ({e})"})
            continue
        if not isinstance(d, dict):
            problems.append({"line": n, "sample": None, "reason": "not a JSON object"})
            continue
        missing = [f for f in ("subtask", "sample_id", "en_prompt") if d.get(f) in (None, "")]
        if missing:
            problems.append({"line": n, "sample": d.get("sample_id"), "reason": f"no {', '.join(missing)}"})
            continue
        subtask, sample_id = str(d["subtask"]).strip(), str(d["sample_id"]).strip()
        if (subtask, sample_id) in seen:
            problems.append({"line": n, "sample": f"{subtask}/{sample_id}",
                             "reason": "duplicate subtask/sample_id (the first one is used)"})
            continue
        seen.add((subtask, sample_id))
        video, mask, refs = _path(d.get(_V), root), _path(d.get(_M), root), _refs(d.get(_R), root)
        r = route(subtask)
        rows.append(Row(n, subtask, sample_id, str(d["en_prompt"]), video, mask, refs,
                        r or _by_files(video, mask, refs), r is None))
    if not rows and not problems:
        raise BenchmarkError(f"benchmark index {index} has no rows")
    return rows, problems


def check_row(row: Row) -> str | None:
    """Why the row cannot run (a missing field or file), or None."""
    have = {_V: row.src_video is not None, _M: row.src_mask is not None, _R: bool(row.refs)}
    lacking = [f for f in row.route.needs if not have[f]]
    if lacking:
        return f"subtask {row.subtask} ({row.route.family}) needs {' and '.join(lacking)}"
    if row.src_mask is not None and row.src_video is None:
        return "src_mask without src_video"
    absent = [str(p) for p in row.inputs() if not p.exists()]
    if absent:
        return f"missing input file{'s' if len(absent) > 1 else ''}: {', '.join(absent)}"
    return None


# ----------------------------------------------------------------------------- output layout


def _safe(name: str, limit: int = 180) -> str:
    """A file-name-safe form of ``name`` of at most ``limit`` UTF-8 bytes (file systems count bytes, and a
    non-ASCII prompt has up to 4 per character); a shortened name ends in a hash of the full one, so it stays
    unique."""
    s = re.sub(r"[/\\\x00-\x1f]", "_", name).strip() or "_"
    b = s.encode("utf-8")
    if len(b) <= limit:
        return s
    tag = "~" + hashlib.sha1(b).hexdigest()[:10]
    return b[: limit - len(tag)].decode("utf-8", errors="ignore").rstrip() + tag


def video_path(out: Path, row: Row) -> Path:
    return out / "videos" / _safe(row.subtask) / f"{_safe(row.sample_id)}.mp4"


def vbench_names(rows: Sequence[Row]) -> dict[str, str]:
    """row key -> VBench file name ``<prompt>-<k>.mp4``, k counting a prompt's rows within its subtask in index
    order (stable while the index does not change)."""
    counts: dict[tuple[str, str], int] = {}
    names = {}
    for r in rows:
        stem = _safe(r.prompt, 180).rstrip(".")
        k = counts.get((r.subtask, stem), 0)
        counts[(r.subtask, stem)] = k + 1
        names[r.key] = f"{stem}-{k}.mp4"
    return names


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def finished(path: Path, frames: int, height: int, width: int) -> bool:
    """Whether a generated video is there, readable and of the requested size."""
    from vdot_jax.data import video_io

    if not path.exists():
        return False
    try:
        info = video_io.probe_video(path)
        return (info.num_frames, info.height, info.width) == (frames, height, width)
    except ValueError:
        return False


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Settings:
    frames: int = 81
    height: int = 480
    width: int = 832
    steps: int = 4
    guide_scale: float = 1.0
    shift: float = 16.0
    solver: str = "unipc"
    seed: int = 0
    negative_prompt: str = ""
    fps: float = 16.0
    reference_order: str = "release"
    model: str = ""  # what identifies the model (paths and their modification times); part of the reuse key

    def generation_key(self) -> str:
        """A digest of everything that determines a generated video: a video is reused only under the same key."""
        d = dataclasses.asdict(self)
        d.pop("fps")  # playback speed only
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _settings_file(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def reusable(path: Path, s: Settings) -> bool:
    """A video generated earlier with the very same settings and model (its sidecar JSON says so), intact."""
    try:
        saved = json.loads(_settings_file(path).read_text()).get("generation_key")
    except (OSError, ValueError, AttributeError):
        return False
    return saved == s.generation_key() and finished(path, s.frames, s.height, s.width)


def _vcu(row: Row, s: Settings):
    from vdot_jax import conditions as C

    return C.read_task_inputs(row.src_video, row.src_mask, [str(p) for p in row.refs] or None,
                              num_frames=s.frames, height=s.height, width=s.width, task=row.subtask)


def _sample(row: Row, path: Path, vcu):
    from vdot_jax import conditions as C
    from vdot_jax.data import video_io
    from vdot_jax.eval.video_metrics import Sample

    frames = np.clip(np.rint(video_io.read_video(path, normalize=False)), 0, 255).astype(np.uint8)
    source = mask = None
    if row.src_video is not None:
        source = C.frames_from_video(vcu.frames[0])
        mask = np.asarray(vcu.masks[0, 0], np.float32)
    return Sample(frames, source, mask, row.route.family)


def _finite(v):
    return v if v is None or math.isfinite(v) else None


def run_benchmark(index, root, out, *, load_pipeline: Callable[[], object], settings: Settings | None = None,
                  metrics: Sequence[str] | None = None, subtasks: Sequence[str] | None = None,
                  limit: int | None = None, batch_size: int = 1, log: Callable[[str], None] = print) -> dict:
    """Generate, save and score every row; returns the table (also written as table.json / table.md).

    ``load_pipeline`` is called once, and only if some row needs generating. ``metrics`` names registry entries
    (default: all); ``subtasks`` keeps only those rows; ``limit`` caps the rows per subtask; ``batch_size`` videos
    are sampled per program call (``vdot generate --batch``'s sampler: rows with as many reference images
    together, each with the seed's own noise, so a row's video does not depend on its batch but for float
    rounding).
    """
    s = settings or Settings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, problems = select_rows(index, root, subtasks, limit)
    per_video, batch, skipped_metrics = choose_metrics(metrics)
    results_file = out / "results.jsonl"
    previous = _previous_records(results_file)
    names = vbench_names(rows)
    pipe = _LazyPipeline(load_pipeline, log)
    records = []
    t_start = time.perf_counter()
    generated = _generate_rows(rows, out, s, pipe, batch_size, log)
    for i, row in enumerate(rows, 1):
        rec = _run_row(row, out, s, generated.get(row.key), names[row.key], previous.get(row.key, {}), per_video,
                       batch)
        log(f"[{i}/{len(rows)}] {row.key}: {rec['status']}"
            + (f" ({rec['reason']})" if "reason" in rec else "")
            + (f" in {rec['seconds']:.1f} s" if "seconds" in rec else ""))
        records.append(rec)
    for m in batch:
        _batch_metric(m, records, out, skipped_metrics, log)
    _write_vbench_indexes(records, out)
    tmp = out / ".results.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    os.replace(tmp, results_file)
    table = make_table(records, per_video + batch, skipped_metrics, problems, s)
    table["seconds"] = time.perf_counter() - t_start
    (out / "table.json").write_text(json.dumps(table, indent=2, ensure_ascii=False))
    (out / "table.md").write_text(table_markdown(table))
    if not any(r["status"] in ("generated", "reused") for r in records):
        bad = next((r for r in records if r.get("reason")), None)
        raise BenchmarkError(f"no row of {index} could be evaluated ({len(records)} skipped or failed"
                             + (f"; e.g. {bad['key']}: {bad['reason']}" if bad else "") + f"); see {results_file}")
    return table


def select_rows(index, root, subtasks: Sequence[str] | None, limit: int | None) -> tuple[list[Row], list[dict]]:
    """The index's usable rows of ``subtasks`` (all when None), at most ``limit`` per subtask, and its malformed
    lines; no row left is an error."""
    rows, problems = read_index(index, root)
    if subtasks:
        wanted = {normalize(t) for t in subtasks}
        rows = [r for r in rows if normalize(r.subtask) in wanted]
    if limit:
        per: dict[str, int] = {}
        kept = []
        for r in rows:
            per[r.subtask] = per.get(r.subtask, 0) + 1
            if per[r.subtask] <= limit:
                kept.append(r)
        rows = kept
    if not rows:
        first = f" (line {problems[0]['line']}: {problems[0]['reason']})" if problems else ""
        raise BenchmarkError(f"benchmark index {index} has no usable rows{' for these --subtasks' if subtasks else ''}"
                             f": {len(problems)} malformed line(s){first}")
    return rows, problems


def choose_metrics(metrics: Sequence[str] | None) -> tuple[list[str], list[str], dict]:
    """(per-video metrics, batch metrics, {unavailable metric: why}) of the registry entries ``metrics`` (None:
    all); an unknown name is an error."""
    from vdot_jax.eval.video_metrics import REGISTRY

    chosen = list(REGISTRY) if metrics is None else list(metrics)
    unknown = [m for m in chosen if m not in REGISTRY]
    if unknown:
        raise BenchmarkError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    skipped = {m: REGISTRY[m].available() for m in chosen if REGISTRY[m].available()}
    per_video = [m for m in chosen if m not in skipped and REGISTRY[m].compute is not None]
    batch = [m for m in chosen if m not in skipped and REGISTRY[m].compute_batch is not None]
    return per_video, batch, skipped


def _previous_records(results_file: Path) -> dict:
    """key -> record of an earlier run's results.jsonl (unreadable lines ignored)."""
    previous = {}
    if results_file.exists():
        for line in results_file.read_text().splitlines():
            try:
                rec = json.loads(line)
                previous[rec["key"]] = rec
            except (ValueError, KeyError):
                continue
    return previous


class _LazyPipeline:
    """The pipeline, loaded when the first row needs generating (a fully reused run never loads the model)."""

    def __init__(self, load: Callable[[], object], log: Callable[[str], None]):
        self._load, self._log, self._pipe = load, log, None

    def get(self):
        if self._pipe is None:
            self._log("loading the model")
            self._pipe = self._load()
        return self._pipe


def _generate_rows(rows: Sequence[Row], out: Path, s: Settings, pipe: _LazyPipeline, batch_size: int,
                   log: Callable[[str], None]) -> dict:
    """Generate every usable row whose video is not reusable, ``batch_size`` at a time: {row key: its status
    record (generated with timings, or failed with a reason)}. Each video is written whole or not at all, with
    its settings sidecar."""
    from vdot_jax.sampling.batch import sample_vcus

    groups: dict[int, list[Row]] = {}  # one program per number of reference images (the settings are shared)
    for row in rows:
        if check_row(row) is None and not reusable(video_path(out, row), s):
            groups.setdefault(len(row.refs), []).append(row)
    done = {}
    for group in groups.values():
        for start in range(0, len(group), batch_size):
            chunk, vcus = [], []
            for row in group[start:start + batch_size]:
                try:
                    vcus.append(_vcu(row, s))
                    chunk.append(row)
                except ValueError:
                    continue  # reported by _run_row, which reads it again
            if not chunk:
                continue
            t0 = time.perf_counter()
            try:
                result = sample_vcus(pipe.get(), [r.prompt for r in chunk], [s.negative_prompt] * len(chunk), vcus,
                                     [s.seed] * len(chunk), batch_size, steps=s.steps, guide_scale=s.guide_scale,
                                     shift=s.shift, solver=s.solver, reference_order=s.reference_order)
            except ValueError as e:
                done.update({r.key: {"status": "failed", "reason": str(e)} for r in chunk})
                continue
            share = 1.0 / len(chunk)
            for i, row in enumerate(chunk):
                _write_video(video_path(out, row), result.frames(i), s)
                done[row.key] = dict(status="generated", seconds=(time.perf_counter() - t0) * share,
                                     denoise_seconds=result.timings.get("denoise", 0.0) * share,
                                     compile_seconds=result.timings.get("compile", 0.0) * share)
    return done


def _write_video(path: Path, frames, s: Settings) -> None:
    from vdot_jax.data.video_io import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.mp4")
    write_video(tmp, frames, fps=s.fps)
    os.replace(tmp, path)
    _settings_file(path).write_text(json.dumps({"generation_key": s.generation_key(),
                                                "settings": dataclasses.asdict(s)}, ensure_ascii=False))


def _run_row(row: Row, out: Path, s: Settings, generated: dict | None, vbench_name: str, old: dict,
             per_video: Sequence[str], batch: Sequence[str]) -> dict:
    """One row's record: skipped or failed (with a reason), or generated (``generated``, by ``_generate_rows``) /
    reused, linked into the VBench folder and scored with the per-video metrics (values of an unchanged file are
    reused from ``old``)."""
    rec = {"key": row.key, "line": row.line, "subtask": row.subtask, "sample_id": row.sample_id,
           "family": row.route.family, "routed_by_files": row.routed_by_files, "prompt": row.prompt}
    reason = check_row(row)
    if reason is not None:
        return {**rec, "status": "skipped", "reason": reason}
    path = video_path(out, row)
    rec["video"] = str(path.relative_to(out))
    try:
        vcu = _vcu(row, s)
    except ValueError as e:
        return {**rec, "status": "failed", "reason": f"inputs unreadable: {e}"}
    if generated is not None:
        rec.update(generated)
        if generated["status"] == "failed":
            return rec
    elif reusable(path, s):
        rec["status"] = "reused"
    else:  # not generated though it needed to be: its inputs could not be read when its batch was made
        return {**rec, "status": "failed", "reason": "not generated"}
    _link(path, out / "vbench" / _safe(row.subtask) / vbench_name)
    rec["vbench_video"] = str(Path("vbench") / _safe(row.subtask) / vbench_name)
    st = path.stat()
    stamp = [st.st_size, st.st_mtime_ns]
    cached = old.get("metrics", {}) if old.get("stamp") == stamp else {}
    rec.update(stamp=stamp, metrics=_row_metrics(row, path, vcu, cached, per_video, batch))
    return rec


def _row_metrics(row: Row, path: Path, vcu, cached: dict, per_video: Sequence[str], batch: Sequence[str]) -> dict:
    """The per-video metrics of one video (computing only those ``cached`` lacks) and the cached batch ones."""
    from vdot_jax.eval.video_metrics import REGISTRY

    values = {m: cached[m] for m in per_video if m in cached}
    if len(values) < len(per_video):
        sample = _sample(row, path, vcu)
        for m in per_video:
            if m not in values:
                values[m] = _finite(REGISTRY[m].compute(sample))
    for m in batch:  # batch metrics from an earlier run are kept while the file is unchanged
        if m in cached:
            values[m] = cached[m]
    return values


def _batch_metric(m: str, records: list[dict], out: Path, skipped_metrics: dict, log) -> None:
    """A batch metric (VBench dimension): one call per subtask folder, for the videos still lacking the value."""
    from vdot_jax.eval.video_metrics import REGISTRY

    by_subtask: dict[str, list[dict]] = {}
    for rec in records:
        if "metrics" in rec and rec["metrics"].get(m) is None:
            by_subtask.setdefault(rec["subtask"], []).append(rec)
    for subtask, recs in by_subtask.items():
        folder = out / "vbench" / _safe(subtask)
        try:
            got = REGISTRY[m].compute_batch(folder, [out / r["vbench_video"] for r in recs])
        except Exception as e:  # noqa: BLE001 - an external scorer failing must not lose the run
            skipped_metrics[m] = f"failed on {subtask}: {e}"
            log(f"metric {m} failed on {subtask}: {e}")
            continue
        for r in recs:
            r["metrics"][m] = got.get(Path(r["vbench_video"]).name)


def _write_vbench_indexes(records: list[dict], out: Path) -> None:
    """vbench/<subtask>/index.json: file name -> sample id and full prompt."""
    for subtask in {r["subtask"] for r in records}:
        listed = {Path(r["vbench_video"]).name: {"sample_id": r["sample_id"], "prompt": r["prompt"]}
                  for r in records if r["subtask"] == subtask and "vbench_video" in r}
        if listed:
            (out / "vbench" / _safe(subtask) / "index.json").write_text(
                json.dumps(listed, indent=2, ensure_ascii=False))


# ----------------------------------------------------------------------------- the table


def make_table(records: list[dict], metrics: Sequence[str], skipped_metrics: dict, problems: list[dict],
               settings: Settings) -> dict:
    rows: dict[str, dict] = {}
    for group in sorted({r["subtask"] for r in records}) + ["all"]:
        recs = [r for r in records if group == "all" or r["subtask"] == group]
        scored = [r for r in recs if "metrics" in r]
        entry = {
            "family": recs[0]["family"] if group != "all" else "",
            "rows": len(recs),
            "videos": len(scored),
            "generated": sum(r["status"] == "generated" for r in recs),
            "reused": sum(r["status"] == "reused" for r in recs),
            "skipped": sum(r["status"] == "skipped" for r in recs),
            "failed": sum(r["status"] == "failed" for r in recs),
        }
        secs = [r["seconds"] for r in recs if "seconds" in r]
        entry["seconds_per_video"] = float(np.mean(secs)) if secs else None
        for m in metrics:
            vals = [r["metrics"][m] for r in scored if r["metrics"].get(m) is not None]
            entry[m] = float(np.mean(vals)) if vals else None
        rows[group] = entry
    unrouted = sorted({r["subtask"] for r in records if r.get("routed_by_files")})
    return {
        "settings": dataclasses.asdict(settings),
        "metrics": list(metrics),
        "skipped_metrics": skipped_metrics,
        "subtasks": rows,
        "skipped_rows": [{"key": r["key"], "line": r["line"], "status": r["status"], "reason": r["reason"]}
                         for r in records if r["status"] in ("skipped", "failed")],
        "index_problems": problems,
        "routed_by_files": unrouted,
    }


def table_markdown(table: dict) -> str:
    from vdot_jax.eval.report import markdown_table
    from vdot_jax.eval.video_metrics import REGISTRY

    s = table["settings"]
    cols = [("family", "family", "s"), ("videos", "videos", "d"), ("generated", "generated", "d"),
            ("reused", "reused", "d"), ("skipped", "skipped", "d"), ("failed", "failed", "d"),
            ("seconds_per_video", "s/video", ".2f")]
    for m in table["metrics"]:
        arrow = "" if REGISTRY.get(m) is None else (" ↑" if REGISTRY[m].higher_is_better else " ↓")
        cols.append((m, m + arrow, ".4f"))
    body = {k: {c: ("" if c == "family" and v[c] is None else v[c]) for c in v} for k, v in table["subtasks"].items()}
    lines = [f"# Benchmark: {s['frames']} frames at {s['height']}x{s['width']}, {s['steps']} {s['solver']} steps, "
             f"shift {s['shift']:g}, guide scale {s['guide_scale']:g}, seed {s['seed']}", "",
             markdown_table(body, cols), ""]
    if table["skipped_metrics"]:
        lines += ["## Metrics not computed", ""] + [f"- {m}: {why}" for m, why in table["skipped_metrics"].items()]
        lines.append("")
    if table["skipped_rows"]:
        lines += ["## Rows not generated", ""] + [f"- line {r['line']} {r['key']}: {r['status']}, {r['reason']}"
                                                  for r in table["skipped_rows"]]
        lines.append("")
    if table["index_problems"]:
        lines += ["## Index lines not read", ""] + [f"- line {p['line']}: {p['reason']}"
                                                    for p in table["index_problems"]]
        lines.append("")
    if table["routed_by_files"]:
        lines += ["## Subtasks routed by their files (unknown names)", "",
                  ", ".join(table["routed_by_files"]), ""]
    return "\n".join(lines)
