"""Writing a transformer back in the PyTorch world's layouts: diffusers folders and original Wan files.

Tensors are produced one at a time from our (possibly sharded) parameters and written in safetensors
shards of at most ``max_shard_bytes`` with an index, so a 14B model never needs a second full copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vdot_jax.models.config import WanConfig
from vdot_jax.weights.checkpoint_io import save_safetensors
from vdot_jax.weights.keymap import np_dtype
from vdot_jax.weights.wan_transformer import to_external

LAYOUTS = {"diffusers": "diffusion_pytorch_model", "wan": "diffusion_pytorch_model"}


def export_transformer(flat: dict, cfg: WanConfig, out_dir: str | os.PathLike, *, layout: str = "diffusers",
                       dtype: str = "float32", max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write ``flat`` (our params) to OUT_DIR as safetensors in ``layout``; returns OUT_DIR.

    diffusers: ``config.json`` (``WanTransformer3DModel`` / ``WanVACETransformer3DModel``) + weights, loadable
    with ``from_pretrained``. wan: the original Wan/VACE tensor names (what the VACE and VDOT code loads).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {layout!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = np_dtype(dtype)
    stem = LAYOUTS[layout]
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    files, weight_map = [], {}

    for name, value in to_external(flat, cfg, layout):
        value = np.ascontiguousarray(value.astype(target))
        if size and size + value.nbytes > max_shard_bytes:
            files.append(shards[-1])
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    files.append(shards[-1])
    if len(files) == 1:
        save_safetensors(out / f"{stem}.safetensors", files[0], metadata={"format": "pt"})
    else:
        for i, tensors in enumerate(files):
            fname = f"{stem}-{i + 1:05d}-of-{len(files):05d}.safetensors"
            save_safetensors(out / fname, tensors, metadata={"format": "pt"})
            weight_map.update({k: fname for k in tensors})
        total = sum(v.nbytes for t in files for v in t.values())
        (out / f"{stem}.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    if layout == "diffusers":
        cls = "WanVACETransformer3DModel" if cfg.is_vace else "WanTransformer3DModel"
        (out / "config.json").write_text(json.dumps({"_class_name": cls, "_diffusers_version": "0.42.1",
                                                     **cfg.to_diffusers()}, indent=2))
    return out
