"""Writing models back in the PyTorch world's layouts: diffusers folders and original Wan files.

Tensors are produced one at a time from our (possibly sharded) parameters and written in safetensors
shards of at most ``max_shard_bytes`` with an index, so a 14B model never needs a second full copy.

- ``export_transformer``: the DiT in diffusers names (+ ``config.json``) or original Wan/VACE names.
- ``export_vae``: the Wan VAE as a diffusers ``AutoencoderKLWan`` folder, or one file in the original names.
- ``export_text_encoder``: umT5 as a transformers ``UMT5EncoderModel`` folder, or one file in Wan's names.
- ``write_pipeline_folder``: a whole diffusers ``WanVACEPipeline``/``WanPipeline`` folder (model_index.json,
  the student's scheduler, tokenizer and the three components above).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np

from vdot_jax.models.config import WanConfig
from vdot_jax.weights.checkpoint_io import save_safetensors
from vdot_jax.weights.keymap import np_dtype
from vdot_jax.weights.wan_transformer import to_external

DIFFUSERS_VERSION = "0.42.1"  # the diffusers release the exported folders are checked against (tests)
DEFAULT_SHARD_BYTES = 5 * 2**30
LAYOUTS = {"diffusers": "diffusion_pytorch_model", "wan": "diffusion_pytorch_model"}


def export_transformer(flat: dict, cfg: WanConfig, out_dir: str | os.PathLike, *, layout: str = "diffusers",
                       dtype: str = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """Write ``flat`` (our params) to OUT_DIR as safetensors in ``layout``; returns OUT_DIR.

    diffusers: ``config.json`` (``WanTransformer3DModel`` / ``WanVACETransformer3DModel``) + weights, loadable
    with ``from_pretrained``. wan: the original Wan/VACE tensor names (what the VACE and VDOT code loads).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    out = Path(out_dir)
    write_shards(to_external(flat, cfg, layout), out, LAYOUTS[layout], dtype=dtype, max_shard_bytes=max_shard_bytes)
    if layout == "diffusers":
        cls = "WanVACETransformer3DModel" if cfg.is_vace else "WanTransformer3DModel"
        (out / "config.json").write_text(json.dumps({"_class_name": cls, "_diffusers_version": DIFFUSERS_VERSION,
                                                     **cfg.to_diffusers()}, indent=2))
    else:
        (out / "config.json").write_text(json.dumps(wan_config(cfg), indent=2))
    return out


def wan_config(cfg: WanConfig) -> dict:
    """The ``config.json`` the original Wan/VACE releases ship beside their weights (``WanModel`` /
    ``VaceWanModel`` constructor arguments)."""
    d = {
        "_class_name": "VaceWanModel" if cfg.is_vace else "WanModel",
        "_diffusers_version": "0.30.0",  # what the Wan2.1 releases' config.json files carry
        "model_type": "vace" if cfg.is_vace else "t2v",
        "patch_size": list(cfg.patch_size),
        "text_len": 512,
        "in_dim": cfg.in_channels,
        "dim": cfg.dim,
        "ffn_dim": cfg.ffn_dim,
        "freq_dim": cfg.freq_dim,
        "text_dim": cfg.text_dim,
        "out_dim": cfg.out_channels,
        "num_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "window_size": [-1, -1],
        "qk_norm": True,
        "cross_attn_norm": cfg.cross_attn_norm,
        "eps": cfg.eps,
    }
    if cfg.is_vace:
        d.update(vace_layers=list(cfg.vace_layers), vace_in_dim=cfg.vace_in_channels)
    if cfg.rope_max_seq_len != 1024:  # Wan fixes it at 1024; kept (and ignored by Wan's loader) to round-trip
        d["rope_max_seq_len"] = cfg.rope_max_seq_len
    return d


def write_shards(pairs: Iterable[tuple[str, np.ndarray]], out_dir: str | os.PathLike, stem: str, *,
                 dtype: str | None = "float32", max_shard_bytes: int = DEFAULT_SHARD_BYTES,
                 metadata: dict | None = None) -> list[Path]:
    """(name, array) pairs -> ``stem.safetensors``, or ``stem-0000i-of-0000n.safetensors`` shards of at most
    ``max_shard_bytes`` with ``stem.safetensors.index.json`` (the layout diffusers and transformers read).

    One shard is held in memory at a time; ``dtype`` None keeps each array's own dtype. Returns the files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = np_dtype(dtype) if dtype is not None else None
    meta = {"format": "pt", **(metadata or {})}
    shard: dict[str, np.ndarray] = {}
    size, done, total, weight_map = 0, [], 0, {}

    def flush():
        tmp = out / f".{stem}-shard{len(done):05d}.safetensors"
        save_safetensors(tmp, shard, metadata=meta)
        done.append((tmp, list(shard)))

    for name, value in pairs:
        value = np.asarray(value)
        value = np.ascontiguousarray(value.astype(target) if target is not None else value)
        if shard and size + value.nbytes > max_shard_bytes:
            flush()
            shard, size = {}, 0
        shard[name] = value
        size += value.nbytes
        total += value.nbytes
    flush()
    for old in list(out.glob(f"{stem}*.safetensors")) + list(out.glob(f"{stem}.safetensors.index.json")):
        old.unlink()  # a previous export of another shard count must not be mixed with this one
    if len(done) == 1:
        final = out / f"{stem}.safetensors"
        os.replace(done[0][0], final)
        return [final]
    files = []
    for i, (tmp, names) in enumerate(done):
        final = out / f"{stem}-{i + 1:05d}-of-{len(done):05d}.safetensors"
        os.replace(tmp, final)
        files.append(final)
        weight_map.update({k: final.name for k in names})
    (out / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return files


# ----------------------------------------------------------------------------- VAE and text encoder


def export_vae(flat: dict, cfg, out_dir: str | os.PathLike, *, layout: str = "diffusers", dtype: str = "float32",
               max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """The Wan VAE: a diffusers ``AutoencoderKLWan`` folder (config.json + weights), or ``layout="wan"``:
    ``Wan2.1_VAE.safetensors`` in the original ``Wan2.1_VAE.pth`` names. Returns the folder."""
    from vdot_jax.weights.wan_vae import original_rename_table, vae_keymap

    keymap, _ = vae_keymap(cfg)
    out = Path(out_dir)
    if layout == "diffusers":
        write_shards(keymap.export(flat), out, "diffusion_pytorch_model", dtype=dtype, max_shard_bytes=max_shard_bytes)
        (out / "config.json").write_text(json.dumps({**cfg.to_diffusers(), "_diffusers_version": DIFFUSERS_VERSION},
                                                    indent=2))
    elif layout == "wan":
        table = original_rename_table(cfg)
        write_shards(keymap.export(flat, table.backward), out, "Wan2.1_VAE", dtype=dtype, max_shard_bytes=2**62)
    else:
        raise ValueError(f"layout must be 'diffusers' or 'wan', got {layout!r}")
    return out


def export_text_encoder(flat: dict, cfg, out_dir: str | os.PathLike, *, layout: str = "hf", dtype: str = "bfloat16",
                        max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> Path:
    """umT5: a transformers ``UMT5EncoderModel`` folder (config.json + ``model.safetensors``), or
    ``layout="wan"``: ``models_t5_umt5-xxl-enc.safetensors`` in Wan's ``T5Encoder`` names. Returns the folder."""
    from vdot_jax.weights.umt5 import WAN_TO_HF, umt5_keymap

    keymap, _ = umt5_keymap(cfg)
    out = Path(out_dir)
    if layout == "hf":
        write_shards(keymap.export(flat), out, "model", dtype=dtype, max_shard_bytes=max_shard_bytes)
        hf = {**cfg.to_hf(), "dropout_rate": 0.0, "dtype": dtype, "torch_dtype": dtype,
              "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}
        (out / "config.json").write_text(json.dumps(hf, indent=2))
    elif layout == "wan":
        write_shards(keymap.export(flat, WAN_TO_HF.backward), out, "models_t5_umt5-xxl-enc", dtype=dtype,
                     max_shard_bytes=2**62)
    else:
        raise ValueError(f"layout must be 'hf' or 'wan', got {layout!r}")
    return out


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model")


def copy_tokenizer(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[Path, str]:
    """Copy the tokenizer files of ``src`` into ``dst``; returns (dst, the transformers class to load it with)."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)
    cls = "PreTrainedTokenizerFast"  # reads tokenizer.json in every transformers version
    if (src / "tokenizer_config.json").exists():
        cls = json.loads((src / "tokenizer_config.json").read_text()).get("tokenizer_class") or cls
    return dst, cls


# ----------------------------------------------------------------------------- whole pipeline folders


def student_scheduler_config(shift: float = 16.0) -> dict:
    """diffusers ``UniPCMultistepScheduler`` for the released 4-step student: flow prediction, flow sigmas
    with shift 16, bh2, predict-x0, order 2 (what ``vdot_jax.sampling`` computes)."""
    return {
        "_class_name": "UniPCMultistepScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": float(shift),
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": True,
        "lower_order_final": True,
        "disable_corrector": [],
        "timestep_spacing": "linspace",
        "final_sigmas_type": "zero",
    }


PIPELINE_README = """# {title}

A diffusers `{cls}` folder written by `vdot export` (vdot-jax). The transformer is the {what}; the
scheduler is set up for it (UniPC, flow prediction, shift {shift:g}). Run it as it was trained:

```python
import torch
from diffusers import {cls}

pipe = {cls}.from_pretrained("{name}", torch_dtype=torch.bfloat16).to("cuda")
video = pipe(prompt="...", num_inference_steps={steps}, guidance_scale={guide:g}, num_frames=81,
             height=480, width=832).frames[0]
```
"""


def write_pipeline_folder(out_dir: str | os.PathLike, *, transformer: tuple[dict, WanConfig], vae: tuple[dict, object],
                          text_encoder: tuple[dict, object], tokenizer: str | os.PathLike, dtype: str = "float32",
                          text_encoder_dtype: str | None = None, shift: float = 16.0, steps: int = 4,
                          guide_scale: float = 1.0, what: str = "4-step VDOT student",
                          max_shard_bytes: int = DEFAULT_SHARD_BYTES, progress=lambda it: it) -> Path:
    """A whole diffusers pipeline folder: ``model_index.json``, ``scheduler/``, ``tokenizer/``,
    ``text_encoder/`` (transformers names), ``vae/`` and ``transformer/`` (diffusers names).

    ``transformer``, ``vae`` and ``text_encoder`` are (flat params, config) pairs. The VAE is written in
    float32 (its decoder is precision-sensitive; diffusers' Wan pipelines run it in float32); the text
    encoder in ``text_encoder_dtype`` (default ``dtype``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_flat, t_cfg = transformer
    steps_done = progress(["transformer", "vae", "text_encoder"])
    for part in steps_done:
        if part == "transformer":
            export_transformer(t_flat, t_cfg, out / "transformer", layout="diffusers", dtype=dtype,
                               max_shard_bytes=max_shard_bytes)
        elif part == "vae":
            export_vae(vae[0], vae[1], out / "vae", dtype="float32", max_shard_bytes=max_shard_bytes)
        else:
            export_text_encoder(text_encoder[0], text_encoder[1], out / "text_encoder",
                                dtype=text_encoder_dtype or dtype, max_shard_bytes=max_shard_bytes)
    _, tok_cls = copy_tokenizer(tokenizer, out / "tokenizer")
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(student_scheduler_config(shift), indent=2))
    cls = "WanVACEPipeline" if t_cfg.is_vace else "WanPipeline"
    index = {
        "_class_name": cls,
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", tok_cls],
        "transformer": ["diffusers", "WanVACETransformer3DModel" if t_cfg.is_vace else "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "boundary_ratio": None,
        "vae": ["diffusers", "AutoencoderKLWan"],
    }
    if not t_cfg.is_vace:
        index["expand_timesteps"] = False
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "README.md").write_text(PIPELINE_README.format(title=f"{what} ({t_cfg.describe()})", cls=cls, what=what,
                                                          shift=shift, name=out.name, steps=steps, guide=guide_scale))
    return out
