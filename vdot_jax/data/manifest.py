"""Training manifests: one row per training sample, as CSV (with a header) or JSONL.

Columns (the VACE/VDOT release's names, plus the ground truth the GAN term needs)::

    task            task name: t2v, r2v, depth, pose, inpaint, outpaint, first_frame, ... (free text, logged)
    src_video       the condition video (control video, or the video to edit with grey 127 = missing); optional
    src_mask        mask video or image for src_video (white = generate); optional
    src_ref_images  reference images: a JSON list, or one comma-separated string; optional
    caption         the prompt
    video           the ground-truth video (the latent the GAN term calls real); required
    boxes           a raw row's region: x1,y1,x2,y2 in source pixels (one box, or one per source frame separated by
                    ';'), or a keyframe track FRAME:x1,y1,x2,y2;FRAME:...; optional
    mask            a raw row's region: a mask video or image of the video's size (white = the region); optional

A **raw row** has no src_video and no src_ref_images: the pipeline derives its task's inputs from ``video`` on the
fly (``vdot_jax.conditions.derive``), the task drawn from ``config.data.raw_task_mix`` when the row names none
(``task_given`` False; with an empty mix such a row is t2v, as before). ``boxes`` / ``mask`` are for raw rows only.

Optional measurements (``vdot data`` writes them): ``frames``, ``fps``, ``height``, ``width`` of ``video``; with
``data.buckets`` they place the row in a resolution/length bucket without opening the file (a row without them is
probed). Non-numeric values count as absent.

Accepted aliases: ``subtask`` for task (UVCBench), ``prompt`` / ``en_prompt`` for caption, ``gt_video`` /
``target_video`` for video. Relative paths are relative to the manifest's folder. Empty cells mean "none".
Rows are checked for form here (columns present, a caption and a video); whether the files can be read is
the pipeline's business (a bad file skips the sample with a warning, it does not stop reading the manifest).

    rows = read_manifest("train.jsonl")
    write_manifest(rows, "train.csv")
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from etils import epath

from vdot_jax.errors import VdotError, read_jsonl, read_utf8

COLUMNS = ("task", "src_video", "src_mask", "src_ref_images", "caption", "video", "boxes", "mask")
ALIASES = {"subtask": "task", "prompt": "caption", "en_prompt": "caption", "gt_video": "video",
           "target_video": "video"}


class ManifestError(VdotError, ValueError):
    """A manifest that cannot be used (the message names the file and the row)."""


@dataclass
class ManifestRow:
    caption: str
    video: str
    task: str = "t2v"
    src_video: str | None = None
    src_mask: str | None = None
    src_ref_images: list[str] = field(default_factory=list)
    boxes: str | None = None  # a raw row's region (the text of the boxes column)
    mask: str | None = None  # a raw row's region (a mask file)
    task_given: bool = True  # False: the task column was empty (a raw row then draws one from the mix)
    size: tuple | None = None  # (frames, fps, height, width) of ``video`` when the row gives all four
    index: int = 0  # position in the manifest (0-based)

    @property
    def raw(self) -> bool:
        """No condition files: the task's inputs are derived from ``video`` (``conditions.derive``)."""
        return self.src_video is None and not self.src_ref_images

    @property
    def num_refs(self) -> int:
        return len(self.src_ref_images)

    def files(self) -> list[str]:
        return [p for p in (self.video, self.src_video, self.src_mask, self.mask, *self.src_ref_images) if p]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("index")
        d.pop("size")
        if not d.pop("task_given"):
            d["task"] = None
        return d


def _refs(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v]
    s = str(value).strip()
    if not s:
        return []
    if s.startswith("["):
        try:
            return [str(v) for v in json.loads(s) if v]
        except ValueError:
            pass
    return [p.strip() for p in s.split(",") if p.strip()]


def _resolve(path, base: Path) -> str | None:
    if path is None:
        return None
    s = str(path).strip()
    if not s:
        return None
    if "://" in s:  # a URI (gs://...) stays as written
        return s
    p = Path(os.path.expanduser(s))
    return str(p if p.is_absolute() else base / p)


def _size(raw: dict) -> tuple | None:
    try:
        f, fps, h, w = (float(raw[k]) for k in ("frames", "fps", "height", "width"))
        if min(f, fps, h, w) > 0 and all(v == int(v) for v in (f, h, w)):
            return int(f), fps, int(h), int(w)
    except (KeyError, TypeError, ValueError, OverflowError):
        pass
    return None


def _row(raw: dict, i: int, base: Path, src: Path) -> ManifestRow:
    d = {}
    for k, v in raw.items():
        if k is None:
            raise ManifestError(f"manifest {src} row {i + 1} has more cells than the header has columns.")
        key = ALIASES.get(k.strip(), k.strip())
        if key in COLUMNS and (key not in d or d[key] in (None, "")):
            d[key] = v
    caption = d.get("caption")
    if caption is None or not str(caption).strip():
        raise ManifestError(f"manifest {src} row {i + 1} has no caption (column 'caption', 'prompt' or 'en_prompt').")
    video = _resolve(d.get("video"), base)
    if video is None:
        raise ManifestError(f"manifest {src} row {i + 1} has no ground-truth video (column 'video'); the GAN term "
                            "needs it as real data.")
    src_video, src_mask = _resolve(d.get("src_video"), base), _resolve(d.get("src_mask"), base)
    if src_mask and not src_video:
        raise ManifestError(f"manifest {src} row {i + 1} has a src_mask but no src_video to apply it to.")
    refs = [_resolve(p, base) for p in _refs(d.get("src_ref_images"))]
    boxes = str(d.get("boxes")).strip() if d.get("boxes") not in (None, "") else None
    mask = _resolve(d.get("mask"), base)
    if (boxes or mask) and (src_video or refs):
        raise ManifestError(f"manifest {src} row {i + 1} has boxes/mask and condition files; boxes and mask mark a "
                            "region of a raw row's video (a row without src_video and src_ref_images).")
    if boxes and mask:
        raise ManifestError(f"manifest {src} row {i + 1} has boxes and a mask; give one region.")
    task = str(d.get("task") or "").strip()
    return ManifestRow(size=_size(raw), caption=str(caption), video=video, task=task or "t2v", src_video=src_video,
                       src_mask=src_mask, src_ref_images=refs, boxes=boxes, mask=mask, task_given=bool(task), index=i)


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """All rows of a CSV (header row) or JSONL manifest; raises ManifestError naming the file and row. The manifest
    may be on a bucket (gs://, read through etils.epath); its relative paths are then relative to its folder there."""
    p = epath.Path(path) if "://" in os.fspath(path) else Path(path)
    if not p.is_file():
        raise ManifestError(f"manifest {p} does not exist.")
    base = p.parent
    raws: list[dict] = []
    if p.suffix.lower() in (".jsonl", ".json"):
        raws = [obj for _, obj in read_jsonl(p, "manifest", ManifestError)]
    elif p.suffix.lower() in (".csv", ".tsv"):
        text = read_utf8(p, "manifest", ManifestError)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
        if not reader.fieldnames:
            raise ManifestError(f"manifest {p} is empty (a CSV manifest needs a header row).")
        names = {ALIASES.get(n.strip(), n.strip()) for n in reader.fieldnames if n}
        missing = [c for c in ("caption", "video") if c not in names]
        if missing:
            raise ManifestError(f"manifest {p} has no column {' or '.join(missing)} (columns: "
                                f"{', '.join(reader.fieldnames)}; expected {', '.join(COLUMNS)}).")
        raws = list(reader)
    else:
        raise ManifestError(f"manifest {p} must be .csv, .tsv or .jsonl.")
    rows = [_row(r, i, base, p) for i, r in enumerate(raws)]
    if not rows:
        raise ManifestError(f"manifest {p} has no rows.")
    return rows


def write_manifest(rows, path: str | os.PathLike) -> Path:
    """Write rows (ManifestRow or dicts with the columns) as CSV or JSONL, by the file's suffix."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    dicts = [r.to_dict() if isinstance(r, ManifestRow) else dict(r) for r in rows]
    if p.suffix.lower() == ".jsonl":
        p.write_text("".join(json.dumps({k: d.get(k) for k in COLUMNS if d.get(k) not in (None, "", [])}) + "\n"
                             for d in dicts))
    else:
        with p.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(COLUMNS))
            w.writeheader()
            for d in dicts:
                refs = d.get("src_ref_images") or []
                w.writerow({**{k: d.get(k) or "" for k in COLUMNS},
                            "src_ref_images": ",".join(refs) if isinstance(refs, (list, tuple)) else refs})
    return p
