"""Exporting our transformer to diffusers and original Wan layouts, checked against diffusers itself."""

import numpy as np
import torch

from oracles import TINY_VACE, diffusers_transformer, run_diffusers, state_numpy
from vdot_jax.weights.checkpoint_io import save_safetensors
from vdot_jax.weights.convert import load_transformer
from vdot_jax.weights.export import export_transformer
from vdot_jax.weights.params import flat_state


def test_diffusers_export_loads_in_diffusers_and_gives_our_output(tmp_path):
    from diffusers import WanVACETransformer3DModel

    save_safetensors(tmp_path / "w.safetensors", state_numpy(diffusers_transformer(TINY_VACE, seed=3)))
    ours = load_transformer(tmp_path / "w.safetensors", config=TINY_VACE)
    export_transformer(flat_state(ours), TINY_VACE, tmp_path / "out", max_shard_bytes=40_000)
    assert (tmp_path / "out" / "diffusion_pytorch_model.safetensors.index.json").exists()  # sharded
    theirs = WanVACETransformer3DModel.from_pretrained(tmp_path / "out").eval()
    r = np.random.default_rng(0)
    x = r.normal(size=(1, 4, 3, 4, 6)).astype(np.float32)
    t, text = np.array([321.0], np.float32), r.normal(size=(1, 5, 24)).astype(np.float32)
    ctx = r.normal(size=(1, 12, 3, 4, 6)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours(x, t, text, ctx)), run_diffusers(theirs, x, t, text, ctx), atol=1e-5)
    again = load_transformer(tmp_path / "out")  # and our own loader reads the folder back
    for (p, a), b in zip(flat_state(again).items(), flat_state(ours).values()):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(p))


def test_wan_export_is_what_diffusers_converter_turns_into_the_same_tensors(tmp_path):
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = state_numpy(diffusers_transformer(TINY_VACE, seed=4))
    save_safetensors(tmp_path / "w.safetensors", sd)
    ours = load_transformer(tmp_path / "w.safetensors", config=TINY_VACE)
    out = export_transformer(flat_state(ours), TINY_VACE, tmp_path / "wan", layout="wan", dtype="float32")
    from vdot_jax.weights.checkpoint_io import open_tensors

    exported = dict(open_tensors(out / "diffusion_pytorch_model.safetensors").items())
    back = convert_wan_transformer_to_diffusers({k: torch.tensor(np.asarray(v)) for k, v in exported.items()})
    assert set(back) == set(sd)
    for k, v in back.items():
        np.testing.assert_array_equal(v.numpy(), sd[k], err_msg=k)
    assert "blocks.0.self_attn.q.weight" in exported and "vace_blocks.0.before_proj.weight" in exported
