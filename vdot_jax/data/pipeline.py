"""The training data pipeline (grain): samples -> encoded arrays -> per-host batches with a micro-batch axis.

    layout = Layout(accumulation=3, batch=4, host_rows=(0, 1, 2, 3))   # which batch rows this host loads
    pipe = DataPipeline(config, layout, with_context=True)              # or start_step=, state= to resume
    arrays, info = next(pipe)   # arrays: latents [A,b,C,F,h,w], context [A,b,Cc,F,h,w], text/neg_text [A,b,L,D]
    state = pipe.get_state()    # JSON-able; saved in every checkpoint

**Samples are a function of (step, slot).** Step k's global batch has A x B slots (micro-batch a, row b: slot
``a * B + b``); each host loads only the rows its devices hold (``host_rows``, any set in any order), so the
global batch is the same for any number of hosts and any mesh. Sources:

* ``toy`` -- the procedural world (``vdot_jax.data.toy_world``) rendered on the fly: step k draws one task from
  the configured mix (``default_rng([seed, k])``; one task per step, so shapes are fixed within a step), slot j
  renders from ``default_rng([seed, k, j])``; encoded in numpy with ``ToyTextEncoder`` and the toy VAE through
  ``vdot_jax.conditions.vace_context``, exactly as the demo encodes.
* ``manifest`` -- rows of a CSV/JSONL manifest (``vdot_jax.data.manifest``), decoded with imageio (resize to cover,
  centre crop, frames re-timed to ``fps`` and sampled), VCU built by ``conditions.read_task_inputs``, then encoded
  by the configured encoder (``toy``, or ``wan``: the Wan VAE and umT5 on the local device). A raw row (only
  ``video`` and ``caption``, maybe ``task`` / ``boxes`` / ``mask``) gets its task's inputs derived from the decoded
  video (``conditions.derive``): the task (unless the row names one) from ``data.raw_task_mix`` and its parameters
  from ``default_rng([seed, step, slot])`` -- a function of the global slot, so every host and every resume sees
  the same batch. Raw rows of tasks that need an annotator model are refused before training (``check_raw_rows``).
* ``precomputed`` -- ArrayRecord shards written by ``vdot precompute`` (same arrays, no decoding at train time).

**Order.** Rows are grouped by their number of reference images (the latent frame count, hence the compiled
shape, depends on it); every epoch each group is shuffled (``default_rng([seed, epoch, R])``) and cut into
steps of A x B rows (the last step of a group wraps around), and the steps of all groups are shuffled together
(``default_rng([seed, epoch])``). Deterministic for a seed; resumable at any step.

**Buckets.** With ``data.buckets`` ("FxHxW,...", e.g. "81x480x832,81x832x480,49x480x832"; a config file sets it,
``config.data.buckets = ...``) each manifest row is decoded at its bucket's size instead of data.num_frames x
height x width: the bucket nearest its aspect ratio among those it has the frames for (at data.fps), then the
longest (``assign_bucket``; the size from the row's ``frames``/``fps``/``height``/``width`` columns, which
``vdot data`` writes, else probed once at start). Groups are then (reference count, bucket) (seeded
``[seed, epoch, R, bucket]``), so every step's global batch has one shape -- no padding -- and the order is a
function of the rows and the seed, the same on every host and under resume. Each new shape compiles when first
met.

**Bad data.** A row whose files are missing, unreadable, corrupt, too short, or whose mask does not match its
video is replaced by the next row of the same group in that epoch's order (deterministically), and reported in
``info["bad"]`` of every batch where it was met, as ``(row, message)`` pairs naming the file (it is decoded only
once); the trainer counts distinct rows and stops past ``config.data.max_bad``. A group with no readable row at
all raises ``DataError``.

**grain.** ``MapDataset.range`` over sample indices -> ``map`` (load + encode one sample) -> ``to_iter_dataset``
(``num_threads`` read threads over samples, ``prefetch`` steps ahead) -> ``batch`` (one step) -> ``map`` (reshape
to [A, b, ...], add the negative prompt). With ``workers`` > 0 (numpy sources only: toy, precomputed, manifest
with the toy encoder) the batching happens first and ``mp_prefetch`` worker processes each build whole steps.
The iterator's grain state is saved with the step it starts from; restoring with another host layout restarts
the stream at the saved step.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from vdot_jax import conditions as C
from vdot_jax.data import video_io
from vdot_jax.data.manifest import ManifestError, ManifestRow, read_manifest
from vdot_jax.errors import VdotError

ARRAY_KEYS = ("latents", "context", "text")
INFO_KEYS = ("task", "caption", "bad", "row")
_HUGE = 2**50  # "endless": sample indices are step * samples_per_step + slot


class DataError(VdotError, ValueError):
    """Training data that cannot be used at all (the message says why)."""


class SampleError(ValueError):
    """One sample that cannot be used (missing/corrupt file, ...); the pipeline skips it."""


# ----------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """The global batch of one step is [accumulation, batch]; this host loads rows ``host_rows`` of it, in that
    order (any rows, any order: which ones a host's devices hold follows the mesh, see
    ``vdot_jax.parallel.distributed.host_rows``)."""

    accumulation: int
    batch: int
    host_rows: tuple[int, ...]

    def __post_init__(self):
        rows = tuple(int(r) for r in self.host_rows)
        object.__setattr__(self, "host_rows", rows)
        if not rows or len(set(rows)) != len(rows) or min(rows) < 0 or max(rows) >= self.batch:
            raise DataError(f"a host must load distinct rows of the batch's {self.batch} rows, got {rows}.")

    @property
    def local_batch(self) -> int:
        return len(self.host_rows)

    @property
    def samples_per_step(self) -> int:
        """Samples this host loads per step."""
        return self.accumulation * self.local_batch

    @property
    def global_samples(self) -> int:
        return self.accumulation * self.batch

    def slot(self, s: int) -> int:
        """Local sample s of a step -> its global slot a * B + b."""
        a, b = divmod(s, self.local_batch)
        return a * self.batch + self.host_rows[b]

    def to_dict(self) -> dict:
        return {"accumulation": self.accumulation, "batch": self.batch, "host_rows": list(self.host_rows)}


# ----------------------------------------------------------------------------- encoders


class NumpyToyVAE:
    """The toy VAE's encode/normalize in numpy (no jax: safe in grain threads and worker processes).

    Same map as ``vdot_jax.models.toy_vae.ToyVAE`` (computed in float64, returned as float32)."""

    def __init__(self, vae_config=None):
        from vdot_jax.models.toy_vae import ToyVAEConfig

        self.config = vae_config or ToyVAEConfig()
        self.z_dim = self.config.z_dim
        self.stride = (self.config.temporal_factor, self.config.spatial_factor, self.config.spatial_factor)
        self._mean = np.asarray(self.config.latents_mean, np.float64).reshape(1, -1, 1, 1, 1)
        self._std = np.asarray(self.config.latents_std, np.float64).reshape(1, -1, 1, 1, 1)

    def encode(self, video) -> np.ndarray:
        from vdot_jax.models.toy_vae import MIX

        x = np.asarray(video, np.float64)
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t, h // 2, 2, w // 2, 2).transpose(0, 1, 4, 6, 2, 3, 5).reshape(b, 4 * c, t, h // 2, w // 2)
        return np.einsum("kc,bcthw->bkthw", MIX.astype(np.float64), x).astype(np.float32)

    def normalize(self, z) -> np.ndarray:
        return ((np.asarray(z, np.float64) - self._mean) / self._std).astype(np.float32)


def toy_vae_config(config):
    """The ToyVAEConfig a training config implies (``data.toy.latent_std_floor``); decode with the same one."""
    from vdot_jax.models.toy_vae import TOY_LATENTS_STD, ToyVAEConfig

    floor = float(config.data.toy.latent_std_floor)
    return ToyVAEConfig(latents_std=tuple(float(max(s, floor)) for s in TOY_LATENTS_STD))


class Encoder:
    """Raw sample (video, VCU, caption) -> the arrays the trainer consumes, as float32 numpy.

    ``latents`` [z, R + f, h, w]: the ground-truth video's normalised latents with the reference images' latents
    prepended in time (the layout of the VACE noise, see ``conditions.noise_shape``); ``context`` [2z + s*s,
    R + f, h, w] (``conditions.vace_context``) when the model is VACE; ``text`` [L, D]."""

    def __init__(self, vae, text_fn, *, with_context: bool, patch=(1, 2, 2)):
        self.vae, self.text_fn, self.with_context, self.patch = vae, text_fn, with_context, tuple(patch)
        self.z_dim, self.stride = C.vae_geometry(vae)

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.text_fn(list(prompts)), np.float32)

    def _latents(self, x) -> np.ndarray:
        return np.asarray(self.vae.normalize(self.vae.encode(x)), np.float32)

    def encode(self, video: np.ndarray, vcu: C.VCU, caption: str) -> dict:
        """video [1, 3, T, H, W] in [-1, 1]; a one-sample VCU of the same size."""
        lat = self._latents(video)[0]
        r = vcu.num_refs
        if r:
            h, w = vcu.height, vcu.width
            ref = self._latents(vcu.refs.reshape(r, 3, 1, h, w))  # [R, z, 1, h, w]
            lat = np.concatenate([ref[:, :, 0].transpose(1, 0, 2, 3), lat], axis=1)
        out = {"latents": lat, "text": self.encode_text([caption])[0]}
        if self.with_context:
            out["context"] = np.asarray(C.vace_context(vcu, self.vae), np.float32)[0]
        return out


def make_encoder(config, *, with_context: bool) -> Encoder:
    d = config.data
    if d.encoder == "toy":
        from vdot_jax.data.toy_world import ToyTextEncoder

        text = ToyTextEncoder(dim=d.toy.text_dim, text_len=d.toy.text_len, seed=d.toy.text_seed)
        return Encoder(NumpyToyVAE(toy_vae_config(config)), text.encode, with_context=with_context)
    if not config.model.vae or not config.model.text_encoder:
        raise DataError("data.encoder 'wan' needs config.model.vae and config.model.text_encoder (a converted model "
                        "directory holding them), or precomputed data (`vdot precompute`).")
    from vdot_jax import sources  # lazy: only the Wan encoder needs jax/flax/orbax; the toy path stays numpy

    vae = sources.load_vae(config.model.vae)
    text = sources.load_text_encoder(config.model.text_encoder, text_len=d.text_len)
    return Encoder(vae, lambda p: np.asarray(text.encode(p)), with_context=with_context)


# ----------------------------------------------------------------------------- sources


class ToySource:
    """The procedural world, rendered and encoded per (step, slot)."""

    def __init__(self, config, encoder: Encoder):
        from vdot_jax.data.toy_world import ToyWorld

        t = config.data.toy
        mix = {k: float(v) for k, v in t.task_mix.items() if float(v) > 0}
        if not mix:
            raise DataError("config.data.toy.task_mix has no task with a positive weight.")
        self.world = ToyWorld(frames=t.frames, height=t.height, width=t.width, task_mix=mix)
        self.tasks = list(mix)
        p = np.array([mix[k] for k in self.tasks], np.float64)
        self.p = p / p.sum()
        self.seed = int(config.seed)
        self.encoder = encoder

    def step_task(self, step: int) -> str:
        return self.tasks[int(np.random.default_rng([self.seed, step]).choice(len(self.tasks), p=self.p))]

    def sample(self, step: int, slot: int) -> dict:
        from vdot_jax.data.toy_world import TASK_KIND

        task = self.step_task(step)
        tb = self.world.sample_batch(np.random.default_rng([self.seed, step, slot]), 1, task)
        kind = {"t2v": "text", "r2v": "reference", "edit": "repaint", "control": "control"}[TASK_KIND[task]]
        vcu = C.VCU(tb.frames, tb.mask, tb.refs, task=task, kind=kind)
        out = self.encoder.encode(tb.video, vcu, tb.caption[0])
        return {**out, "task": task, "caption": tb.caption[0], "bad": "", "row": -1}


def raw_mix(config) -> dict[str, float]:
    """``data.raw_task_mix``'s tasks with a positive weight."""
    return {k: float(v) for k, v in config.data.get("raw_task_mix", {}).items() if float(v) > 0}


def check_raw_rows(rows: Sequence[ManifestRow], config) -> None:
    """Every raw row's task can be derived from its video (``conditions.derive``) and its boxes parse: a
    ``ManifestError`` naming the row otherwise (before any video is decoded)."""
    from vdot_jax.conditions import derive as D
    from vdot_jax.conditions import prepare as PR

    mix = raw_mix(config)
    for row in rows:
        if not row.raw:
            continue
        region = row.boxes is not None or row.mask is not None
        try:
            if row.boxes is not None:
                PR.parse_track(row.boxes) if ":" in row.boxes else PR.parse_boxes(row.boxes)
            if row.task_given:
                D.check_task(row.task, region)
            elif mix:
                D.draw_task(mix, np.random.default_rng(0), region)
        except C.ConditionError as e:
            where = f"manifest {config.data.manifest}" if config.data.manifest else "manifest"
            raise ManifestError(f"{where} row {row.index + 1}: {e}") from None


def parse_buckets(text) -> list[tuple[int, int, int]]:
    """``data.buckets`` ("FxHxW,FxHxW,...", e.g. "81x480x832,81x832x480,49x480x832") -> [(frames, height, width)];
    [] when unset (every row at data.num_frames x height x width)."""
    out = []
    for part in str(text or "").replace(" ", "").split(","):
        if not part:
            continue
        try:
            f, h, w = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise DataError(f"config.data.buckets: {part!r} is not FRAMESxHEIGHTxWIDTH (e.g. 81x480x832).") from None
        out.append((f, h, w))
    if len(set(out)) != len(out):
        raise DataError(f"config.data.buckets {text!r} names a bucket twice.")
    return out


def assign_bucket(size, buckets, fps: float | None) -> int:
    """The bucket of a video of ``size`` (frames, fps, height, width): among the buckets it has the frames for
    (at ``fps``, as the pipeline re-times it), the closest in aspect ratio, then the longest, then the largest; a
    video too short for every bucket goes to the shortest, where it fails as a bad sample (and is replaced)."""
    import math

    frames, src_fps, h, w = size
    have = len(video_io.select_frame_indices(int(frames), None, "uniform", src_fps or None, fps))
    fits = [i for i, b in enumerate(buckets) if b[0] <= have]
    if not fits:
        return min(range(len(buckets)), key=lambda i: (buckets[i][0], i))
    aspect = w / h
    return min(fits, key=lambda i: (round(abs(math.log(buckets[i][2] / buckets[i][1] / aspect)), 9),
                                    -buckets[i][0], -buckets[i][1] * buckets[i][2], i))


class ManifestSource:
    """Manifest rows, decoded and encoded on demand (raw rows: inputs derived per (step, slot)); with
    ``data.buckets`` each row at its bucket's size (``assign_bucket``; rows without size columns are probed)."""

    def __init__(self, config, encoder: Encoder, rows: list[ManifestRow] | None = None):
        d = config.data
        self.rows = rows if rows is not None else read_manifest(d.manifest)
        check_raw_rows(self.rows, config)
        self.encoder = encoder
        self.num_frames, self.height, self.width = int(d.num_frames), int(d.height), int(d.width)
        self.fps = float(d.fps) if d.fps else None
        self.sampling = d.sampling
        self.mix, self.seed = raw_mix(config), int(config.seed)
        self.buckets = parse_buckets(d.get("buckets", ""))
        for f, h, w in self.buckets:  # the size rules of data.num_frames/height/width, per bucket
            try:
                C.read_task_inputs(None, None, None, f, h, w, stride=encoder.stride, patch=encoder.patch)
            except C.ConditionError as e:
                raise DataError(f"config.data.buckets {f}x{h}x{w}: {e}") from None
        self.bucket = [self._assign(r) for r in self.rows] if self.buckets else None

    def _assign(self, row: ManifestRow) -> int:
        size = row.size
        if size is None:
            try:
                info = video_io.probe_video(row.video)
                size = (info.num_frames, info.fps, info.height, info.width)
            except video_io.VideoError:  # fails again when loaded: a bad sample, replaced and reported
                size = (0, 0.0, 1, 1)
        return assign_bucket(size, self.buckets, self.fps)

    def shape(self, i: int) -> tuple[int, int, int]:
        """Row i's (frames, height, width): its bucket's, or data.num_frames x height x width."""
        return self.buckets[self.bucket[i]] if self.buckets else (self.num_frames, self.height, self.width)

    def group(self, i: int):
        """Rows of one group share a batch shape: the reference count, and the bucket when there are buckets."""
        return (self.rows[i].num_refs, self.bucket[i]) if self.buckets else self.rows[i].num_refs

    def _boxes(self, row: ManifestRow, shape) -> np.ndarray:
        """The row's boxes (source pixels and frames) -> one per decoded frame, in output pixels."""
        from vdot_jax.conditions import prepare as PR

        num_frames, height, width = shape
        info = video_io.probe_video(row.video)
        src_hw = (info.height, info.width)
        if ":" in row.boxes:
            per = PR.boxes_per_frame(PR.interpolate_track(PR.parse_track(row.boxes), info.num_frames),
                                     info.num_frames, src_hw)
        else:
            per = PR.boxes_per_frame(PR.parse_boxes(row.boxes), info.num_frames, src_hw)
        idx = video_io.select_frame_indices(info.num_frames, num_frames, self.sampling, info.fps, self.fps)
        return PR.map_boxes(per[idx], src_hw, (height, width))

    def draw_task(self, row: ManifestRow, step: int, slot: int) -> tuple[np.random.Generator, str]:
        """A raw row's task at (step, slot): its own, or drawn from the mix (first draw of the slot's generator,
        which then draws the task's parameters)."""
        from vdot_jax.conditions import derive as D

        rng = np.random.default_rng([self.seed, int(step), int(slot)])
        if row.task_given or not self.mix:
            return rng, row.task
        return rng, D.draw_task(self.mix, rng, row.boxes is not None or row.mask is not None)

    def derive(self, row: ManifestRow, step: int, slot: int, shape=None) -> tuple[np.ndarray, C.VCU, str]:
        """A raw row at (step, slot) -> (ground-truth video [1, 3, T, H, W], its task's VCU, the task); ``shape``
        (frames, height, width) defaults to data.num_frames x height x width."""
        from vdot_jax.conditions import derive as D

        num_frames, height, width = shape or (self.num_frames, self.height, self.width)
        rng, task = self.draw_task(row, step, slot)
        if row.mask is not None:  # the video and its mask, read alike (read_task_inputs' checks included)
            base = C.read_task_inputs(row.video, row.mask, None, num_frames, height, width,
                                      sampling=self.sampling, fps=self.fps, stride=self.encoder.stride,
                                      patch=self.encoder.patch)
            video, region = base.frames, ("mask", base.masks)
        else:
            video = C.video_from_frames(video_io.read_video(row.video, num_frames=num_frames, size=(height, width),
                                                            fps=self.fps, sampling=self.sampling))
            region = ("boxes", self._boxes(row, (num_frames, height, width))) if row.boxes is not None else None
        params = D.draw_params(task, rng, num_frames, height, width, region is not None)
        return video, D.derive(task, video, params, region), task

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int, step: int | None = None, slot: int | None = None) -> dict:
        """Row i, encoded; a raw row derived at (step, slot) -- without them (``vdot precompute``) at (0, i): one
        draw per row, frozen in the shards."""
        row = self.rows[i]
        task = row.task
        num_frames, height, width = shape = self.shape(i)
        try:
            if row.raw:
                video, vcu, task = self.derive(row, *((0, i) if step is None else (step, slot)), shape=shape)
                return {**self.encoder.encode(video, vcu, row.caption), "task": task, "caption": row.caption}
            vcu = C.read_task_inputs(row.src_video, row.src_mask, row.src_ref_images or None, num_frames,
                                     height, width, task=row.task, sampling=self.sampling, fps=self.fps,
                                     stride=self.encoder.stride, patch=self.encoder.patch)
            frames = video_io.read_video(row.video, num_frames=num_frames, size=(height, width),
                                         fps=self.fps, sampling=self.sampling)
            video = C.video_from_frames(frames)
            out = self.encoder.encode(video, vcu, row.caption)
        except (video_io.VideoError, C.ConditionError, ManifestError, OSError) as e:
            raise SampleError(f"manifest row {i + 1} ({task}): {e}") from None
        except ValueError as e:  # anything else a bad file can trigger in decoding or resizing
            raise SampleError(f"manifest row {i + 1} ({task}, video {row.video}): {e}") from None
        return {**out, "task": row.task, "caption": row.caption}


PRECOMPUTED_INDEX = "precomputed.json"
PRECOMPUTED_FORMAT = "vdot-precomputed-v1"


def data_spec(config, with_context: bool) -> dict:
    """What precomputed data must agree with the config on."""
    d = config.data
    spec = {"encoder": d.encoder, "num_frames": int(d.num_frames), "height": int(d.height), "width": int(d.width),
            "fps": float(d.fps), "sampling": d.sampling, "negative_prompt": d.negative_prompt,
            "with_context": bool(with_context)}
    if raw_mix(config):  # only when set, so data precomputed before the key existed still matches
        spec["raw_task_mix"] = {k: v for k, v in sorted(raw_mix(config).items())}
    if parse_buckets(d.get("buckets", "")):  # likewise
        spec["buckets"] = [list(b) for b in parse_buckets(d.get("buckets", ""))]
    if d.encoder == "toy":
        spec["toy_text"] = [int(d.toy.text_dim), int(d.toy.text_len), int(d.toy.text_seed)]
        spec["toy_latent_std_floor"] = float(d.toy.latent_std_floor)
    else:
        spec["text_len"] = int(d.text_len)
    return spec


def encode_record(sample: dict) -> bytes:
    """One encoded sample -> bytes (npz, no pickle); the text is stored up to its last non-zero token."""
    text = np.asarray(sample["text"], np.float32)
    nz = np.nonzero(np.any(text != 0, axis=1))[0]
    n = int(nz[-1]) + 1 if len(nz) else 0
    arrays = {"latents": np.asarray(sample["latents"], np.float32), "text": text[:n],
              "text_len": np.int32(text.shape[0]), "task": np.str_(sample.get("task", "")),
              "caption": np.str_(sample.get("caption", ""))}
    if "context" in sample:
        arrays["context"] = np.asarray(sample["context"], np.float32)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def decode_record(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        out = {"latents": z["latents"], "task": str(z["task"]), "caption": str(z["caption"])}
        text = z["text"]
        full = np.zeros((int(z["text_len"]), text.shape[1] if text.ndim == 2 else 0), np.float32)
        if text.size:
            full[: text.shape[0]] = text
        out["text"] = full
        if "context" in z.files:
            out["context"] = z["context"]
    return out


class PrecomputedSource:
    """ArrayRecord shards from ``vdot precompute`` (random access through grain's ArrayRecordDataSource)."""

    def __init__(self, config, with_context: bool):
        if "://" in config.data.precomputed:  # array_record opens local files only (google/array_record#120)
            raise DataError(f"data.precomputed {config.data.precomputed}: ArrayRecord shards are read from local "
                            "files; mount the bucket with gcsfuse (launch/tpu_pod.sh --mount BUCKET mounts it at "
                            "/mnt/gcs/BUCKET) and give that path.")
        root = Path(config.data.precomputed)
        index_path = root / PRECOMPUTED_INDEX
        if not index_path.is_file():
            raise DataError(f"{root} holds no finished precomputed data ({PRECOMPUTED_INDEX} is missing; run or "
                            "finish `vdot precompute` first).")
        index = json.loads(index_path.read_text())
        if index.get("format") != PRECOMPUTED_FORMAT:
            raise DataError(f"{index_path} is not a {PRECOMPUTED_FORMAT} index.")
        want = data_spec(config, with_context)
        have = index["spec"]
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v and not (
            k == "with_context" and have.get(k) and not v)}
        if diff:
            parts = ", ".join(f"{k} {a!r} there, {b!r} in the config" for k, (a, b) in diff.items())
            raise DataError(f"precomputed data in {root} does not match this config: {parts}.")
        self.root, self.index = root, index
        self.records = index["records"]  # [{"row", "num_refs", "task"}], in shard order
        self.paths = [str(root / s) for s in index["shards"]]
        self.neg = np.load(root / index["neg_text"])
        self.with_context = with_context
        self._source = None
        self._lock = threading.Lock()

    def _src(self):
        with self._lock:
            if self._source is None:
                import grain

                self._source = grain.sources.ArrayRecordDataSource(self.paths)
            return self._source

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_source"], d["_lock"] = None, None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.records)

    def group(self, i: int):
        """As ``ManifestSource.group``: the bucket, when the shards were made with buckets, is in the record."""
        r = self.records[i]
        return (int(r["num_refs"]), int(r["bucket"])) if "bucket" in r else int(r["num_refs"])

    def load(self, i: int, step: int | None = None, slot: int | None = None) -> dict:
        try:
            out = decode_record(self._src()[i])
        except (OSError, ValueError, KeyError) as e:
            raise SampleError(f"precomputed record {i} (manifest row {self.records[i]['row'] + 1}) in {self.root} "
                              f"is unreadable ({e}).") from None
        if not self.with_context:
            out.pop("context", None)
        return out


# ----------------------------------------------------------------------------- the order of rows


class StepPlan:
    """Which row fills each (step, slot): groups by reference count (and bucket: a group key is then the pair),
    shuffled per epoch (module docstring)."""

    def __init__(self, group_per_row: Sequence, slots: int, seed: int, shuffle: bool = True):
        groups: dict = {}
        for i, r in enumerate(group_per_row):
            groups.setdefault(tuple(int(v) for v in r) if isinstance(r, tuple) else int(r), []).append(i)
        if not groups:
            raise DataError("there is no training data (no rows).")
        self.groups = {r: np.asarray(v, np.int64) for r, v in sorted(groups.items())}
        self.slots, self.seed, self.shuffle = int(slots), int(seed), bool(shuffle)
        self.steps_per_epoch = sum(-(-len(v) // self.slots) for v in self.groups.values())
        self._cache: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_lock"], d["_cache"] = None, {}
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def _epoch(self, e: int):
        with self._lock:
            if e in self._cache:
                return self._cache[e]
            perms, steps = {}, []
            for r, rows in self.groups.items():
                key = [*r] if isinstance(r, tuple) else [r]
                perm = np.random.default_rng([self.seed, e, *key]).permutation(rows) if self.shuffle else rows
                perms[r] = perm
                steps += [(r, k * self.slots) for k in range(-(-len(rows) // self.slots))]
            order = np.random.default_rng([self.seed, e]).permutation(len(steps)) if self.shuffle else range(len(steps))
            plan = (perms, [steps[i] for i in order])
            if len(self._cache) > 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[e] = plan
            return plan

    def candidates(self, step: int, slot: int):
        """The row for (step, slot), then the replacements to try if it is unreadable (same group)."""
        e, k = divmod(int(step), self.steps_per_epoch)
        perms, steps = self._epoch(e)
        r, start = steps[k]
        perm = perms[r]
        n = len(perm)
        for m in range(n):
            yield r, int(perm[(start + slot + m) % n])


class RowSampler:
    """(step, slot) -> sample from a row source, replacing unreadable rows (and reporting them)."""

    def __init__(self, source, plan: StepPlan):
        self.source, self.plan = source, plan
        self.known_bad: dict[int, str] = {}  # row -> message: not decoded again, but still reported where met
        self._lock = threading.Lock()

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_lock"] = None
        return d

    def __setstate__(self, d):
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def sample(self, step: int, slot: int) -> dict:
        bad = []
        group = None
        for group, row in self.plan.candidates(step, slot):
            if row in self.known_bad:
                bad.append(f"{row}\t{self.known_bad[row]}")
                continue
            try:
                out = self.source.load(row, step, slot)
            except SampleError as e:
                with self._lock:
                    self.known_bad[row] = str(e)
                bad.append(f"{row}\t{e}")
                continue
            return {**out, "bad": "\n".join(bad), "row": row}
        what = f"{group[0]} reference image(s) in bucket {group[1]}" if isinstance(group, tuple) else \
            f"{group} reference image(s)"
        raise DataError(f"every training sample with {what} is unreadable; the last problem: "
                        f"{bad[-1].split(chr(9), 1)[1] if bad else 'see the earlier warnings'}")


# ----------------------------------------------------------------------------- the pipeline


def make_source(config, encoder: Encoder | None, with_context: bool, slots: int):
    """The sample source of a config (``sample(step, slot) -> dict``) and the negative prompt's embedding [L, D];
    ``slots`` is the number of samples in a step's global batch (accumulation x batch)."""
    d = config.data
    if d.source == "toy":
        src = ToySource(config, encoder)
        return src, encoder.encode_text([d.negative_prompt])[0]
    if d.source == "manifest":
        rows = ManifestSource(config, encoder)
        neg = encoder.encode_text([d.negative_prompt])[0]
    else:
        rows = PrecomputedSource(config, with_context)
        neg = rows.neg
    plan = StepPlan([rows.group(i) for i in range(len(rows))], slots, config.seed, d.shuffle)
    return RowSampler(rows, plan), neg


class DataPipeline:
    """Per-host batches for steps start_step, start_step + 1, ... (module docstring)."""

    def __init__(self, config, layout: Layout, *, with_context: bool, start_step: int = 0,
                 state: dict | None = None, encoder: Encoder | None = None):
        import grain

        self.config, self.layout, self.with_context = config, layout, with_context
        if state is not None and state.get("layout") == layout.to_dict() and "iterator" in state:
            start_step, resume = int(state["start_step"]), state["iterator"]
            self.step = int(state["step"])
        else:
            resume = None
            start_step = int(state["step"]) if state is not None else int(start_step)
            self.step = start_step
        self.start_step = start_step
        if encoder is None and config.data.source != "precomputed":
            encoder = make_encoder(config, with_context=with_context)
        self.sampler, neg = make_source(config, encoder, with_context, layout.global_samples)
        self.neg_text = np.asarray(neg, np.float32)
        s = layout.samples_per_step
        d = config.data
        samples = grain.MapDataset.range(start_step * s, _HUGE).map(_LoadOne(self.sampler, layout))
        shape = _Shape(layout, self.neg_text, with_context)
        threads = max(int(d.num_threads), 1)
        if int(d.workers) > 0:
            # worker processes take whole steps (grain hands each worker every n-th element, then interleaves)
            steps = samples.batch(s, drop_remainder=True).map(shape)
            it_ds = steps.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                            prefetch_buffer_size=max(int(d.prefetch), 1)))
            it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(d.workers)))
        else:
            # read threads work on samples (a step's samples load in parallel); batching groups them into steps
            it_ds = samples.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                              prefetch_buffer_size=max(int(d.prefetch), 1) * s))
            it_ds = it_ds.batch(s, drop_remainder=True).map(shape)
        self._it = iter(it_ds)
        if resume is not None:
            self._it.set_state(resume)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[dict, dict]:
        arrays, info = next(self._it)
        self.step += 1
        return arrays, info

    def get_state(self) -> dict:
        return {"step": self.step, "start_step": self.start_step, "layout": self.layout.to_dict(),
                "iterator": self._it.get_state()}

    def close(self):
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


class _LoadOne:
    def __init__(self, sampler, layout: Layout):
        self.sampler, self.layout = sampler, layout

    def __call__(self, k: int) -> dict:
        step, s = divmod(int(k), self.layout.samples_per_step)
        out = self.sampler.sample(step, self.layout.slot(s))
        return {**{key: out[key] for key in ARRAY_KEYS if key in out},
                "task": np.str_(out["task"]), "caption": np.str_(out["caption"]), "bad": np.str_(out["bad"]),
                "row": np.int64(out["row"])}


class _Shape:
    def __init__(self, layout: Layout, neg_text: np.ndarray, with_context: bool):
        self.layout, self.neg, self.with_context = layout, neg_text, with_context

    def __call__(self, batch: dict) -> tuple[dict, dict]:
        a, b = self.layout.accumulation, self.layout.local_batch
        arrays = {k: np.ascontiguousarray(batch[k].reshape(a, b, *batch[k].shape[1:]), np.float32)
                  for k in ARRAY_KEYS if k in batch}
        if self.with_context and "context" not in arrays:
            raise DataError("the model is VACE but the data has no VACE context (precomputed without one?).")
        if not self.with_context:
            arrays.pop("context", None)
        arrays["neg_text"] = np.ascontiguousarray(np.broadcast_to(self.neg, (a, b, *self.neg.shape)))
        bad = []
        for line in "\n".join(str(x) for x in batch["bad"].reshape(-1) if str(x)).splitlines():
            row, _, msg = line.partition("\t")
            bad.append((int(row), msg))
        info = {"task": [str(t) for t in batch["task"].reshape(-1)],
                "caption": [str(t) for t in batch["caption"].reshape(-1)],
                "row": [int(r) for r in batch["row"].reshape(-1)], "bad": bad}
        return arrays, info
