"""umT5 text encoder checkpoints: where the weights and the tokenizer are, reading, converting, saving, loading.

Loading (``load_text_encoder``; the bare network: ``load_umt5``) accepts a converted vdot-jax model directory, a
transformers ``UMT5EncoderModel`` folder, a diffusers pipeline folder (``text_encoder/`` + ``tokenizer/``), or
Wan's ``models_t5_umt5-xxl-enc-bf16.pth``; ``convert_text_encoder`` writes DST/text_encoder with the tokenizer
files copied into DST/text_encoder/tokenizer/ so the directory is self-contained. The key maps are in
``weights/umt5``; the model, tokenizer and prompt cache in ``models/text_encoder``.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Mapping

import jax
from flax import nnx

from vdot_jax.models.config import Runtime
from vdot_jax.models.text_encoder import TEXT_LEN, PromptTokenizer, TextEncoder, read_json, tokenizer_dir
from vdot_jax.models.umt5 import UMT5Config, UMT5EncoderModel
from vdot_jax.weights import store
from vdot_jax.weights.checkpoint_io import CheckpointError, open_tensors
from vdot_jax.weights.keymap import check_dtype, convert_tensors
from vdot_jax.weights.umt5 import infer_config, to_hf_names, umt5_keymap

COMPONENT = "text_encoder"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


@dataclasses.dataclass
class _Located:
    weights: Path  # file or directory handed to open_tensors
    config: UMT5Config | None  # from a transformers config.json, if there is one
    tokenizer_candidates: list[Path]


def _hf_config(folder: Path, required: bool) -> UMT5Config | None:
    """The umT5 config of a transformers folder; a config.json of another kind is an error only when
    ``required`` (a folder given as the encoder), else ignored (e.g. Wan's DiT config beside the .pth)."""
    f = folder / "config.json"
    if not f.exists():
        return None
    d = read_json(f)
    is_umt5 = d.get("model_type") == "umt5" or "UMT5EncoderModel" in (d.get("architectures") or [])
    if not is_umt5:
        if required and "component" not in d:
            raise CheckpointError(
                f"{f} does not describe a umT5 encoder (model_type={d.get('model_type')!r}, expected 'umt5')"
            )
        return None
    try:
        return UMT5Config.from_hf(d)
    except ValueError as e:
        raise CheckpointError(f"{f} does not describe a supported umT5 encoder ({e})") from None


def _locate(path: Path) -> _Located:
    if not path.exists():
        raise CheckpointError(f"text encoder path {path} does not exist")
    if path.is_file():
        parent = path.parent
        cands = [parent / "google" / "umt5-xxl", parent, parent.parent / "tokenizer"]
        return _Located(path, _hf_config(parent, False), cands)
    if (path / COMPONENT).is_dir() and not (path / "config.json").exists():  # a diffusers pipeline folder
        return _Located(path / COMPONENT, _hf_config(path / COMPONENT, True), [path / "tokenizer"])
    return _Located(path, _hf_config(path, True), [path, path / "tokenizer", path.parent / "tokenizer",
                                                    path / "google" / "umt5-xxl"])


def _find_tokenizer(src: _Located, given, origin: Path) -> Path:
    if given is not None:
        return tokenizer_dir(given)
    for c in src.tokenizer_candidates:
        if (c / "tokenizer.json").exists():
            return c
    looked = ", ".join(str(c) for c in src.tokenizer_candidates)
    raise CheckpointError(
        f"no umT5 tokenizer found for {origin} (looked in {looked}); pass tokenizer=DIR, the folder with "
        "tokenizer.json (google/umt5-xxl/ in the Wan release, tokenizer/ in a diffusers pipeline)"
    )


def read_text_encoder_checkpoint(
    src: str | os.PathLike, dtype: str = "float32", config: UMT5Config | None = None, key: str | None = None,
    progress=lambda it: it,
) -> tuple[UMT5Config, dict]:
    """(config, flat params in our layout as numpy) from a transformers or Wan umT5 checkpoint."""
    located = _locate(Path(src))
    source = to_hf_names(open_tensors(located.weights, key=key))
    cfg = config or located.config or infer_config(source)
    keymap, shapes = umt5_keymap(cfg)
    flat = convert_tensors(source, keymap, shapes, dtype=check_dtype(dtype), what=f"umT5 encoder {cfg}",
                           progress=progress)
    return cfg, flat


def _copy_tokenizer(tok: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (tok / name).exists():
            shutil.copy2(tok / name, tmp / name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def convert_text_encoder(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "bfloat16",
    tokenizer: str | os.PathLike | None = None, *, config: UMT5Config | None = None, key: str | None = None,
    progress=lambda it: it,
) -> Path:
    """Convert a umT5 checkpoint into DST/text_encoder (orbax params, config.json, tokenizer/).

    ``dtype`` defaults to bfloat16: the released weights are bfloat16, so float32 only doubles the size.
    """
    src = Path(src)
    tok = _find_tokenizer(_locate(src), tokenizer, src)  # before the slow part: fail early
    cfg, flat = read_text_encoder_checkpoint(src, dtype, config, key, progress)
    comp = store.save_component(
        dst, COMPONENT, cls="UMT5EncoderModel", config=dataclasses.asdict(cfg), flat_params=flat, dtype=dtype,
        extra={"source": str(src), "tokenizer": "tokenizer"},
    )
    _copy_tokenizer(tok, comp / "tokenizer")
    return comp


def save_text_encoder(encoder: TextEncoder, dst: str | os.PathLike, dtype: str | None = None) -> Path:
    """Save an in-memory ``TextEncoder`` (weights and tokenizer) as DST/text_encoder."""
    comp = store.save_module(dst, COMPONENT, encoder.model, cls="UMT5EncoderModel",
                             config=dataclasses.asdict(encoder.config),
                             dtype=check_dtype(dtype) if dtype is not None else None, extra={"tokenizer": "tokenizer"})
    _copy_tokenizer(encoder.tokenizer.path, comp / "tokenizer")
    return comp


def load_umt5(
    path: str | os.PathLike, param_dtype: str | None = None, *, runtime: Runtime | None = None,
    shardings: Mapping[tuple, jax.sharding.Sharding] | None = None, config: UMT5Config | None = None,
    key: str | None = None,
) -> UMT5EncoderModel:
    """The bare encoder network from any supported source (no tokenizer needed; ``store.load_component``).
    ``param_dtype`` as in ``load_text_encoder``; the compute dtype is ``runtime.dtype``."""
    return store.load_component(
        path, COMPONENT, config_type=UMT5Config, read=read_text_encoder_checkpoint,
        build=lambda cfg: UMT5EncoderModel(cfg, rngs=nnx.Rngs(0), runtime=runtime),
        param_dtype=param_dtype, shardings=shardings, config=config, key=key)


def load_text_encoder(
    path: str | os.PathLike, param_dtype: str | None = None, *, tokenizer: str | os.PathLike | None = None,
    text_len: int = TEXT_LEN, runtime: Runtime | None = None, cache_size: int = 16,
    shardings: Mapping[tuple, jax.sharding.Sharding] | None = None, config: UMT5Config | None = None,
    key: str | None = None,
) -> TextEncoder:
    """A ``TextEncoder`` from a converted model directory, a transformers ``UMT5EncoderModel`` folder, a
    diffusers pipeline folder or Wan's ``.pth``.

    ``param_dtype`` is the parameter dtype (default: as stored in a converted directory, else float32); the
    compute dtype is ``runtime.dtype``. ``tokenizer`` is the folder holding ``tokenizer.json``; by default
    it is found next to the weights (the converted directory's copy, the folder itself, a sibling
    ``tokenizer/``, or Wan's ``google/umt5-xxl/`` beside the ``.pth``).
    """
    path = Path(path)
    if store.is_model_dir(path):
        comp = store.component_dir(path, COMPONENT)
        tok = tokenizer_dir(tokenizer) if tokenizer is not None else _find_tokenizer(
            _Located(comp, None, [comp / "tokenizer"]), None, comp)
    else:
        tok = _find_tokenizer(_locate(path), tokenizer, path)  # before reading gigabytes of weights
    model = load_umt5(path, param_dtype, runtime=runtime, shardings=shardings, config=config, key=key)
    return TextEncoder(model, PromptTokenizer(tok, text_len), cache_size=cache_size)
