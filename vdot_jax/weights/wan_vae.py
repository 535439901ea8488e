"""Key maps of the Wan2.1 VAE (original ``Wan2.1_VAE.pth`` <-> diffusers ``AutoencoderKLWan`` <-> ours),
config inference, conversion into a model directory (DIR/vae) and loading.

Original names are flat ``nn.Sequential`` indices: a residual block is ``residual.{0: norm, 2: conv,
3: norm, 6: conv}`` + ``shortcut``; the middle is ``middle.{0: res, 1: attention, 2: res}``; the head is
``head.{0: norm, 2: conv}``; the quant convs are top-level ``conv1``/``conv2``. The encoder's
``downsamples.N`` keep their index in diffusers (``down_blocks.N``); the decoder's flat ``upsamples.N``
are regrouped into ``up_blocks.i.resnets.j`` / ``up_blocks.i.upsamplers.0``, which depends on
``num_res_blocks`` and the number of levels, so that part of the table is generated from the config.
Norm scales are ``gamma [C,1,1,1]`` (``[C,1,1]`` in attention) in both external layouts; ours are ``[C]``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from flax import nnx

from vdot_jax.models.vae import VAEConfig, WanVAE
from vdot_jax.weights import store
from vdot_jax.weights.checkpoint_io import CheckpointError, TensorSource, open_tensors, strip_prefixes
from vdot_jax.weights.keymap import KeyMap, RenameTable, check_dtype, convert_tensors
from vdot_jax.weights.params import abstract_model, flat_shapes

_P = "{p:weight|bias}"
_E = "{e:encoder|decoder}"

# Inside one residual block: original (left) and diffusers (right) suffixes.
_RESIDUAL = [
    ("residual.0.gamma", "norm1.gamma"),
    (f"residual.2.{_P}", "conv1.{p}"),
    ("residual.3.gamma", "norm2.gamma"),
    (f"residual.6.{_P}", "conv2.{p}"),
    (f"shortcut.{_P}", "conv_shortcut.{p}"),
]
_ATTENTION = [("norm.gamma", "norm.gamma"), (f"to_qkv.{_P}", "to_qkv.{p}"), (f"proj.{_P}", "proj.{p}")]
_RESAMPLE = [(f"resample.1.{_P}", "resample.1.{p}"), (f"time_conv.{_P}", "time_conv.{p}")]

# Everything whose mapping does not depend on the architecture.
_COMMON_ROWS = [
    (f"conv1.{_P}", "quant_conv.{p}"),
    (f"conv2.{_P}", "post_quant_conv.{p}"),
    (f"{_E}.conv1.{_P}", "{e}.conv_in.{p}"),
    (f"{_E}.head.0.gamma", "{e}.norm_out.gamma"),
    (f"{_E}.head.2.{_P}", "{e}.conv_out.{p}"),
    *[(f"{_E}.middle.0.{a}", f"{{e}}.mid_block.resnets.0.{b}") for a, b in _RESIDUAL],
    *[(f"{_E}.middle.2.{a}", f"{{e}}.mid_block.resnets.1.{b}") for a, b in _RESIDUAL],
    *[(f"{_E}.middle.1.{a}", f"{{e}}.mid_block.attentions.0.{b}") for a, b in _ATTENTION],
    *[(f"encoder.downsamples.{{i}}.{a}", f"encoder.down_blocks.{{i}}.{b}")
      for a, b in _RESIDUAL + _ATTENTION + _RESAMPLE],
]

DIFFUSERS_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
WAN_ROOTS = ("encoder.", "decoder.", "conv1.", "conv2.")


def original_rename_table(cfg: VAEConfig) -> RenameTable:
    """Original Wan2.1 VAE names (left) <-> diffusers ``AutoencoderKLWan`` names (right) for ``cfg``;
    equal in effect to diffusers' ``convert_wan_vae_to_diffusers`` (which hard-codes the real layout)."""
    rows = list(_COMMON_ROWS)
    n, levels = 0, len(cfg.dim_mult)
    for i in range(levels):
        for j in range(cfg.num_res_blocks + 1):
            rows += [(f"decoder.upsamples.{n}.{a}", f"decoder.up_blocks.{i}.resnets.{j}.{b}") for a, b in _RESIDUAL]
            n += 1
        if i != levels - 1:
            rows += [(f"decoder.upsamples.{n}.{a}", f"decoder.up_blocks.{i}.upsamplers.0.{b}") for a, b in _RESAMPLE]
            n += 1
    return RenameTable(rows)


_COMMON = RenameTable(_COMMON_ROWS)
_LEAF = {"kernel": "weight"}
_MATRIX_1X1_CONV2D = ("to_qkv", "proj")  # nn.Conv2d(k=1): external [O,I,1,1]; others are Conv3d(k=1)


def _diffusers_key(path: tuple) -> str:
    *head, leaf = path
    return ".".join(str(p) for p in (*head, _LEAF.get(leaf, leaf)))


def _layout(path: tuple, shape: tuple) -> str:
    leaf, parent = path[-1], path[-2]
    if leaf == "gamma":
        return "copy@2" if parent == "norm" else "copy@3"  # attention norm: images=True
    if leaf == "kernel":
        if len(shape) == 2:
            return "linear@2" if parent in _MATRIX_1X1_CONV2D else "linear@3"
        return "conv"
    return "copy"


def vae_keymap(cfg: VAEConfig) -> tuple[KeyMap, dict]:
    """(KeyMap in diffusers names, our flat {path: shape}) for a config, without allocating weights."""
    shapes = flat_shapes(abstract_model(lambda: WanVAE(cfg, rngs=nnx.Rngs(0))))
    return KeyMap.from_abstract(shapes, stacked={}, path_to_key=_diffusers_key, layout_of=_layout), shapes


def detect_layout(keys, origin: str = "this") -> str:
    """'diffusers' or 'wan' from the tensor names (prefixes already removed)."""
    keys = list(keys)
    if any(k.startswith(("encoder.conv_in.", "encoder.down_blocks.", "quant_conv.")) for k in keys):
        return "diffusers"
    if any(k.startswith(("encoder.conv1.", "encoder.downsamples.", "decoder.upsamples.")) for k in keys):
        return "wan"
    raise CheckpointError(
        f"{origin} is not a Wan VAE checkpoint (found neither diffusers' encoder.conv_in/encoder.down_blocks nor the "
        f"original encoder.conv1/encoder.downsamples keys; first keys: {keys[:3]})"
    )


def infer_config(source: TensorSource) -> VAEConfig:
    """The architecture from the shapes of a source whose encoder and quant-conv keys have diffusers names."""

    def shape(key):
        if key not in source:
            raise CheckpointError(f"{source.origin} has no {key}, so its VAE architecture cannot be inferred")
        return source.shape(key)

    base, cin = shape("encoder.conv_in.weight")[:2]
    z_dim = shape("post_quant_conv.weight")[0]
    kinds, i = [], 0
    while any(k.startswith(f"encoder.down_blocks.{i}.") for k in source.keys()):
        p = f"encoder.down_blocks.{i}."
        if p + "resample.1.weight" in source:
            kinds.append(("down", p + "time_conv.weight" in source))
        elif p + "to_qkv.weight" in source:
            kinds.append(("attn", None))
        else:
            kinds.append(("res", shape(p + "conv1.weight")[0]))
        i += 1
    levels, level = [], []
    for kind in kinds + [("down", None)]:
        if kind[0] == "down":
            levels.append((level, kind[1]))
            level = []
        else:
            level.append(kind)
    if not levels or not levels[0][0]:
        raise CheckpointError(f"{source.origin}: cannot read the encoder's blocks (no encoder.down_blocks.N.conv1)")
    dim_mult, attn_scales = [], []
    for n, (blocks, _) in enumerate(levels):
        res = [c for k, c in blocks if k == "res"]
        dim_mult.append(res[-1] // base)
        if any(k == "attn" for k, _ in blocks):
            attn_scales.append(1.0 / 2**n)
    dec_out = shape("decoder.conv_out.weight")
    dec_base = dec_out[1] // dim_mult[0]
    return VAEConfig(
        base_dim=base,
        decoder_base_dim=None if dec_base == base else dec_base,
        z_dim=z_dim,
        dim_mult=tuple(dim_mult),
        num_res_blocks=len([k for k, _ in levels[0][0] if k == "res"]),
        attn_scales=tuple(attn_scales),
        temperal_downsample=tuple(bool(t) for _, t in levels[:-1]),
        in_channels=cin,
        out_channels=dec_out[0],
        **({} if z_dim == 16 else dict(latents_mean=(0.0,) * z_dim, latents_std=(1.0,) * z_dim)),
    )


def to_diffusers_names(source: TensorSource, cfg: VAEConfig | None = None) -> tuple[TensorSource, VAEConfig]:
    """Strip prefixes, rename an original-layout source to diffusers names; also return the config
    (``cfg`` if given, else inferred from the shapes). Unknown keys are kept as they are."""
    src = strip_prefixes(source, DIFFUSERS_ROOTS + WAN_ROOTS)
    if detect_layout(src.keys(), src.origin) == "wan":
        cfg = cfg or infer_config(src.renamed(lambda k: _COMMON.forward(k) or k))
        table = original_rename_table(cfg)
        src = src.renamed(lambda k: table.forward(k) or k)
    return src, cfg or infer_config(src)


def _diffusers_config(path: Path) -> VAEConfig | None:
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file is None or not cfg_file.exists():
        return None
    try:
        d = json.loads(cfg_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON ({e})") from None
    if d.get("_class_name") == "AutoencoderKLWan":
        try:
            return VAEConfig.from_diffusers(d)
        except ValueError as e:
            raise CheckpointError(f"{cfg_file}: {e}") from None
    return None


def read_vae_checkpoint(
    src: str | os.PathLike, dtype: str = "float32", config: VAEConfig | None = None, key: str | None = None,
    progress=lambda it: it,
) -> tuple[VAEConfig, dict]:
    """(config, flat params in our layout as numpy) from a diffusers ``AutoencoderKLWan`` folder, a diffusers
    pipeline folder (its ``vae/``), or an original ``Wan2.1_VAE.pth``/``.safetensors`` file."""
    src = Path(src)
    if src.is_dir() and (src / "vae").is_dir() and not (src / "config.json").exists():
        src = src / "vae"  # a diffusers pipeline folder
    stem = None
    if src.is_dir() and list(src.glob("diffusion_pytorch_model*")):
        stem = "diffusion_pytorch_model"
    source, cfg = to_diffusers_names(open_tensors(src, key=key, stem=stem), config or _diffusers_config(src))
    keymap, shapes = vae_keymap(cfg)
    flat = convert_tensors(source, keymap, shapes, dtype=check_dtype(dtype), what=f"Wan VAE config {cfg}",
                           progress=progress)
    return cfg, flat


def convert_vae(
    src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "float32", config: VAEConfig | None = None,
    key: str | None = None, progress=lambda it: it,
) -> Path:
    """Convert a VAE checkpoint into DST/vae (orbax params + config.json); returns that directory."""
    cfg, flat = read_vae_checkpoint(src, dtype, config, key, progress)
    return store.save_component(dst, "vae", cls="WanVAE", config=dataclasses.asdict(cfg), flat_params=flat,
                                dtype=dtype, extra={"source": str(src)})


def save_vae(vae: WanVAE, dst: str | os.PathLike, dtype: str | None = None) -> Path:
    """Save an in-memory VAE as DST/vae."""
    return store.save_module(dst, "vae", vae, cls="WanVAE", config=dataclasses.asdict(vae.config), dtype=dtype)


def load_vae(
    path: str | os.PathLike, *, param_dtype: str | None = None, dtype: str = "float32",
    config: VAEConfig | None = None, key: str | None = None, **runtime,
) -> WanVAE:
    """A ``WanVAE`` from a converted model directory or straight from any supported VAE checkpoint
    (``store.load_component``).

    ``param_dtype`` is the parameter dtype (default: as stored in a converted directory, else float32); ``dtype``
    the compute dtype ("float32" default, or "bfloat16"). ``runtime`` goes to ``WanVAE.set_runtime`` (``conv``,
    ``tiling``).
    """
    vae = store.load_component(path, "vae", config_type=VAEConfig, read=read_vae_checkpoint,
                               build=lambda cfg: WanVAE(cfg, rngs=nnx.Rngs(0)), param_dtype=param_dtype,
                               config=config, key=key)
    return vae.set_runtime(dtype=dtype, **runtime)
