"""The architecture of a converted checkpoint is never guessed: the config.json beside the weights or --config,
else a released model the tensor shapes match exactly; anything else is refused, naming what is ambiguous."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from flax import nnx

from safety_helpers import refused
from vdot_jax.cli import main as vdot
from vdot_jax.models.config import PRESETS, WanConfig
from vdot_jax.models.wan import WanModel
from vdot_jax.weights.checkpoint_io import CheckpointError, TensorSource
from vdot_jax.weights.convert import load_transformer
from vdot_jax.weights.export import export_transformer
from vdot_jax.weights.params import flat_state
from vdot_jax.weights.wan_transformer import WAN_TO_DIFFUSERS, infer_config, to_diffusers_names

# head width 16 (not Wan's 128), VACE hints at uneven layers: nothing of it can be told from the tensors
ODD = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=5, in_channels=4, out_channels=4, text_dim=24,
                freq_dim=32, rope_max_seq_len=64, vace_layers=(0, 1, 3), vace_in_channels=12)


@pytest.fixture(scope="module")
def wan_export(tmp_path_factory):
    """ODD exported in original Wan names (weights + the release-style config.json), and the model itself."""
    model = WanModel(ODD, rngs=nnx.Rngs(3))
    out = tmp_path_factory.mktemp("wan") / "export"
    export_transformer(flat_state(model), ODD, out, layout="wan")
    return out, model


def _same(a, b):
    for (p, x), y in zip(flat_state(a).items(), flat_state(b).values()):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))


def test_wan_export_round_trips_through_convert(wan_export, tmp_path, capsys):
    out, model = wan_export
    assert vdot(["convert", "--src", str(out), "--dst", str(tmp_path / "m")]) == 0
    back = load_transformer(tmp_path / "m")
    assert back.cfg == ODD  # 2 heads of 16 and VACE layers (0, 1, 3), read from the config.json
    _same(back, model)
    # the weights file alone, in its folder: the config.json beside it is read too
    assert vdot(["convert", "--src", str(out / "diffusion_pytorch_model.safetensors"), "--dst",
                 str(tmp_path / "f")]) == 0
    assert load_transformer(tmp_path / "f").cfg == ODD


def test_bare_checkpoint_needs_config_and_takes_it(wan_export, tmp_path, capsys):
    out, model = wan_export
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(out / "diffusion_pytorch_model.safetensors", bare / "w.safetensors")
    refused(capsys, ["convert", "--src", bare / "w.safetensors", "--dst", tmp_path / "m"],
            "head count", "VACE layer positions", "--config")
    assert not (tmp_path / "m").exists()
    assert vdot(["convert", "--src", str(bare / "w.safetensors"), "--dst", str(tmp_path / "m"),
                 "--config", str(out / "config.json")]) == 0  # a Wan config.json
    _same(load_transformer(tmp_path / "m"), model)
    (tmp_path / "diffusers.json").write_text(json.dumps({"_class_name": "WanVACETransformer3DModel",
                                                          **ODD.to_diffusers()}))
    assert vdot(["convert", "--src", str(bare / "w.safetensors"), "--dst", str(tmp_path / "d"),
                 "--config", str(tmp_path / "diffusers.json")]) == 0  # a diffusers config.json
    assert load_transformer(tmp_path / "d").cfg == ODD


def _shapes_only(cfg: WanConfig, drop_block: int | None = None, wrap: str = "") -> TensorSource:
    """The original-Wan key/shape layout of a real-size model, with no tensor allocated (meta device)."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    with torch.device("meta"):
        ref = (WanVACETransformer3DModel if cfg.is_vace else WanTransformer3DModel)(**cfg.to_diffusers())
    shapes = {wrap + WAN_TO_DIFFUSERS.backward(k): tuple(v.shape) for k, v in ref.state_dict().items()
              if drop_block is None or not k.startswith(f"blocks.{drop_block}.")}

    def never():
        raise AssertionError("a tensor was read")

    return TensorSource({k: never for k in shapes}, shapes, "vdot_14b.pt")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_released_layouts_need_no_flag(name):
    """The released checkpoints (vdot_14b.pt: VACE-14B in original names under FSDP prefixes) convert with no
    --config: their shapes match one release exactly."""
    assert infer_config(to_diffusers_names(_shapes_only(PRESETS[name], wrap="model._fsdp_wrapped_module."))) \
        == PRESETS[name]


def test_a_release_missing_a_block_is_refused():
    cfg = PRESETS["wan2.1-vace-14b"]
    with pytest.raises(CheckpointError, match="has no blocks 17 .*incomplete"):
        infer_config(to_diffusers_names(_shapes_only(cfg, drop_block=17)))
    with pytest.raises(CheckpointError, match="39 layers .*block missing.*--config"):
        infer_config(to_diffusers_names(_shapes_only(cfg, drop_block=39)))


def test_folder_with_only_a_pt_is_read(tmp_path, capsys):
    """A folder holding only vdot_14b.pt is a checkpoint folder, not "no checkpoint"."""
    sd = {k: torch.zeros(v) for k, v in _shapes_only(ODD).__dict__["_shapes"].items()}
    torch.save(sd, tmp_path / "vdot_14b.pt")
    (tmp_path / "cfg.json").write_text(json.dumps(dataclasses.asdict(ODD)))
    assert vdot(["convert", "--src", str(tmp_path), "--dst", str(tmp_path / "m"), "--config",
                 str(tmp_path / "cfg.json")]) == 0
    assert load_transformer(tmp_path / "m").cfg == ODD
