"""umT5 text encoder: parity with transformers' UMT5EncoderModel and diffusers' Wan prompt embedding,
Wan's .pth layout, real-size key coverage, conversion, tokenization, the prompt cache and errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from vdot_jax.models.text_encoder import PromptTokenizer, TextEncoder, clean_prompt  # noqa: E402
from vdot_jax.models.umt5 import UMT5_XXL, UMT5Config, relative_position_buckets  # noqa: E402
from vdot_jax.weights.checkpoint_io import CheckpointError, TensorSource  # noqa: E402
from vdot_jax.weights.params import flat_state  # noqa: E402
from vdot_jax.weights.text_encoder import (  # noqa: E402
    convert_text_encoder, load_text_encoder, load_umt5, save_text_encoder,
)
from vdot_jax.weights.umt5 import WAN_TO_HF, infer_config, to_external, umt5_keymap  # noqa: E402

TINY = dict(vocab_size=100, d_model=32, d_ff=48, num_layers=3, num_heads=4, d_kv=8,
            relative_attention_num_buckets=32, relative_attention_max_distance=128)
WORDS = "a an the prompt another longer cat dog runs on grass in rain & video of slowly red".split()
TEXT_LEN = 16
PROMPTS = ["a  prompt", "another &amp; longer\tprompt of a red cat", "the cat runs on the grass in the rain "
           "of a video of a dog slowly", ""]


def _hf_config(**kw):
    return transformers.UMT5Config(**{**TINY, **kw}, dropout_rate=0.0, feed_forward_proj="gated-gelu")


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = transformers.UMT5EncoderModel(_hf_config()).eval()
    with torch.no_grad():  # make every tensor matter: norms and position biases away from their inits
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
            elif "relative_attention_bias" in name:
                p.normal_(0.0, 1.0)
    return model


def _build_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory, hf_model):
    """A diffusers-style folder: text_encoder/ (transformers safetensors) + tokenizer/."""
    root = tmp_path_factory.mktemp("pipe")
    hf_model.save_pretrained(root / "text_encoder")
    _build_tokenizer(root / "tokenizer")
    return root


def _wan_name(hf_key: str) -> str:
    """Transformers name -> Wan's T5Encoder name, written out by hand (independent of WAN_TO_HF)."""
    if hf_key == "shared.weight":
        return "token_embedding.weight"
    if hf_key == "encoder.final_layer_norm.weight":
        return "norm.weight"
    parts = hf_key.split(".")
    i, rest = parts[2], ".".join(parts[3:])
    table = {
        "layer.0.layer_norm.weight": "norm1.weight",
        "layer.0.SelfAttention.q.weight": "attn.q.weight",
        "layer.0.SelfAttention.k.weight": "attn.k.weight",
        "layer.0.SelfAttention.v.weight": "attn.v.weight",
        "layer.0.SelfAttention.o.weight": "attn.o.weight",
        "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
        "layer.1.layer_norm.weight": "norm2.weight",
        "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
        "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
        "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
    }
    return f"blocks.{i}.{table[rest]}"


def wan_umt5_xxl_shapes(vocab=256384, dim=4096, ffn=10240, heads=64, layers=24, buckets=32) -> dict:
    """Every tensor of Wan's ``models_t5_umt5-xxl-enc-bf16.pth``, from wan/modules/t5.py: ``T5Encoder``
    with ``shared_pos=False`` (each ``T5SelfAttention`` block owns a ``T5RelativeEmbedding``), bias-free
    linears, ``T5FeedForward`` = gate (Linear+GELU), fc1, fc2. Checked once against the module built on
    the meta device: 242 tensors."""
    shapes = {"token_embedding.weight": (vocab, dim)}
    for i in range(layers):
        b = f"blocks.{i}."
        shapes[b + "norm1.weight"] = (dim,)
        for m in "qkvo":
            shapes[b + f"attn.{m}.weight"] = (dim, dim)
        shapes[b + "norm2.weight"] = (dim,)
        shapes[b + "ffn.gate.0.weight"] = (ffn, dim)
        shapes[b + "ffn.fc1.weight"] = (ffn, dim)
        shapes[b + "ffn.fc2.weight"] = (dim, ffn)
        shapes[b + "pos_embedding.embedding.weight"] = (buckets, heads)
    shapes["norm.weight"] = (dim,)
    return shapes


def _hf_forward(model, ids, mask):
    with torch.no_grad():
        return model(torch.as_tensor(ids, dtype=torch.long), torch.as_tensor(mask)).last_hidden_state.numpy()


def _ids_and_mask(lengths, n, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, TINY["vocab_size"], (len(lengths), n)).astype(np.int32)
    mask = (np.arange(n)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    return np.where(mask > 0, ids, 0), mask


def test_relative_position_buckets_match_transformers(hf_model):
    attn = hf_model.encoder.block[0].layer[0].SelfAttention
    rel = torch.arange(-700, 701)[None]
    expected = attn._relative_position_bucket(rel).numpy()[0]
    ours = relative_position_buckets(701, 1401, 32, 128)[700]
    np.testing.assert_array_equal(ours, expected)


def test_encoder_matches_transformers(pipeline_dir, hf_model):
    model = load_umt5(pipeline_dir / "text_encoder", "float32")
    assert model.cfg == UMT5Config(**TINY)
    ids, mask = _ids_and_mask([150, 37, 1], 150)  # beyond max_distance 128: every bucket is used
    ours = np.asarray(jax.jit(lambda i, m: model(i, m))(ids, mask))
    ref = _hf_forward(hf_model, ids, mask)
    err = np.abs(ours - ref)[mask > 0].max()
    assert err < 1e-4, err
    # The TextEncoder entry point: the same on valid tokens, exact zeros after each sequence.
    enc = TextEncoder(model, pipeline_dir / "tokenizer")
    out = np.asarray(enc.encode_ids(ids, mask))
    assert np.abs(out - ref)[mask > 0].max() < 1e-4
    assert not out[mask == 0].any()


def test_real_size_wan_keys_covered_both_ways():
    keymap, _ = umt5_keymap(UMT5_XXL)
    wan = wan_umt5_xxl_shapes()
    assert len(wan) == 242
    ext = keymap.external_shapes()
    for k, shape in wan.items():
        hf = WAN_TO_HF.forward(k)
        assert hf in ext, k
        assert ext[hf] == shape, (k, ext[hf], shape)
    back = {WAN_TO_HF.backward(k): s for k, s in ext.items()}
    assert back == wan
    # and the architecture inferred from Wan's shapes alone is umT5-XXL
    src = TensorSource({WAN_TO_HF.forward(k): (lambda: None) for k in wan},
                       {WAN_TO_HF.forward(k): s for k, s in wan.items()}, "wan-xxl")
    assert infer_config(src) == UMT5_XXL


def test_real_size_transformers_keys_covered():
    cfg = _hf_config(vocab_size=256384, d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64)
    with torch.device("meta"):
        hf = transformers.UMT5EncoderModel(cfg)
    hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items() if k != "encoder.embed_tokens.weight"}
    keymap, _ = umt5_keymap(UMT5_XXL)
    assert keymap.external_shapes() == hf_shapes
    assert UMT5Config.from_hf(cfg.to_dict()) == UMT5_XXL


def test_wan_pth_converts_and_matches(tmp_path, pipeline_dir, hf_model):
    wan_sd = {_wan_name(k): v.clone() for k, v in hf_model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    pth = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(wan_sd, pth)
    comp = convert_text_encoder(pth, tmp_path / "converted", "float32", tokenizer=pipeline_dir / "tokenizer")
    assert comp == tmp_path / "converted" / "text_encoder"
    assert (comp / "tokenizer" / "tokenizer.json").exists()  # self-contained
    enc = load_text_encoder(tmp_path / "converted", text_len=TEXT_LEN)
    assert enc.config == UMT5Config(**TINY)
    ids, mask = _ids_and_mask([20, 9], 20, seed=1)
    ref = _hf_forward(hf_model, ids, mask)
    out = np.asarray(enc.encode_ids(ids, mask))
    assert np.abs(out - ref)[mask > 0].max() < 1e-4
    # back to Wan's names: the very tensors we started from
    back = to_external(flat_state(enc.model), enc.config, "wan")
    assert back.keys() == wan_sd.keys()
    for k, v in wan_sd.items():
        np.testing.assert_array_equal(back[k], v.numpy())
    # the Wan release layout: the tokenizer in google/umt5-xxl/ beside the .pth is found by itself
    (tmp_path / "google").mkdir()
    import shutil

    shutil.copytree(pipeline_dir / "tokenizer", tmp_path / "google" / "umt5-xxl")
    enc2 = load_text_encoder(pth, "float32", text_len=TEXT_LEN)
    np.testing.assert_allclose(np.asarray(enc2.encode(PROMPTS[:2])), np.asarray(enc.encode(PROMPTS[:2])),
                               atol=1e-6)


def test_prompts_match_diffusers_wan_pipeline(pipeline_dir, hf_model):
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    hf_tok = transformers.AutoTokenizer.from_pretrained(pipeline_dir / "tokenizer")
    pipe = WanPipeline(tokenizer=hf_tok, text_encoder=hf_model, vae=None,
                       scheduler=FlowMatchEulerDiscreteScheduler(), transformer=None)
    with torch.no_grad():
        ref = pipe._get_t5_prompt_embeds(PROMPTS, max_sequence_length=TEXT_LEN, device=torch.device("cpu"),
                                         dtype=torch.float32).numpy()

    enc = load_text_encoder(pipeline_dir, "float32", text_len=TEXT_LEN)  # diffusers pipeline folder
    out = np.asarray(enc.encode(PROMPTS))
    assert out.shape == (len(PROMPTS), TEXT_LEN, TINY["d_model"])
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    assert not out[ref == 0].any()  # zeros exactly where diffusers has them

    # the same ids and mask as transformers' tokenizer (truncation to 16 with </s>, padding, cleaning)
    ids, mask = enc.tokenize(PROMPTS)
    hf = hf_tok([clean_prompt(p) for p in PROMPTS], padding="max_length", max_length=TEXT_LEN, truncation=True,
                add_special_tokens=True, return_attention_mask=True, return_tensors="np")
    np.testing.assert_array_equal(ids, hf["input_ids"])
    np.testing.assert_array_equal(mask, hf["attention_mask"])
    assert mask[2].sum() == TEXT_LEN and ids[2, -1] == 1 and mask[3].sum() == 1  # truncated; empty = </s>
    assert clean_prompt(PROMPTS[1]) == "another & longer prompt of a red cat"

    # a transformers folder whose tokenizer is the sibling tokenizer/ (diffusers layout)
    enc2 = load_text_encoder(pipeline_dir / "text_encoder", "float32", text_len=TEXT_LEN)
    np.testing.assert_allclose(np.asarray(enc2.encode(PROMPTS[:1])), ref[:1], atol=1e-4, rtol=0)


def test_cache_encodes_each_prompt_once(pipeline_dir):
    model = load_umt5(pipeline_dir / "text_encoder", "float32")
    enc = TextEncoder(model, PromptTokenizer(pipeline_dir / "tokenizer", TEXT_LEN), cache_size=2)
    first = np.asarray(enc.encode(["a cat", "the dog"]))
    assert enc.stats["network_calls"] == 1
    again = np.asarray(enc.encode(["the dog", "a  cat ", "the dog"]))  # cleaned keys: same prompts
    assert enc.stats["network_calls"] == 1
    np.testing.assert_array_equal(again, first[[1, 0, 1]])
    enc.encode("red video")  # evicts the least recently used: "the dog" (then "a cat" was looked up)
    assert enc.stats["network_calls"] == 2
    enc.encode(["a cat"])
    assert enc.stats["network_calls"] == 2
    enc.encode(["the dog"])
    assert enc.stats["network_calls"] == 3
    assert enc.stats["misses"] == 4 and enc.stats["hits"] == 4


def test_save_and_reload_roundtrip(tmp_path, pipeline_dir):
    enc = load_text_encoder(pipeline_dir, "float32", text_len=TEXT_LEN)
    comp = save_text_encoder(enc, tmp_path / "model", dtype="bfloat16")
    meta = json.loads((comp / "config.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["config"] == dataclasses.asdict(enc.config)
    back = load_text_encoder(tmp_path / "model", text_len=TEXT_LEN)
    saved, before = flat_state(back.model), flat_state(enc.model)
    assert set(saved) == set(before)
    for p, v in saved.items():  # the values, rounded to bfloat16 (not only the dtype)
        assert v.dtype == jax.numpy.bfloat16, p
        np.testing.assert_array_equal(np.asarray(v), np.asarray(before[p]).astype(jax.numpy.bfloat16), err_msg=str(p))


def test_clear_errors(tmp_path, pipeline_dir, hf_model):
    sd = {_wan_name(k): v for k, v in hf_model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    pth = tmp_path / "t5.pth"
    torch.save(sd, pth)
    with pytest.raises(CheckpointError, match="no umT5 tokenizer found"):
        load_text_encoder(pth)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_text_encoder(pth, tokenizer=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        convert_text_encoder(pth, tmp_path / "out", tokenizer=tmp_path / "empty")

    broken = dict(sd)
    del broken["blocks.1.ffn.fc1.weight"]
    broken["blocks.1.ffn.extra.weight"] = torch.zeros(2)
    bad = tmp_path / "bad.pth"
    torch.save(broken, bad)
    with pytest.raises(CheckpointError, match=r"missing 1 key\(s\): encoder.block.1.layer.1.DenseReluDense.wi_1"
                                              r".*1 unexpected key\(s\): blocks.1.ffn.extra.weight"):
        load_text_encoder(bad, tokenizer=pipeline_dir / "tokenizer")
    with pytest.raises(CheckpointError, match="not a umT5 encoder checkpoint"):
        torch.save({"foo.weight": torch.zeros(1)}, tmp_path / "other.pth")
        load_umt5(tmp_path / "other.pth")


def test_tied_input_embedding_copy_is_resolved():
    from vdot_jax.weights.umt5 import to_hf_names

    def source(keys):
        return TensorSource({k: (lambda: None) for k in keys}, {k: (4, 2) for k in keys}, "tied")

    rest = ["encoder.block.0.layer.0.SelfAttention.q.weight"]
    both = to_hf_names(source(["shared.weight", "encoder.embed_tokens.weight", *rest]))
    assert sorted(both.keys()) == sorted(["shared.weight", *rest])
    only = to_hf_names(source(["encoder.embed_tokens.weight", *rest]))
    assert sorted(only.keys()) == sorted(["shared.weight", *rest])
    wrapped = to_hf_names(source(["model.token_embedding.weight", "model.blocks.0.attn.q.weight"]))
    assert sorted(wrapped.keys()) == sorted(["shared.weight", *rest])
