"""Converting transformer checkpoints (original Wan/VACE/VDOT or diffusers) and loading them back."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Mapping

import jax
from flax import nnx

from vdot_jax.models.config import Runtime, WanConfig
from vdot_jax.models.wan import WanModel
from vdot_jax.weights import store
from vdot_jax.weights.checkpoint_io import CheckpointError, open_tensors
from vdot_jax.weights.keymap import check_dtype, convert_tensors
from vdot_jax.weights.wan_transformer import config_from_json, infer_config, to_diffusers_names, transformer_keymap


def config_beside(path: Path) -> WanConfig | None:
    """The architecture in the config.json of a checkpoint folder, or beside a checkpoint file; None when there is
    none or it belongs to something else (then the tensors decide, see ``infer_config``)."""
    cfg_file = (path if path.is_dir() else path.parent) / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        d = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e})") from None
    return config_from_json(d, str(cfg_file), strict=False)


def read_transformer_checkpoint(
    src: str | os.PathLike, dtype: str = "float32", config: WanConfig | None = None, key: str | None = None,
    progress=lambda it: it,
) -> tuple[WanConfig, dict]:
    """(config, flat params in our layout as numpy) from any supported transformer checkpoint."""
    src = Path(src)
    if src.is_dir() and (src / "transformer").is_dir() and not list(src.glob("*.safetensors*")):
        src = src / "transformer"  # a diffusers pipeline folder
    source = to_diffusers_names(open_tensors(src, key=key, stem="diffusion_pytorch_model" if src.is_dir() else None))
    cfg = config or config_beside(src) or infer_config(source)
    keymap, shapes = transformer_keymap(cfg)
    flat = convert_tensors(source, keymap, shapes, dtype=check_dtype(dtype), what=cfg.describe(),
                           progress=progress)
    return cfg, flat


def convert_transformer(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "float32", config: WanConfig | None = None,
    key: str | None = None, progress=lambda it: it,
) -> Path:
    """Convert a checkpoint into DST/transformer (orbax + config.json); returns that directory."""
    cfg, flat = read_transformer_checkpoint(src, dtype, config, key, progress)
    return store.save_component(
        dst, "transformer", cls="WanModel", config=dataclasses.asdict(cfg), flat_params=flat, dtype=dtype,
        extra={"source": str(src)},
    )


def save_transformer(model: WanModel, dst: str | os.PathLike, dtype: str | None = None) -> Path:
    """Save an in-memory model as DST/transformer."""
    return store.save_module(dst, "transformer", model, cls="WanModel", config=dataclasses.asdict(model.cfg),
                             dtype=dtype)


def load_transformer(
    path: str | os.PathLike, param_dtype: str | None = None, *, runtime: Runtime | None = None,
    shardings: Mapping[tuple, jax.sharding.Sharding] | None = None, config: WanConfig | None = None,
    key: str | None = None,
) -> WanModel:
    """A ``WanModel`` from a converted model directory or straight from any supported checkpoint
    (``store.load_component``).

    ``param_dtype`` is the parameter dtype (default: as stored, else float32); the compute dtype is
    ``runtime.dtype``. ``shardings`` maps parameter paths to target shardings (default: the default device),
    restored directly into place from a converted directory.
    """
    return store.load_component(
        path, "transformer", config_type=WanConfig, read=read_transformer_checkpoint,
        build=lambda cfg: WanModel(cfg, rngs=nnx.Rngs(0), runtime=runtime),
        param_dtype=param_dtype, shardings=shardings, config=config, key=key)
