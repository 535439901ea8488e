"""Key maps of the Wan/VACE transformer: original Wan <-> diffusers <-> ours, and config inference."""

from __future__ import annotations

from flax import nnx

from vdot_jax.models.config import WanConfig
from vdot_jax.models.wan import WanModel
from vdot_jax.weights.checkpoint_io import CheckpointError, TensorSource
from vdot_jax.weights.keymap import KeyMap, RenameTable
from vdot_jax.weights.params import abstract_model, flat_shapes

_B = "{b:blocks|vace_blocks}.{i:[0-9]+}"
_P = "{p:weight|bias}"

# Original Wan/VACE names (left) and diffusers names (right). Original ``norm3`` is the cross-attention
# norm that diffusers calls ``norm2``; VACE's ``before_proj``/``after_proj`` are ``proj_in``/``proj_out``.
WAN_TO_DIFFUSERS = RenameTable(
    [
        (f"patch_embedding.{_P}", "patch_embedding.{p}"),
        (f"vace_patch_embedding.{_P}", "vace_patch_embedding.{p}"),
        (f"text_embedding.0.{_P}", "condition_embedder.text_embedder.linear_1.{p}"),
        (f"text_embedding.2.{_P}", "condition_embedder.text_embedder.linear_2.{p}"),
        (f"time_embedding.0.{_P}", "condition_embedder.time_embedder.linear_1.{p}"),
        (f"time_embedding.2.{_P}", "condition_embedder.time_embedder.linear_2.{p}"),
        (f"time_projection.1.{_P}", "condition_embedder.time_proj.{p}"),
        (f"head.head.{_P}", "proj_out.{p}"),
        ("head.modulation", "scale_shift_table"),
        (f"{_B}.self_attn.{{m:q|k|v}}.{_P}", "{b}.{i}.attn1.to_{m}.{p}"),
        (f"{_B}.self_attn.o.{_P}", "{b}.{i}.attn1.to_out.0.{p}"),
        (f"{_B}.self_attn.{{n:norm_q|norm_k}}.{_P}", "{b}.{i}.attn1.{n}.{p}"),
        (f"{_B}.cross_attn.{{m:q|k|v}}.{_P}", "{b}.{i}.attn2.to_{m}.{p}"),
        (f"{_B}.cross_attn.o.{_P}", "{b}.{i}.attn2.to_out.0.{p}"),
        (f"{_B}.cross_attn.{{n:norm_q|norm_k}}.{_P}", "{b}.{i}.attn2.{n}.{p}"),
        (f"{_B}.norm3.{_P}", "{b}.{i}.norm2.{p}"),
        (f"{_B}.ffn.0.{_P}", "{b}.{i}.ffn.net.0.proj.{p}"),
        (f"{_B}.ffn.2.{_P}", "{b}.{i}.ffn.net.2.{p}"),
        (f"{_B}.modulation", "{b}.{i}.scale_shift_table"),
        (f"{_B}.before_proj.{_P}", "{b}.{i}.proj_in.{p}"),
        (f"{_B}.after_proj.{_P}", "{b}.{i}.proj_out.{p}"),
    ]
)

# Where our names differ from diffusers' beyond the generic leaf renames (kernel/scale -> weight).
_OURS_TO_DIFFUSERS = {("vace_proj_in",): ("vace_blocks", 0, "proj_in")}
_LEAF = {"kernel": "weight", "scale": "weight"}

DIFFUSERS_ROOTS = ("condition_embedder.", "patch_embedding.", "blocks.", "proj_out.", "vace_", "scale_shift_table")
WAN_ROOTS = ("time_embedding.", "text_embedding.", "patch_embedding.", "blocks.", "head.", "vace_")


def _diffusers_key(path: tuple) -> str:
    for ours, theirs in _OURS_TO_DIFFUSERS.items():
        if path[: len(ours)] == ours:
            path = theirs + path[len(ours) :]
    *head, leaf = path
    return ".".join(str(p) for p in (*head, _LEAF.get(leaf, leaf)))


def _layout(path: tuple, shape: tuple) -> str:
    if path[-1] == "kernel":
        return "linear" if len(shape) == 2 else "conv"
    return "copy"


def transformer_keymap(cfg: WanConfig) -> tuple[KeyMap, dict]:
    """(KeyMap in diffusers names, our flat {path: shape}) for a config, without allocating weights."""
    shapes = flat_shapes(abstract_model(lambda: WanModel(cfg, rngs=nnx.Rngs(0))))
    stacked = {"blocks": cfg.num_layers}
    if cfg.is_vace:
        stacked["vace_blocks"] = len(cfg.vace_layers)
    return KeyMap.from_abstract(shapes, stacked=stacked, path_to_key=_diffusers_key, layout_of=_layout), shapes


def detect_layout(keys) -> str:
    """'diffusers' or 'wan' from the tensor names (prefixes already removed)."""
    keys = list(keys)
    if any(k.startswith("condition_embedder.") for k in keys):
        return "diffusers"
    if any(k.startswith(("time_embedding.", "head.head.")) for k in keys):
        return "wan"
    raise CheckpointError(
        "this is not a Wan/VACE transformer checkpoint (found neither diffusers' condition_embedder.* nor "
        f"original Wan's time_embedding.*/head.* keys; first keys: {keys[:3]})"
    )


def to_diffusers_names(source: TensorSource) -> TensorSource:
    """Strip prefixes and rename an original-layout source to diffusers names (unknown keys kept as-is)."""
    from vdot_jax.weights.checkpoint_io import strip_prefixes

    src = strip_prefixes(source, DIFFUSERS_ROOTS + WAN_ROOTS)
    if detect_layout(src.keys()) == "wan":
        src = src.renamed(lambda k: WAN_TO_DIFFUSERS.forward(k) or k)
    return src


DIFFUSERS_CLASSES = ("WanTransformer3DModel", "WanVACETransformer3DModel")
WAN_CLASSES = ("WanModel", "VaceWanModel")


def config_from_json(d, origin: str, *, strict: bool = True) -> WanConfig | None:
    """The architecture in a config.json: diffusers' (``WanVACETransformer3DModel``...), an original Wan/VACE
    release's (``VaceWanModel``...), a vdot-jax component's, or a dict of ``WanConfig`` fields. ``strict=False``
    returns None for a file that is none of these (a config.json that belongs to something else)."""
    cls = d.get("_class_name") if isinstance(d, dict) else None
    try:
        if cls in DIFFUSERS_CLASSES:
            return WanConfig.from_diffusers(d)
        if cls in WAN_CLASSES or (isinstance(d, dict) and "in_dim" in d and "num_heads" in d):
            return WanConfig.from_wan(d)
        if not strict:
            return None
        if isinstance(d, dict) and d.get("component") == "transformer" and "config" in d:
            return WanConfig.from_dict(d["config"])
        if isinstance(d, dict):
            return WanConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{origin} is not a usable Wan transformer config ({e})") from None
    raise CheckpointError(f"{origin} is not a Wan transformer config (expected a diffusers or Wan config.json)")


def _indices(keys, root: str) -> list[int]:
    return sorted({int(k.split(".")[1]) for k in keys if k.startswith(root + ".") and k.split(".")[1].isdigit()})


def _valid_head_counts(dim: int) -> list[int]:
    return [h for h in range(1, dim + 1) if dim % h == 0 and (dim // h) % 2 == 0]


def infer_config(source: TensorSource) -> WanConfig:
    """The architecture of a diffusers-named source with no config: what the tensor shapes determine, completed by
    the released model (``PRESETS``) that matches them exactly. The head count and the VACE layer positions are not
    in the tensors, so anything that matches no release is refused (``CheckpointError`` naming what is ambiguous
    and asking for ``--config``), as is a checkpoint with block indices missing."""
    from vdot_jax.models.config import PRESETS

    def shape(key):
        if key not in source:
            raise CheckpointError(f"{source.origin} has no {key}, so its architecture cannot be inferred")
        return source.shape(key)

    keys = source.keys()
    blocks, vace = _indices(keys, "blocks"), _indices(keys, "vace_blocks")
    for name, idx in (("blocks", blocks), ("vace_blocks", vace)):
        gaps = sorted(set(range(idx[-1] + 1)) - set(idx)) if idx else []
        if gaps:
            raise CheckpointError(f"{source.origin} has no {name} {', '.join(map(str, gaps[:8]))} (its {name} go up "
                                  f"to {idx[-1]}): the checkpoint is incomplete")
    if not blocks:
        raise CheckpointError(f"{source.origin} has no transformer blocks (blocks.N.*)")
    d, cin, *patch = shape("patch_embedding.weight")
    determined = dict(
        dim=d, ffn_dim=shape("blocks.0.ffn.net.0.proj.weight")[0], num_layers=len(blocks), in_channels=cin,
        out_channels=shape("proj_out.weight")[0] // max(1, patch[0] * patch[1] * patch[2]), patch_size=tuple(patch),
        text_dim=shape("condition_embedder.text_embedder.linear_1.weight")[1],
        freq_dim=shape("condition_embedder.time_embedder.linear_1.weight")[1],
        cross_attn_norm="blocks.0.norm2.weight" in source,
        vace_in_channels=shape("vace_patch_embedding.weight")[1] if vace else 96)

    def fits(cfg: WanConfig) -> bool:
        return len(cfg.vace_layers) == len(vace) and all(getattr(cfg, k) == v for k, v in determined.items())

    for cfg in PRESETS.values():
        if fits(cfg):
            return cfg
    heads = _valid_head_counts(d)
    n = len(vace)
    positions = () if n == 0 else tuple(range(n)) if n in (1, len(blocks)) else None
    ambiguous = []
    if len(heads) != 1:
        ambiguous.append(f"the head count (dim {d} splits into {', '.join(map(str, heads[:6]))}"
                         f"{', ...' if len(heads) > 6 else ''} heads)")
    if positions is None:
        ambiguous.append(f"the VACE layer positions ({n} VACE blocks among {len(blocks)} layers)")
    if not ambiguous:
        return WanConfig(**determined, num_heads=heads[0], vace_layers=positions)
    near = [name for name, cfg in PRESETS.items() if len(cfg.vace_layers) == n and
            all(getattr(cfg, k) == v for k, v in determined.items() if k != "num_layers")]
    hint = (f"; it matches the released {near[0]} except for its {len(blocks)} layers (that has "
            f"{PRESETS[near[0]].num_layers}: is a block missing?)" if near else "")
    raise CheckpointError(f"{source.origin} has no config.json and matches no released model, so "
                          f"{' and '.join(ambiguous)} cannot be told from its tensors{hint}; pass --config FILE (the "
                          "model's diffusers or Wan config.json)")


def to_external(flat: dict, cfg: WanConfig, layout: str = "diffusers"):
    """Our flat params -> (name, numpy array) pairs in diffusers or original Wan/VACE names, streamed."""
    if layout not in ("diffusers", "wan"):
        raise ValueError(f"layout must be 'diffusers' or 'wan', got {layout!r}")
    keymap, _ = transformer_keymap(cfg)
    return keymap.export(flat, WAN_TO_DIFFUSERS.backward if layout == "wan" else (lambda k: k))
