"""The README's Python example runs as written against a tiny converted model, and means what it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from flax import nnx

from vdot_jax.models.config import WanConfig

# one block with its VACE hint: the example's path, at the least compile time
TINY = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=1, in_channels=4, out_channels=4, text_dim=24,
                 freq_dim=32, rope_max_seq_len=64, vace_layers=(0,), vace_in_channels=12)

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_example() -> str:
    text = README.read_text()
    section = text[text.index("## Using the model from Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_runs(tmp_path):
    from vdot_jax.models.wan import WanModel
    from vdot_jax.weights.convert import save_transformer

    model = WanModel(TINY, rngs=nnx.Rngs(0))
    save_transformer(model, tmp_path / "m")
    code = _python_example()
    assert '"converted/wan2.1-vace-1.3b"' in code
    r = np.random.default_rng(0)
    env = {
        "latents": r.normal(size=(1, 4, 3, 4, 6)).astype(np.float32),
        "timestep": np.array([700.0], np.float32),
        "text_embeds": r.normal(size=(1, 5, TINY.text_dim)).astype(np.float32),
        "ctx": r.normal(size=(1, TINY.vace_in_channels, 3, 4, 6)).astype(np.float32),
    }
    exec(code.replace("converted/wan2.1-vace-1.3b", str(tmp_path / "m")), env)
    flow = np.asarray(env["flow"], np.float32)
    want = np.asarray(model(env["latents"], env["timestep"], env["text_embeds"], env["ctx"], 1.0))
    assert flow.shape == want.shape == (1, 4, 3, 4, 6)
    assert env["model"].runtime.dtype == "bfloat16"
    np.testing.assert_allclose(flow, want, atol=0.1 * float(np.abs(want).max()))  # bfloat16 compute
