"""Checkpoint conversion: original Wan and diffusers layouts, formats users hold, real-size coverage, errors."""

import dataclasses
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from oracles import TINY_VACE, diffusers_transformer, source_of, state_numpy
from vdot_jax.cli import main as vdot
from vdot_jax.models.config import PRESETS, WanConfig
from vdot_jax.weights.checkpoint_io import CheckpointError, save_safetensors
from vdot_jax.weights.convert import load_transformer, read_transformer_checkpoint
from vdot_jax.weights.keymap import convert_tensors
from vdot_jax.weights.params import flat_state
from vdot_jax.weights.wan_transformer import WAN_TO_DIFFUSERS, infer_config, transformer_keymap

# head_dim 128 like every real Wan, yet matching no release: its head count and VACE positions are ambiguous.
INFERABLE = WanConfig(dim=256, ffn_dim=48, num_heads=2, num_layers=4, in_channels=4, out_channels=4,
                      text_dim=24, freq_dim=32, vace_layers=(0, 2), vace_in_channels=12)


@pytest.fixture(scope="module")
def ref_sd():
    return state_numpy(diffusers_transformer(TINY_VACE))


def to_original(sd):
    out = {}
    for k, v in sd.items():
        orig = WAN_TO_DIFFUSERS.backward(k)
        assert orig is not None, f"no original name for {k}"
        out[orig] = v
    return out


def test_original_layout_gives_the_tensors_diffusers_converter_gives(ref_sd):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    original = to_original(ref_sd)
    theirs = convert_wan_transformer_to_diffusers({k: torch.tensor(v) for k, v in original.items()})
    assert set(theirs) == set(ref_sd)  # our inverse table is the inverse of diffusers' converter
    km, shapes = transformer_keymap(TINY_VACE)
    ours = convert_tensors(source_of(original), km, shapes, rename=WAN_TO_DIFFUSERS.forward)
    via_diffusers = convert_tensors(source_of({k: v.numpy() for k, v in theirs.items()}), km, shapes)
    for p in shapes:
        np.testing.assert_array_equal(ours[p], via_diffusers[p], err_msg=str(p))


def test_release_style_pt_with_nesting_and_prefixes(ref_sd, tmp_path):
    """vdot_14b.pt is {'generator': {...}} with FSDP/model prefixes; we read it like the plain file."""
    original = to_original(ref_sd)
    wrapped = {"generator": {f"model._fsdp_wrapped_module.{k}": torch.tensor(v) for k, v in original.items()}}
    torch.save(wrapped, tmp_path / "vdot.pt")
    cfg, flat = read_transformer_checkpoint(tmp_path / "vdot.pt", config=TINY_VACE)
    save_safetensors(tmp_path / "plain.safetensors", ref_sd)
    _, plain = read_transformer_checkpoint(tmp_path / "plain.safetensors", config=TINY_VACE)
    for p in plain:
        np.testing.assert_array_equal(flat[p], plain[p])


def test_several_state_dicts_need_a_key(ref_sd, tmp_path):
    ema = {k: v + 1.0 for k, v in ref_sd.items()}  # two different dicts: the key must pick the right one
    torch.save({"generator": {k: torch.tensor(v) for k, v in ref_sd.items()},
                "generator_ema": {k: torch.tensor(v) for k, v in ema.items()}, "step": 3}, tmp_path / "two.pt")
    with pytest.raises(CheckpointError, match="several state dicts .*--key"):
        read_transformer_checkpoint(tmp_path / "two.pt", config=TINY_VACE)
    km, shapes = transformer_keymap(TINY_VACE)
    for key, sd in (("generator_ema", ema), ("generator", ref_sd)):
        _, flat = read_transformer_checkpoint(tmp_path / "two.pt", config=TINY_VACE, key=key)
        want = convert_tensors(source_of(sd), km, shapes)
        assert set(flat) == set(want)
        for p in want:
            np.testing.assert_array_equal(flat[p], want[p], err_msg=f"{key}: {p}")


class _Evil:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"blocks.0.weight": _Evil()}, f)
    with pytest.raises(CheckpointError, match="refusing to load .*evil.pth"):
        read_transformer_checkpoint(tmp_path / "evil.pth")
    assert "ran code" not in capsys.readouterr().out


def test_diffusers_sharded_folder_and_config(tmp_path):
    model = diffusers_transformer(TINY_VACE)
    model.save_pretrained(tmp_path / "dm", max_shard_size="50KB", safe_serialization=True)
    assert (tmp_path / "dm" / "diffusion_pytorch_model.safetensors.index.json").exists()
    cfg, flat = read_transformer_checkpoint(tmp_path / "dm")
    assert cfg == TINY_VACE
    km, shapes = transformer_keymap(cfg)
    direct = convert_tensors(source_of(state_numpy(model)), km, shapes)
    for p in shapes:
        np.testing.assert_array_equal(flat[p], direct[p])


def test_config_not_inferred_from_shapes_when_they_are_ambiguous(tmp_path):
    """Head count and VACE positions are not in the tensors: a model matching no release needs its config."""
    sd = state_numpy(diffusers_transformer(INFERABLE))
    with pytest.raises(CheckpointError, match="head count .* and the VACE layer positions .*--config"):
        infer_config(source_of(sd))
    save_safetensors(tmp_path / "orig.safetensors", to_original(sd))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanVACETransformer3DModel",
                                                      **INFERABLE.to_diffusers()}))
    cfg, _ = read_transformer_checkpoint(tmp_path / "orig.safetensors")  # the config.json beside it
    assert cfg == INFERABLE


def test_cli_round_trip_and_bf16(ref_sd, tmp_path, capsys):
    save_safetensors(tmp_path / "w.safetensors", to_original(ref_sd))
    (tmp_path / "cfg.json").write_text(json.dumps(dataclasses.asdict(TINY_VACE)))
    assert vdot(["convert", "--src", str(tmp_path / "w.safetensors"), "--dst", str(tmp_path / "m"),
                 "--config", str(tmp_path / "cfg.json")]) == 0
    assert "converted a VACE Wan transformer" in capsys.readouterr().out
    direct = load_transformer(tmp_path / "w.safetensors", config=TINY_VACE)
    converted = load_transformer(tmp_path / "m")
    r = np.random.default_rng(0)
    x = r.normal(size=(1, 4, 3, 4, 6)).astype(np.float32)
    t, text = np.array([700.0], np.float32), r.normal(size=(1, 5, 24)).astype(np.float32)
    ctx = r.normal(size=(1, 12, 3, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(converted(x, t, text, ctx)), np.asarray(direct(x, t, text, ctx)))

    assert vdot(["convert", "--src", str(tmp_path / "w.safetensors"), "--dst", str(tmp_path / "b"),
                 "--config", str(tmp_path / "cfg.json"), "--dtype", "bfloat16"]) == 0
    half = load_transformer(tmp_path / "b")
    for (p, a), b in zip(flat_state(half).items(), flat_state(direct).values()):
        assert a.dtype == np.dtype("bfloat16"), p
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b.astype("bfloat16")))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("blocks.2.attn1.to_q.weight"), "missing 1 key.*blocks.2.attn1.to_q.weight"),
        (lambda sd: sd.__setitem__("blocks.0.attn1.extra.weight", np.zeros(3, np.float32)),
         "unexpected key.*blocks.0.attn1.extra.weight"),
        (lambda sd: sd.__setitem__("proj_out.bias", np.zeros(5, np.float32)),
         r"mis-shaped.*proj_out.bias has shape \(5,\), expected \(16,\)"),
    ],
)
def test_key_errors_name_the_key(ref_sd, tmp_path, capsys, edit, message):
    sd = dict(ref_sd)
    edit(sd)
    save_safetensors(tmp_path / "bad.safetensors", sd)
    (tmp_path / "cfg.json").write_text(json.dumps(dataclasses.asdict(TINY_VACE)))
    code = vdot(["convert", "--src", str(tmp_path / "bad.safetensors"), "--dst", str(tmp_path / "m"),
                 "--config", str(tmp_path / "cfg.json")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "m" / "transformer").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nope.safetensors", "does not exist"),
    (lambda p: (p / "notes.txt").write_text("hello") and p / "notes.txt", "not a checkpoint file"),
    (lambda p: p, "contains no checkpoint"),
    (lambda p: (p / "x.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage") and p / "x.safetensors",
     "not a readable safetensors file"),
])
def test_paths_that_are_not_checkpoints(tmp_path, capsys, make, message):
    src = make(tmp_path)
    assert vdot(["convert", "--src", str(src), "--dst", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_non_wan_checkpoint_is_named(tmp_path, capsys):
    save_safetensors(tmp_path / "other.safetensors", {"encoder.layer.0.weight": np.zeros((2, 2), np.float32)})
    assert vdot(["convert", "--src", str(tmp_path / "other.safetensors"), "--dst", str(tmp_path / "o")]) == 2
    assert "not a Wan/VACE transformer checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_real_size_key_map_covers_diffusers_exactly(name):
    """Every parameter of our abstract real-size model has a diffusers key of the same shape, and back;
    every diffusers key also has an original-Wan name that diffusers' converter maps back to it."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    cfg = PRESETS[name]
    with torch.device("meta"):
        ref = (WanVACETransformer3DModel if cfg.is_vace else WanTransformer3DModel)(**cfg.to_diffusers())
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    km, _ = transformer_keymap(cfg)
    assert km.external_shapes() == theirs
    original = {WAN_TO_DIFFUSERS.backward(k): k for k in theirs}
    assert None not in original
    back = convert_wan_transformer_to_diffusers({k: torch.empty(0) for k in original})
    assert set(back) == set(theirs)


def test_console_script_reports_one_sentence(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vdot_jax.cli", "convert", "--src", str(tmp_path / "missing.pt"),
                        "--dst", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"vdot convert: error: checkpoint path {tmp_path / 'missing.pt'} does not exist"
