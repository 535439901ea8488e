"""Many videos from a prompt file: the engine of ``vdot generate --batch rows.jsonl --out DIR``.

A row is one JSON object per line: ``prompt`` (required), and optionally ``negative_prompt``, ``seed``, ``out``
(the video's file name inside DIR; default ``<line number>.mp4``), the task inputs of ``vdot generate``
(``task``, ``src_video``, ``src_mask``, ``ref_images``, ``expand``, ``clip_frames``; relative paths are read from
the rows file's folder) and the settings ``frames``, ``height``, ``width``, ``steps``, ``guide_scale``, ``shift``,
``solver``, ``context_scale`` (defaults: the command's options).

Rows that share a program (settings, size and number of reference images) form a group; a group is sampled in
calls of ``batch_size`` videos -- ``data x fsdp`` of the mesh, so every device holds whole videos while
``context`` splits each video's tokens -- the last call padded with copies of its last row (outputs dropped), so
each group compiles ONE program. Text encoding and decoding run per call too. A row's video equals ``vdot
generate`` of that row alone: its noise is its own seed's draw of one video's shape.

Nothing is redone or lost: a video is written under a temporary name, read back, renamed, and only then its
record ``<name>.json`` (the row as sampled) is written; a re-run skips a row whose video and matching record
exist, and ``manifest.jsonl`` (every record, in row order) is re-made at the end. A bad row (missing file, wrong
size, bad value) is reported, listed in ``errors.jsonl`` and skipped. SIGTERM or Ctrl-C finishes the current call
and stops. Hosts share a file by ``shard=(k, n)``: process k takes the rows whose line number is k modulo n, on
its own devices, so no row is written by two processes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from vdot_jax.errors import VdotError, read_utf8

SETTINGS = ("frames", "height", "width", "steps", "guide_scale", "shift", "solver", "context_scale")
INPUTS = ("task", "src_video", "src_mask", "ref_images", "expand", "clip_frames")
FIELDS = frozenset(("prompt", "negative_prompt", "seed", "out") + SETTINGS + INPUTS)
MANIFEST, ERRORS = "manifest.jsonl", "errors.jsonl"
SEED_MAX = 2**32 - 1


class BatchError(VdotError, ValueError):
    """A rows file or output folder that cannot be used at all (one sentence, before any model is loaded)."""


class RowError(VdotError, ValueError):
    """One row that cannot be sampled; the others go on."""


@dataclasses.dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the rows file: the row's identity
    name: str  # output video file name inside the output folder
    prompt: str
    negative_prompt: str
    seed: int
    inputs: dict  # task_inputs keyword arguments (paths absolute)
    settings: dict  # SETTINGS

    @property
    def group(self) -> tuple:
        """Rows of one group share one compiled program and batch shape."""
        refs = self.inputs.get("ref_images") or ()
        return tuple(self.settings[k] for k in SETTINGS) + (len(refs),)

    def record(self) -> dict:
        """What was sampled, as written next to the video (and compared on a re-run)."""
        return dict(line=self.line, out=self.name, prompt=self.prompt, negative_prompt=self.negative_prompt,
                    seed=self.seed, **self.settings, **{k: v for k, v in self.inputs.items() if v is not None})


# ----------------------------------------------------------------------------- reading rows


def _number(line: int, key: str, v, *, integer: bool, low: float, low_ok: bool = False):
    kind = "an integer" if integer else "a number"
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise RowError(f"line {line}: {key} must be {kind}, got {v!r}")
    if not math.isfinite(v) or v < low or (v == low and not low_ok):
        raise RowError(f"line {line}: {key} must be {'>=' if low_ok else '>'} {low:g}, got {v!r}")
    return int(v) if integer else float(v)


def _row(line: int, obj, defaults: dict, base: Path) -> Row:
    if not isinstance(obj, dict):
        raise RowError(f"line {line}: a row must be a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - FIELDS)
    if unknown:
        raise RowError(f"line {line}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RowError(f"line {line}: prompt must be a non-empty string")
    neg = obj.get("negative_prompt", defaults.get("negative_prompt", ""))
    if not isinstance(neg, str):
        raise RowError(f"line {line}: negative_prompt must be a string")
    seed = _number(line, "seed", obj.get("seed", defaults.get("seed", 0)), integer=True, low=0, low_ok=True)
    if seed > SEED_MAX:
        raise RowError(f"line {line}: seed must be at most {SEED_MAX}, got {seed}")
    s = {k: obj.get(k, defaults.get(k)) for k in SETTINGS}
    for k in ("frames", "height", "width", "steps"):
        s[k] = _number(line, k, s[k], integer=True, low=0)
    s["shift"] = _number(line, "shift", s["shift"], integer=False, low=0)
    s["guide_scale"] = _number(line, "guide_scale", s["guide_scale"], integer=False, low=0, low_ok=True)
    s["context_scale"] = _number(line, "context_scale", s["context_scale"], integer=False, low=0, low_ok=True)
    if s["solver"] not in ("unipc", "euler"):
        raise RowError(f"line {line}: solver must be unipc or euler, got {s['solver']!r}")
    inputs = {k: obj.get(k) for k in INPUTS}
    for k in ("src_video", "src_mask"):
        if inputs[k] is not None:
            if not isinstance(inputs[k], str):
                raise RowError(f"line {line}: {k} must be a path string")
            inputs[k] = str(base / inputs[k])
    refs = inputs["ref_images"]
    if refs is not None:
        refs = [r for r in refs.split(",") if r] if isinstance(refs, str) else refs
        if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
            raise RowError(f"line {line}: ref_images must be a list of paths or a comma-separated string")
        inputs["ref_images"] = [str(base / r) for r in refs] or None
    if isinstance(inputs["expand"], list):
        inputs["expand"] = ",".join(str(x) for x in inputs["expand"])
    if inputs["clip_frames"] is not None:
        inputs["clip_frames"] = _number(line, "clip_frames", inputs["clip_frames"], integer=True, low=0)
    name = obj.get("out", f"{line:05d}.mp4")
    if (not isinstance(name, str) or Path(name).name != name or name.startswith(".")
            or Path(name).suffix.lower() != ".mp4" or name in (MANIFEST, ERRORS)):
        raise RowError(f"line {line}: out must be a file name ending in .mp4 inside the output folder (no folders, "
                       f"not hidden), got {name!r}")
    return Row(line, name, prompt, neg, seed, inputs, s)


def read_rows(path, defaults: dict) -> tuple[list[Row], list[tuple[int, str]]]:
    """(rows, [(line, error)]) of a rows file; blank lines are skipped. Two rows naming one output are an error
    of the file (BatchError): their videos would overwrite each other."""
    path = Path(path)
    text = read_utf8(path, "--batch", BatchError)
    base = path.resolve().parent
    rows, errors, names = [], [], {}
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                raise RowError(f"line {line}: not JSON ({e.msg} at column {e.colno})") from None
            row = _row(line, obj, defaults, base)
        except RowError as e:
            errors.append((line, str(e)))
            continue
        if row.name in names:
            raise BatchError(f"--batch {path}: lines {names[row.name]} and {line} both write {row.name}; give each "
                             "row its own out")
        names[row.name] = line
        rows.append(row)
    if not rows and not errors:
        raise BatchError(f"--batch {path} has no rows")
    return rows, errors


# ----------------------------------------------------------------------------- the output folder


def _record_path(out: Path, row: Row) -> Path:
    return out / (Path(row.name).stem + ".json")


def is_done(out: Path, row: Row) -> bool:
    """The row's video exists (non-empty) and its record says it was sampled with this row's values."""
    video, rec = out / row.name, _record_path(out, row)
    if not (video.is_file() and video.stat().st_size > 0 and rec.is_file()):
        return False
    try:
        return json.loads(rec.read_text()) == row.record()
    except (OSError, ValueError):
        return False


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hosts sharing the folder never share a temporary
    tmp.write_text(text)
    os.replace(tmp, path)


def write_video_atomic(path: Path, frames: np.ndarray, fps: float) -> None:
    """Write under a temporary name (``write_video`` reads it back and removes a bad file), then rename: a killed
    or failed write leaves no video under the final name."""
    from vdot_jax.data import video_io

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        video_io.write_video(tmp, frames, fps=fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_manifest(out: Path, rows: Sequence[Row]) -> int:
    """``manifest.jsonl``: the record of every row whose video is complete, in row order (every host may re-make
    it; it is derived from the records alone). Returns the number of records."""
    records = []
    for row in rows:
        if is_done(out, row):
            records.append(json.dumps(row.record(), sort_keys=True))
    _replace_text(out / MANIFEST, "".join(r + "\n" for r in records))
    return len(records)


def write_errors(path: Path, failed: Sequence[tuple[int, str]]) -> None:
    """This run's failed rows, one JSON object a line (an empty file when none failed)."""
    _replace_text(path, "".join(json.dumps(dict(line=line, error=msg)) + "\n" for line, msg in sorted(failed)))


# ----------------------------------------------------------------------------- stopping


class StopFlag:
    """SIGTERM and Ctrl-C set a flag checked between calls; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.signal: str | None = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


# ----------------------------------------------------------------------------- sampling


@dataclasses.dataclass
class Summary:
    written: list = dataclasses.field(default_factory=list)  # row lines
    skipped: list = dataclasses.field(default_factory=list)  # done before this run
    failed: list = dataclasses.field(default_factory=list)  # (line, message)
    calls: int = 0
    stopped: str | None = None  # the signal that stopped the run early
    pending: int = 0  # rows not sampled because of the stop

    def line(self, errors: Path) -> str:
        out = errors.parent
        parts = [f"{len(self.written)} written", f"{len(self.skipped)} already done", f"{len(self.failed)} failed"]
        tail = f" (see {errors})" if self.failed else ""
        stop = f"; stopped by {self.stopped} with {self.pending} left: run the same command again to go on" \
            if self.stopped else ""
        return f"{', '.join(parts)}{tail} in {self.calls} program call(s) -> {out}{stop}"


def plan_calls(rows: Iterable[Row], batch_size: int) -> list[list[Row]]:
    """Rows -> calls: grouped by program in first-seen order, ``batch_size`` rows a call (the last one short)."""
    groups: dict[tuple, list[Row]] = {}
    for row in rows:
        groups.setdefault(row.group, []).append(row)
    return [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]


def sample_vcus(pipe, prompts: Sequence[str], negative_prompts: Sequence[str], vcus: Sequence, seeds: Sequence[int],
                batch_size: int, *, steps: int, guide_scale: float, shift: float, solver: str = "unipc",
                context_scale: float = 1.0, reference_order: str = "release"):
    """One program call for videos of one shape (one-sample VCUs), each with its own seed's noise, padded to
    ``batch_size`` with copies of the last (their outputs dropped) so a group compiles one program; the
    GenerationResult holds ``batch_size`` videos, the first ``len(vcus)`` being these."""
    from vdot_jax import conditions as C

    pad = batch_size - len(vcus)
    prompts, negs = list(prompts) + [prompts[-1]] * pad, list(negative_prompts) + [negative_prompts[-1]] * pad
    vcus, seeds = list(vcus) + [vcus[-1]] * pad, list(seeds) + [seeds[-1]] * pad
    return pipe.generate(prompts, negative_prompt=negs, vcu=C.batch_vcus(vcus),
                         latents=np.concatenate([np.asarray(pipe.noise(v, seed)) for v, seed in zip(vcus, seeds)]),
                         steps=steps, guide_scale=guide_scale, shift=shift, solver=solver,
                         context_scale=context_scale, reference_order=reference_order, progress=False)


def sample_call(pipe, call: Sequence[Row], batch_size: int, reference_order: str = "release"):
    """One program call for rows of one group: (rows sampled, [(line, error)], GenerationResult or None). Rows
    whose inputs cannot be read fail alone."""
    from vdot_jax import conditions as C

    vcus, ok, failed = [], [], []
    for row in call:
        try:
            vcus.append(C.task_inputs(**row.inputs, **{k: row.settings[k] for k in ("frames", "height", "width")}))
            ok.append(row)
        except (VdotError, OSError) as e:
            failed.append((row.line, f"line {row.line}: {e}"))
    if not ok:
        return ok, failed, None
    s = ok[0].settings
    try:
        result = sample_vcus(pipe, [r.prompt for r in ok], [r.negative_prompt for r in ok], vcus,
                             [r.seed for r in ok], batch_size, steps=s["steps"], guide_scale=s["guide_scale"],
                             shift=s["shift"], solver=s["solver"], context_scale=s["context_scale"],
                             reference_order=reference_order)
    except VdotError as e:  # a setting this model cannot sample (e.g. a VACE task on a text-to-video model)
        return [], failed + [(r.line, f"line {r.line}: {e}") for r in ok], None
    return ok, failed, result


def generate_rows(pipe, rows: Sequence[Row], out, *, batch_size: int = 1, fps: float = 16,
                  reference_order: str = "release", log: Callable[[str], None] | None = None,
                  stop: StopFlag | None = None) -> Summary:
    """Sample every row not done yet into ``out`` (see the module docstring); returns what happened."""
    log = log or (lambda msg: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = Summary()
    todo = []
    for row in rows:
        if is_done(out, row):
            summary.skipped.append(row.line)
        else:
            todo.append(row)
    calls = plan_calls(todo, batch_size)
    log(f"{len(todo)} of {len(rows)} row(s) to sample in {len(calls)} call(s) of up to {batch_size}")
    for call in calls:
        if stop is not None and stop.signal:
            break
        ok, failed, result = sample_call(pipe, call, batch_size, reference_order)
        summary.failed += failed
        if result is None:
            continue
        summary.calls += 1
        for i, row in enumerate(ok):
            write_video_atomic(out / row.name, result.frames(i), fps)
            _replace_text(_record_path(out, row), json.dumps(row.record(), sort_keys=True))
            summary.written.append(row.line)
        log(f"call {summary.calls}/{len(calls)}: wrote {', '.join(r.name for r in ok)} "
            f"(denoise {result.timings['denoise']:.2f} s, compile {result.timings['compile']:.2f} s)")
    summary.pending = len(todo) - len(summary.written) - len(summary.failed)
    if stop is not None and stop.signal and summary.pending:
        summary.stopped = stop.signal
    return summary
