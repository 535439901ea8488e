"""Tiny random PyTorch reference models (diffusers) and their weights, shared by the parity tests."""

from __future__ import annotations

import numpy as np
import torch

from vdot_jax.models.config import WanConfig
from vdot_jax.weights.checkpoint_io import TensorSource

# Tiny shapes that still exercise everything: 2 heads of 16 (RoPE split 8/4/4), text dim != model dim,
# VACE hints at unevenly spaced layers.
TINY_T2V = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=4, in_channels=4, out_channels=4,
                     text_dim=24, freq_dim=32, rope_max_seq_len=64)
TINY_VACE = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=5, in_channels=4, out_channels=4,
                      text_dim=24, freq_dim=32, rope_max_seq_len=64, vace_layers=(0, 1, 3), vace_in_channels=12)


def diffusers_transformer(cfg: WanConfig, seed: int = 0):
    """A diffusers Wan(VACE)Transformer3DModel with every parameter perturbed (no zero-init left)."""
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    torch.manual_seed(seed)
    kw = cfg.to_diffusers()
    cls = WanVACETransformer3DModel if cfg.is_vace else WanTransformer3DModel
    model = cls(**kw).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def source_of(sd: dict[str, np.ndarray], origin: str = "test") -> TensorSource:
    return TensorSource({k: (lambda v=v: v) for k, v in sd.items()}, {k: tuple(v.shape) for k, v in sd.items()}, origin)


def run_diffusers(model, x, t, text, context=None, scale=None) -> np.ndarray:
    kw = {}
    if context is not None:
        kw["control_hidden_states"] = torch.tensor(context)
        if scale is not None:
            kw["control_hidden_states_scale"] = torch.tensor(np.asarray(scale, np.float32))
    with torch.no_grad():
        out = model(torch.tensor(x), torch.tensor(t), torch.tensor(text), return_dict=False, **kw)[0]
    return out.numpy()
