"""Key maps of the umT5 text encoder: Wan's ``.pth`` names <-> transformers names <-> ours.

Wan's layout (``wan/modules/t5.py``: ``T5Encoder`` built by ``umt5_xxl(encoder_only=True)``, with
``shared_pos=False`` so every block owns its ``pos_embedding`` and the encoder has none of its own)::

    token_embedding.weight                       [vocab, dim]
    blocks.N.norm1.weight                        [dim]
    blocks.N.attn.{q,k,v,o}.weight               [dim, dim]   (dim_attn == dim for umT5-XXL)
    blocks.N.pos_embedding.embedding.weight      [buckets, heads]
    blocks.N.norm2.weight                        [dim]
    blocks.N.ffn.gate.0.weight                   [ffn, dim]   (the GELU branch = HF wi_0)
    blocks.N.ffn.fc1.weight                      [ffn, dim]   (the linear branch = HF wi_1)
    blocks.N.ffn.fc2.weight                      [dim, ffn]   (= HF wo)
    norm.weight                                  [dim]

transformers' ``UMT5EncoderModel`` names are ours (see ``vdot_jax.models.umt5``); its tied copy
``encoder.embed_tokens.weight`` of ``shared.weight`` is dropped (or renamed when it is the only one).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from vdot_jax.models.umt5 import UMT5Config, UMT5EncoderModel
from vdot_jax.weights.checkpoint_io import CheckpointError, TensorSource, strip_prefixes
from vdot_jax.weights.keymap import KeyMap, RenameTable
from vdot_jax.weights.params import abstract_model, flat_shapes

_B = "{i:[0-9]+}"

# Wan names (left) and transformers names (right).
WAN_TO_HF = RenameTable(
    [
        ("token_embedding.weight", "shared.weight"),
        (f"blocks.{_B}.norm1.weight", "encoder.block.{i}.layer.0.layer_norm.weight"),
        (f"blocks.{_B}.attn.{{m:q|k|v|o}}.weight", "encoder.block.{i}.layer.0.SelfAttention.{m}.weight"),
        (f"blocks.{_B}.pos_embedding.embedding.weight",
         "encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight"),
        (f"blocks.{_B}.norm2.weight", "encoder.block.{i}.layer.1.layer_norm.weight"),
        (f"blocks.{_B}.ffn.gate.0.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight"),
        (f"blocks.{_B}.ffn.fc1.weight", "encoder.block.{i}.layer.1.DenseReluDense.wi_1.weight"),
        (f"blocks.{_B}.ffn.fc2.weight", "encoder.block.{i}.layer.1.DenseReluDense.wo.weight"),
        ("norm.weight", "encoder.final_layer_norm.weight"),
    ]
)

HF_ROOTS = ("shared.", "encoder.")
WAN_ROOTS = ("token_embedding.", "blocks.", "norm.")
_TIED = "encoder.embed_tokens.weight"
_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def _hf_key(path: tuple) -> str:
    *head, leaf = path
    return ".".join(str(p) for p in (*head, _LEAF.get(leaf, leaf)))


def _layout(path: tuple, shape: tuple) -> str:
    return "linear" if path[-1] == "kernel" else "copy"


def umt5_keymap(cfg: UMT5Config) -> tuple[KeyMap, dict]:
    """(KeyMap in transformers names, our flat {path: shape}) for a config, without allocating weights."""
    shapes = flat_shapes(abstract_model(lambda: UMT5EncoderModel(cfg, rngs=nnx.Rngs(0))))
    keymap = KeyMap.from_abstract(shapes, stacked={"encoder.block": cfg.num_layers}, path_to_key=_hf_key,
                                  layout_of=_layout)
    return keymap, shapes


def detect_layout(keys) -> str:
    """'hf' or 'wan' from the tensor names (prefixes already removed)."""
    keys = list(keys)
    if any(k.startswith("encoder.block.") for k in keys):
        return "hf"
    if any(k.startswith("blocks.") and ".attn." in k for k in keys) and "token_embedding.weight" in keys:
        return "wan"
    raise CheckpointError(
        "this is not a umT5 encoder checkpoint (found neither transformers' encoder.block.* nor Wan's "
        f"token_embedding/blocks.N.attn.* keys; first keys: {keys[:3]})"
    )


def to_hf_names(source: TensorSource) -> TensorSource:
    """Strip wrapper prefixes, rename Wan names to transformers names (unknown keys kept as-is) and
    resolve the tied input embedding."""
    src = strip_prefixes(source, HF_ROOTS + WAN_ROOTS)
    if detect_layout(src.keys()) == "wan":
        src = src.renamed(lambda k: WAN_TO_HF.forward(k) or k)
    if _TIED in src:
        if "shared.weight" in src:  # the tied duplicate: keep one
            keep = [k for k in src.keys() if k != _TIED]
            src = TensorSource({k: (lambda k=k, s=src: s[k]) for k in keep}, {k: src.shape(k) for k in keep},
                               src.origin)
        else:
            src = src.renamed(lambda k: "shared.weight" if k == _TIED else k)
    return src


def infer_config(source: TensorSource, max_distance: int = 128) -> UMT5Config:
    """The architecture from the tensor shapes of a transformers-named source.

    The bucket distance cap is not stored in the weights; 128 is umT5's (and Wan's) value.
    """

    def shape(key):
        if key not in source:
            raise CheckpointError(f"{source.origin} has no {key}, so its architecture cannot be inferred")
        return source.shape(key)

    vocab, d_model = shape("shared.weight")
    pre = "encoder.block.0.layer."
    buckets, heads = shape(pre + "0.SelfAttention.relative_attention_bias.weight")
    inner = shape(pre + "0.SelfAttention.q.weight")[0]
    layers = 1 + max(int(k.split(".")[2]) for k in source.keys() if k.startswith("encoder.block."))
    if inner % heads:
        raise CheckpointError(f"{source.origin}: attention width {inner} is not divisible by {heads} heads")
    return UMT5Config(
        vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=shape(pre + "1.DenseReluDense.wi_0.weight")[0],
        num_layers=layers, num_heads=heads, relative_attention_num_buckets=buckets,
        relative_attention_max_distance=max_distance,
    )


def to_external(flat: dict, cfg: UMT5Config, layout: str = "hf") -> dict[str, np.ndarray]:
    """Our flat params -> {name: numpy array} in transformers (``hf``) or Wan (``wan``) names."""
    if layout not in ("hf", "wan"):
        raise ValueError(f"layout must be 'hf' or 'wan', got {layout!r}")
    keymap, _ = umt5_keymap(cfg)
    return dict(keymap.export(flat, WAN_TO_HF.backward if layout == "wan" else (lambda k: k)))
