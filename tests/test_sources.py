"""``vdot_jax.sources.resolve``: every kind of model path, and the refusals that name the path (no model is built)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vdot_jax import sources
from vdot_jax.train import checkpoint as ckpt
from vdot_jax.weights import store


def _workdir(root, steps=(1, 2)):
    """A workdir whose checkpoints hold a one-leaf state (what resolve reads is the meta)."""
    cp = ckpt.Checkpointer(root, async_save=False)
    for step in steps:
        cp.save(step, {"params": {"w": np.zeros(2, np.float32)}}, {"step": step},
                {"mode": "flow", "models": {}, "has_ema": False})
    cp.close()
    return root


def test_each_kind_of_path(tmp_path):
    """Catches a resolver that mistakes one kind for another (e.g. a diffusers folder read as a model directory,
    or a workdir's newest step not being the one reported)."""
    store.save_component(tmp_path / "m", "vae", cls="WanVAE", config={}, flat_params={("w",): np.zeros(1)},
                         dtype="float32")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel"}))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "w.safetensors").write_bytes(b"")
    kinds = {name: sources.resolve(tmp_path / name).kind for name in ("m", "m/vae", "hf", "pipe", "w.safetensors")}
    assert kinds == {"m": "model_dir", "m/vae": "model_dir", "hf": "diffusers", "pipe": "diffusers",
                     "w.safetensors": "checkpoint"}
    assert sources.has_component(tmp_path / "m", "vae") and not sources.has_component(tmp_path / "m", "text_encoder")
    (tmp_path / "pipe" / "vae").mkdir()
    assert sources.has_component(tmp_path / "pipe", "vae")

    src = sources.resolve(_workdir(tmp_path / "wd"), ema=True)
    assert (src.kind, src.step, src.pinned, src.ema, src.network) == ("workdir", 2, False, False, "model")
    assert sources.resolve(tmp_path / "wd", step=1).pinned  # an asked-for step is read as is, no fallback


def test_refusals_name_the_path(tmp_path):
    """Catches a missing path reaching a loader (a deep traceback), a step silently ignored outside a workdir, a
    missing step replaced by another one, and a VAE looked for in a training workdir."""
    with pytest.raises(sources.SourceError, match=r"^VAE .*nope does not exist \(expected a converted model"):
        sources.resolve(tmp_path / "nope", what="VAE")
    (tmp_path / "f.pth").write_bytes(b"")
    with pytest.raises(sources.SourceError, match="is not a training workdir .* no step 3"):
        sources.resolve(tmp_path / "f.pth", step=3)
    wd = _workdir(tmp_path / "wd")
    with pytest.raises(ckpt.CheckpointMismatch, match=r"no checkpoint at step 5 \(it has: 1, 2\)"):
        sources.resolve(wd, step=5)
    with pytest.raises(sources.SourceError, match="training workdir, which holds a transformer only"):
        sources.load_vae(wd)
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(sources.SourceError, match="has no finished checkpoint"):
        sources.resolve(tmp_path / "empty")


def test_source_arch_reads_a_diffusers_config_without_weights(tmp_path):
    """A transformer folder and a pipeline folder (transformer/ inside) give the architecture of their config.json
    (no weights exist here: nothing else was read); a reader that looked for a vdot component index would fail."""
    from vdot_jax.models.config import WanConfig

    config = {"_class_name": "WanVACETransformer3DModel", "num_attention_heads": 2, "attention_head_dim": 32,
              "in_channels": 12, "out_channels": 12, "text_dim": 32, "ffn_dim": 256, "num_layers": 4,
              "vace_layers": [0, 2], "vace_in_channels": 28}
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    for folder in (tmp_path / "pipe" / "transformer", tmp_path / "hf"):
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config))
    expected = WanConfig.from_diffusers(config)
    assert (expected.dim, expected.text_dim, expected.vace_layers) == (64, 32, (0, 2))
    assert sources.source_arch(tmp_path / "hf") == expected == sources.source_arch(tmp_path / "pipe")
