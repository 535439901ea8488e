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
