"""``vdot precompute``: a manifest -> ArrayRecord shards of encoded samples (the normal path for large runs).

    summary = precompute(config, "data/pre", rows_per_shard=256)

Writes, under OUT::

    shard-00000-of-00012.array_record        one record per readable row: npz bytes of latents [z, R+f, h, w],
                                             context [Cc, R+f, h, w] (VACE), text [n, D] (up to the last
                                             non-zero token; padded back to text_len on read), task, caption
    shard-00000-of-00012.array_record.json   that shard's record list (row, num_refs, task, bucket) and its bad rows;
                                             written last, so its presence marks the shard finished
    neg_text.npy                             the negative prompt's embedding [L, D]
    precomputed.json                         the index the trainer reads: format, spec (sizes, encoder, ...),
                                             shard files, records in order, bad rows

Encoding is exactly the trainer's raw path (``vdot_jax.data.pipeline.Encoder``); unreadable rows are skipped with
a warning naming the file and listed in the index. Resumable: a rerun skips every finished shard and redoes a
half-written one. With several processes, shard s is written by process s mod P; process 0 writes the index once
every shard is finished (after a barrier).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

from vdot_jax.data.manifest import read_manifest
from vdot_jax.data.pipeline import (PRECOMPUTED_FORMAT, PRECOMPUTED_INDEX, DataError, ManifestSource, SampleError,
                                    data_spec, encode_record, make_encoder)
from vdot_jax.errors import is_disk_full
from vdot_jax.sources import model_arch


def _shard_name(s: int, n: int) -> str:
    return f"shard-{s:05d}-of-{n:05d}.array_record"


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity(config, *, with_context: bool, rows: int, rows_per_shard: int) -> dict:
    """What the shards in a folder were made from: the data settings (``data_spec``), the manifest's content hash,
    the negative prompt and the models that encode (teacher, VAE, text encoder paths). A rerun reuses finished
    shards only when all of it is the same (``check_identity``)."""
    m, d = config.model, config.data
    return {**data_spec(config, with_context), "rows": rows, "rows_per_shard": rows_per_shard,
            "manifest_sha256": _sha256(d.manifest),
            "negative_prompt_sha256": hashlib.sha256(str(d.negative_prompt).encode()).hexdigest(),
            "model": {k: str(Path(v).resolve()) if v else "" for k, v in (("teacher", m.teacher), ("vae", m.vae),
                                                                          ("text_encoder", m.text_encoder))}}


def check_identity(out, ident: dict) -> None:
    """Refuse (DataError, one line) an ``out`` holding shards made from other inputs than ``ident``."""
    spec_file = Path(out) / "spec.json"
    if not spec_file.exists():
        return
    try:
        have = json.loads(spec_file.read_text())
    except ValueError:
        have = {}
    if have == ident:
        return
    if have.get("manifest_sha256") != ident["manifest_sha256"]:
        why = "another manifest (its content hash differs)"
    elif have.get("model") != ident["model"]:
        why = f"another model ({have.get('model')} vs {ident['model']})"
    else:
        why = "other settings: " + ", ".join(sorted(k for k in set(have) | set(ident) if have.get(k) != ident.get(k)))
    raise DataError(f"{out} holds precomputed data made from {why} ({spec_file}); use another --out, or remove "
                    "the folder to start over. Nothing was mixed in.")


def precompute(config, out, *, rows_per_shard: int = 256, progress: bool = True, with_context: bool | None = None,
               log=None) -> dict:
    """Encode ``config.data.manifest`` into ``out`` (module docstring); returns a summary."""
    from array_record.python.array_record_module import ArrayRecordWriter
    from tqdm import tqdm

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(config.data.manifest)
    if with_context is None:
        with_context = model_arch(config).is_vace
    n_shards = max(1, math.ceil(len(rows) / rows_per_shard))
    spec = data_spec(config, with_context)
    ident = identity(config, with_context=with_context, rows=len(rows), rows_per_shard=rows_per_shard)
    # before the encoders are loaded: data made from other inputs is refused, never mixed or overwritten
    check_identity(out, ident)
    encoder = make_encoder(config, with_context=with_context)
    source = ManifestSource(config, encoder, rows)
    pid, nproc = jax.process_index(), jax.process_count()
    if pid == 0:
        (out / "spec.json").write_text(json.dumps(ident, indent=2))
    mine = [s for s in range(n_shards) if s % nproc == pid]
    todo = [s for s in mine if not (out / (_shard_name(s, n_shards) + ".json")).exists()]
    skipped_shards = len(mine) - len(todo)
    if skipped_shards:
        log(f"precompute: {skipped_shards} of {len(mine)} shards already finished, skipping them")
    bar = tqdm(total=sum(min(rows_per_shard, len(rows) - s * rows_per_shard) for s in todo), desc="precompute",
               unit="video", disable=None if progress else True, mininterval=1.0)
    written = bad = 0
    for s in todo:
        name = _shard_name(s, n_shards)
        tmp = out / (name + ".tmp")
        if tmp.exists():
            tmp.unlink()
        writer = ArrayRecordWriter(str(tmp), "group_size:1")
        records, bad_rows = [], []
        for i in range(s * rows_per_shard, min((s + 1) * rows_per_shard, len(rows))):
            try:
                sample = source.load(i)
            except SampleError as e:
                bad_rows.append({"row": i, "error": str(e)})
                bar.write(f"warning: skipped an unreadable sample: {e}", file=sys.stderr)
                bad += 1
            else:
                writer.write(encode_record(sample))
                records.append({"row": i, "num_refs": rows[i].num_refs, "task": rows[i].task,
                                **({"bucket": source.bucket[i]} if source.buckets else {})})
                written += 1
            bar.update(1)
        writer.close()
        os.replace(tmp, out / name)
        meta_tmp = out / (name + ".json.tmp")
        meta_tmp.write_text(json.dumps({"records": records, "bad": bad_rows}))
        os.replace(meta_tmp, out / (name + ".json"))  # last: marks the shard finished
    bar.close()
    if nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vdot_precompute_shards")
    summary = {"out": str(out), "shards": n_shards, "written_now": written, "bad_now": bad,
               "skipped_shards": skipped_shards, "wall_s": time.time() - t0}
    if pid == 0:
        np.save(out / "neg_text.npy", encoder.encode_text([config.data.negative_prompt])[0])
        records, bad_all, shards = [], [], []
        for s in range(n_shards):
            name = _shard_name(s, n_shards)
            meta = json.loads((out / (name + ".json")).read_text())
            if meta["records"]:
                shards.append(name)
                records += meta["records"]
            bad_all += meta["bad"]
        index = {"format": PRECOMPUTED_FORMAT, "spec": spec, "manifest": str(config.data.manifest),
                 "shards": shards, "records": records, "bad": bad_all, "neg_text": "neg_text.npy"}
        tmp = out / (PRECOMPUTED_INDEX + ".tmp")
        tmp.write_text(json.dumps(index))
        os.replace(tmp, out / PRECOMPUTED_INDEX)
        summary.update(records=len(records), bad=len(bad_all))
        log(f"precompute: {len(records)} samples in {len(shards)} shards at {out} ({len(bad_all)} unreadable rows "
            f"skipped; {written} encoded now in {summary['wall_s']:.1f} s)")
    return summary


# ----------------------------------------------------------------------------- annotation (--annotate)

ANNOTATED_MANIFEST, ANNOTATE_SPEC = "annotated.jsonl", "annotate.json"


def _condition_name(i: int, task: str) -> str:
    return f"conditions/row-{i:06d}.{task}.mp4"


def annotation_targets(rows, weights: dict) -> dict[int, str]:
    """Row index -> annotator task, for the raw rows (no condition files) whose task needs an annotator. A
    ``DataError`` naming the rows when a task of theirs has no ``--annotate TASK=PATH``, or when a task given is
    not an annotator's."""
    from vdot_jax.conditions.annotators import ANNOTATOR_TASKS

    unknown = sorted(set(weights) - set(ANNOTATOR_TASKS))
    if unknown:
        raise DataError(f"--annotate {unknown[0]}=...: no annotator for task {unknown[0]}; annotator tasks are "
                        f"{', '.join(ANNOTATOR_TASKS)}.")
    targets = {r.index: r.task for r in rows if r.raw and r.task_given and r.task in ANNOTATOR_TASKS}
    for task in sorted(set(targets.values()) - set(weights)):
        which = [i + 1 for i, t in targets.items() if t == task]
        raise DataError(f"manifest rows {', '.join(map(str, which[:5]))}{' ...' if len(which) > 5 else ''} are task "
                        f"{task} without condition files: give --annotate {task}=WEIGHTS.")
    return targets


def annotate_rows(config, out, weights: dict, targets: dict[int, str], *, pid: int = 0, nproc: int = 1,
                  log=None) -> dict:
    """This process's share (row i when i mod nproc == pid) of ``targets``: each row's ground-truth video read at
    the config's frames and size, its annotator's control written to ``out/conditions/row-NNNNNN.TASK.mp4``
    (staged, then renamed, so a file there is finished). Finished rows are skipped (resumable); a row whose video
    cannot be read is skipped, its error kept beside it (``.bad.json``, retried by a rerun)."""
    from vdot_jax import conditions as C
    from vdot_jax.conditions import annotators as AN
    from vdot_jax.data import video_io

    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    d = config.data
    rows = read_manifest(d.manifest)
    n, h, w = int(d.num_frames), int(d.height), int(d.width)
    fps = float(d.fps) if d.fps else None
    (Path(out) / "conditions").mkdir(parents=True, exist_ok=True)
    mine = [i for i in sorted(targets) if i % nproc == pid]
    todo = [i for i in mine if not (Path(out) / _condition_name(i, targets[i])).exists()]
    models, done, bad = {}, 0, 0
    for i in todo:
        task = targets[i]
        dst = Path(out) / _condition_name(i, task)
        bad_file = dst.with_suffix(".bad.json")
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.mp4")
        try:
            AN.check_size(task, n, h, w)
            frames = video_io.read_video(rows[i].video, num_frames=n, size=(h, w), fps=fps, sampling=d.sampling)
            if task not in models:  # loaded once, at the first row that needs it
                models[task] = AN.load(task, weights[task])
            control = AN.annotate(models[task], C.video_from_frames(frames))
            # the rate only matters with data.fps set: without, the pipeline takes all num_frames frames as they are
            video_io.write_video(tmp, C.frames_from_video(control)[0], fps=fps or 16.0)
            os.replace(tmp, dst)
        except (video_io.VideoError, C.ConditionError, OSError, ValueError) as e:
            tmp.unlink(missing_ok=True)
            if is_disk_full(e):
                raise  # the machine, not the row
            bad_file.write_text(json.dumps({"row": i, "task": task, "error": " ".join(str(e).split())}))
            log(f"warning: skipped manifest row {i + 1} ({task}): {e}")
            bad += 1
        else:
            bad_file.unlink(missing_ok=True)
            done += 1
    return {"annotated_now": done, "bad_now": bad, "skipped_finished": len(mine) - len(todo)}


def finish_annotation(config, out, targets: dict[int, str]) -> dict:
    """Process 0, once every process has finished: ``out/annotated.jsonl``, the manifest with each annotated
    row's ``src_video`` set to its control (bad rows left out, other rows as they were) and ``out/annotate.json``
    (counts and the bad rows with their errors)."""
    from vdot_jax.data.manifest import write_manifest

    rows, kept, bad = read_manifest(config.data.manifest), [], []
    for r in rows:
        if r.index in targets:
            name = _condition_name(r.index, targets[r.index])
            if not (Path(out) / name).exists():
                bad_file = (Path(out) / name).with_suffix(".bad.json")
                bad.append(json.loads(bad_file.read_text()) if bad_file.exists() else
                           {"row": r.index, "task": targets[r.index], "error": "not annotated (a process stopped?)"})
                continue
            r.src_video = name  # relative to the manifest written in out
        kept.append(r)
    tmp = Path(out) / (ANNOTATED_MANIFEST + ".tmp.jsonl")
    write_manifest(kept, tmp)
    os.replace(tmp, Path(out) / ANNOTATED_MANIFEST)
    report = {"rows": len(rows), "annotated": len(targets) - len(bad), "passed_through": len(rows) - len(targets),
              "bad": bad}
    (Path(out) / "annotated_report.json").write_text(json.dumps(report, indent=1))
    return report


def check_annotation(config, out, weights: dict) -> tuple[dict[int, str], dict]:
    """Everything ``annotate`` refuses, before anything is read or written: rows without weights for their task,
    missing packages or weights, frames too small for a network, an ``out`` annotated with other settings.
    Returns the targets and the settings recorded in ``out/annotate.json``."""
    from vdot_jax.conditions import annotators as AN

    d = config.data
    targets = annotation_targets(read_manifest(d.manifest), weights)
    for task in sorted(set(targets.values())):
        AN.check(task, weights[task])
        AN.check_size(task, int(d.num_frames), int(d.height), int(d.width))
    spec = {"num_frames": int(d.num_frames), "height": int(d.height), "width": int(d.width),
            "fps": float(d.fps or 0), "sampling": d.sampling, "manifest_sha256": _sha256(d.manifest),
            "weights": {k: ",".join(str(Path(p).resolve()) for p in v.split(","))
                        for k, v in sorted(weights.items())}}
    spec_file = Path(out) / ANNOTATE_SPEC
    if spec_file.exists():
        have = json.loads(spec_file.read_text())
        if have != spec:
            why = ", ".join(sorted(k for k in set(have) | set(spec) if have.get(k) != spec.get(k)))
            raise DataError(f"{out} holds annotations made with other settings ({why}; {spec_file}); use another "
                            f"--out, or remove the folder to start over. Nothing was mixed in.")
    return targets, spec


def annotate(config, out, weights: dict, *, log=None) -> dict:
    """``vdot precompute --annotate``: every raw row whose task needs an annotator gets its control video, then
    ``out/annotated.jsonl`` lists all rows with those files (train on it, or ``vdot precompute`` it). Sharded as
    ``precompute`` is (row i by process i mod P, process 0 writes the manifest after a barrier); resumable."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    t0 = time.time()
    out = Path(out)
    targets, spec = check_annotation(config, out, weights)
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / ANNOTATE_SPEC
    pid, nproc = jax.process_index(), jax.process_count()
    if pid == 0:
        spec_file.write_text(json.dumps(spec, indent=1))
    summary = annotate_rows(config, out, weights, targets, pid=pid, nproc=nproc, log=log)
    if nproc > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("vdot_annotate_rows")
    if pid == 0:
        summary.update(finish_annotation(config, out, targets))
        log(f"annotate: {summary['annotated']} rows annotated, {len(summary['bad'])} unreadable skipped, "
            f"{summary['passed_through']} passed through, in {time.time() - t0:.1f} s; manifest "
            f"{out / ANNOTATED_MANIFEST}")
    return summary
