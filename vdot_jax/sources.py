"""Where models come from: one ``resolve(path)`` for every kind of model path, and one loader per component.

    src = resolve("runs/x", ema=True)        # Source(kind="workdir", step=<newest intact>, ema=<kept one>, ...)
    dit = load_transformer(src)              # or a path, with runtime=..., shardings=..., param_dtype=...
    vae = load_vae("models/vace-1.3b", dtype="bfloat16")
    te = load_text_encoder("models/vace-1.3b")
    arch = source_arch("runs/x")             # the transformer's architecture, without its weights

Kinds (``Source.kind``), recognised in this order:

    workdir     a training workdir (WORKDIR/checkpoints, local or gs://): the network it trains -- the generator
                of a vdot run, the model of a flow run -- at ``step`` (default: the newest intact checkpoint),
                its EMA when ``ema`` is asked and the run kept one; transformer only
    model_dir   a converted vdot-jax model directory (``vdot convert``, ``vdot export --format jax``), or one of
                its component sub-directories
    diffusers   a diffusers pipeline folder (model_index.json) or one model's folder (config.json with _class_name)
    checkpoint  anything else ``weights/`` reads: an original Wan/VACE/VDOT, VAE or umT5 file, or a folder of shards

**gs://.** A training workdir and a converted model directory may be on a bucket (``gs://BUCKET/...``): their
JSON is read through ``etils.epath`` and their arrays by orbax (tensorstore), each host reading only its shards.
Raw checkpoint files (safetensors, torch pickles, diffusers folders) and the umT5 tokenizer are read from local
files: convert them (``vdot convert``) and copy the model directory to the bucket, or mount the bucket with
gcsfuse (launch/README.md). Such a path on gs:// is refused in one line.

Each component's reader is in ``weights/`` (``convert``, ``wan_vae``, ``text_encoder``), all on
``weights.store.load_component``; the workdir format is ``train/checkpoint`` (storage only, no trainer code).
Dtypes: ``param_dtype`` is the dtype the parameters are loaded in; the compute dtype is ``runtime.dtype`` (DiT,
umT5) or ``dtype`` (VAE).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from etils import epath
from flax import nnx

from vdot_jax.errors import CheckpointError, VdotError
from vdot_jax.models.config import Runtime, WanConfig, preset
from vdot_jax.models.text_encoder import TEXT_LEN, TextEncoder
from vdot_jax.models.vae import WanVAE
from vdot_jax.models.wan import WanModel
from vdot_jax.train import checkpoint as ckpt
from vdot_jax.weights import convert, store, text_encoder, wan_vae
from vdot_jax.weights.keymap import check_dtype
from vdot_jax.weights.params import abstract_model, assign, flat_state

_EXPECTED = "expected a converted model directory, a diffusers folder, a checkpoint file or a training workdir"


class SourceError(VdotError, ValueError):
    """A model path, or the config's ``model`` group, that names no usable model (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved model path (module docstring). ``step``/``ema``/``meta`` are set for workdirs only."""

    path: Any  # pathlib.Path, or an epath.Path for a gs:// model directory; a workdir as given (it may be gs://)
    kind: str
    step: int | None = None  # the checkpoint step whose meta was read
    pinned: bool = False  # the step was asked for (else the newest intact one, with fallback to older ones)
    ema: bool = False  # the EMA is read (asked for and kept by the run)
    meta: dict | None = None  # that checkpoint's meta (mode, models, has_ema, config, ...)

    @property
    def network(self) -> str:
        """The trained network of a workdir: "generator" (vdot) or "model" (flow)."""
        return "generator" if (self.meta or {}).get("mode") == "vdot" else "model"


def resolve(path, *, step: int | None = None, ema: bool = False, what: str = "model path") -> Source:
    """What ``path`` is (module docstring). ``step`` picks a workdir's checkpoint (an error elsewhere); ``ema``
    reads a workdir's EMA when the run kept one and is ignored elsewhere (a teacher given as the exported folder
    of an EMA is the same weights). ``what`` names the path in the error when it does not exist."""
    if isinstance(path, Source):
        return path
    if (epath.Path(path) / "checkpoints").is_dir():
        pinned = step is not None
        if pinned:
            meta = ckpt.meta_at(path, step)
        else:
            found = ckpt.latest_meta(path)
            if found is None:
                raise SourceError(f"training workdir {path} has no finished checkpoint to take a model from.")
            step, meta = found
        return Source(path, "workdir", int(step), pinned, bool(ema and meta.get("has_ema")), meta)
    remote = _is_remote(path)
    p = epath.Path(path) if remote else Path(path)
    if not p.exists():
        raise SourceError(f"{what} {p} does not exist ({_EXPECTED}).")
    if step is not None:
        raise SourceError(f"{what} {p} is not a training workdir (it has no checkpoints/), so it has no step {step}.")
    if store.is_model_dir(p):
        return Source(p, "model_dir")
    if remote:
        raise SourceError(f"{what} {p} is neither a converted model directory nor a training workdir; only those are "
                          "read from a bucket. Convert it (vdot convert) and copy the result there, or mount the "
                          "bucket with gcsfuse and give the local path.")
    return Source(p, "diffusers" if _is_diffusers(p) else "checkpoint")


def _is_remote(path) -> bool:
    return "://" in os.fspath(path)


def _is_diffusers(p: Path) -> bool:
    if not p.is_dir():
        return False
    if (p / "model_index.json").is_file():
        return True
    try:
        return "_class_name" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def has_component(path, name: str) -> bool:
    """Whether ``path`` holds component ``name`` ("vae", "text_encoder", ...): a model directory that lists it or a
    diffusers pipeline folder with that sub-folder."""
    p = epath.Path(path) if _is_remote(path) else Path(path)
    if not p.is_dir():
        return False
    if store.is_model_dir(p):
        try:
            store.component_dir(p, name)
            return True
        except (CheckpointError, ValueError, OSError):  # no such component, or an unreadable index: not here
            return False
    return (p / name).is_dir()


# ----------------------------------------------------------------------------- the transformer


def _workdir_arch(src: Source) -> tuple[WanConfig, str]:
    """(architecture, state field) of the network a workdir trained."""
    models = src.meta.get("models", {})
    if src.network not in models:
        raise SourceError(f"checkpoint {src.step} in {src.path} does not record its model architecture.")
    field = "ema" if src.ema else ("generator" if src.network == "generator" else "params")
    return WanConfig.from_dict(models[src.network]), field


def source_arch(path) -> WanConfig:
    """The transformer architecture of a model directory, diffusers folder or training workdir, without reading its
    weights."""
    src = resolve(path)
    if src.kind == "workdir":
        return _workdir_arch(src)[0]
    if src.kind == "diffusers":  # a pipeline folder (transformer/ inside) or a transformer folder
        folder = src.path / "transformer" if (src.path / "model_index.json").is_file() else src.path
        return WanConfig.from_diffusers(json.loads((folder / "config.json").read_text()))
    return WanConfig.from_dict(store.read_meta(store.component_dir(src.path, "transformer"))["config"])


def model_arch(config) -> WanConfig:
    """The architecture ``config.model`` describes: its teacher's, else ``preset`` with the ``arch`` fields."""
    m = config.model
    if m.teacher:
        return source_arch(m.teacher)
    fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in m.arch.to_dict().items()}
    try:
        base = preset(m.preset) if m.preset else WanConfig()
        return dataclasses.replace(base, **fields)
    except TypeError as e:
        raise SourceError(f"config.model.arch has a field WanConfig does not know ({e}).") from None
    except ValueError as e:  # an unknown preset or an inconsistent architecture: the config's fault
        raise SourceError(f"config.model: {e}.") from None


def load_transformer(
    path, param_dtype: str | None = None, *, runtime: Runtime | None = None,
    shardings: Mapping[tuple, jax.sharding.Sharding] | None = None, config: WanConfig | None = None,
    key: str | None = None, step: int | None = None, ema: bool = False,
) -> WanModel:
    """A ``WanModel`` from any source (``resolve``; ``step``/``ema`` for workdirs), its parameters restored straight
    into ``shardings`` ({path: sharding}; default device) in ``param_dtype`` (default: as stored; a workdir's are
    float32). ``config``/``key`` are for checkpoints read directly (``weights.convert.load_transformer``)."""
    src = resolve(path, step=step, ema=ema)
    if src.kind != "workdir":
        return convert.load_transformer(src.path, param_dtype, runtime=runtime, shardings=shardings, config=config,
                                        key=key)
    cfg, field = _workdir_arch(src)
    shardings = shardings or {}
    model = abstract_model(lambda: WanModel(cfg, rngs=nnx.Rngs(0), runtime=runtime))
    flat = flat_state(model)
    keys = {k: (field, *(str(p) for p in k), "value") for k in flat}  # nnx Variables store their array as .value
    dtype = check_dtype(param_dtype or "float32")
    target = {keys[k]: jax.ShapeDtypeStruct(v.shape, dtype, sharding=shardings.get(k)) for k, v in flat.items()}
    restored = (ckpt.restore_subtree(src.path, src.step, target) if src.pinned
                else ckpt.restore_subtree_intact(src.path, target))
    # without a requested sharding a leaf comes back on the host: placed like a diffusers folder's (uncommitted, on
    # the default device), so the programs it feeds are the same ones, not copies bound to the training mesh
    return assign(model, {k: restored[keys[k]] if k in shardings else jnp.asarray(restored[keys[k]]) for k in flat})


# ----------------------------------------------------------------------------- the VAE and the text encoder


def _not_a_workdir(src: Source, what: str) -> Path:
    if src.kind == "workdir":
        raise SourceError(f"{src.path} is a training workdir, which holds a transformer only; give the {what} as a "
                          "converted model directory, a diffusers folder or a checkpoint file.")
    return src.path


def load_vae(path, *, param_dtype: str | None = None, dtype: str = "float32", **options) -> WanVAE:
    """A ``WanVAE`` from a model directory, diffusers folder or Wan2.1_VAE file; ``dtype`` is its compute dtype,
    ``options`` are ``weights.wan_vae.load_vae``'s (``config``, ``key``, ``conv``, ``tiling``)."""
    return wan_vae.load_vae(_not_a_workdir(resolve(path), "VAE"), param_dtype=param_dtype, dtype=dtype, **options)


def load_text_encoder(path, param_dtype: str | None = None, *, tokenizer: str | os.PathLike | None = None,
                      text_len: int = TEXT_LEN, runtime: Runtime | None = None, **options) -> TextEncoder:
    """The umT5 ``TextEncoder`` (network + tokenizer + prompt cache) from a model directory, diffusers or
    transformers folder or Wan's .pth; ``options`` are ``weights.text_encoder.load_text_encoder``'s."""
    p = _not_a_workdir(resolve(path), "text encoder")
    if _is_remote(p):
        raise SourceError(f"text encoder {path}: the umT5 tokenizer is read from local files; copy the model "
                          "directory to this host or mount the bucket with gcsfuse and give the local path.")
    return text_encoder.load_text_encoder(p, param_dtype,
                                          tokenizer=tokenizer, text_len=text_len, runtime=runtime, **options)
