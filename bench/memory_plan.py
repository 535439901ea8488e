"""Per-device memory of the VDOT training state under a mesh, from the real sharding rules.

    XLA_FLAGS=--xla_force_host_platform_device_count=64 python bench/memory_plan.py \
        --preset wan2.1-vace-14b --mesh fsdp=64 --out out/memory.json

Builds the generator, the critic (trunk + GAN head), the frozen teacher and both AdamW states
abstractly (no memory is allocated), shards them with the logical rules, and reports bytes per device:
exactly what ``memory_analysis()`` counts as the step's (donated) arguments. Activation memory is
estimated for full remat (one float32 residual carry per layer saved, per example, sharded over
``context``) and should be confirmed on the target machine with the compiled step.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from common import write_json  # noqa: E402
from vdot_jax.distill.config import distill_config  # noqa: E402
from vdot_jax.distill.critic import Critic  # noqa: E402
from vdot_jax.models.config import PRESETS  # noqa: E402
from vdot_jax.models.wan import WanModel  # noqa: E402
from vdot_jax.parallel.logical import param_shardings  # noqa: E402
from vdot_jax.parallel.mesh import describe, make_mesh  # noqa: E402
from vdot_jax.parallel.sharding import sharding_stats  # noqa: E402
from vdot_jax.weights.params import abstract_model, flat_state  # noqa: E402

GiB = 2**30


def tree_bytes_per_device(flat_abstract, mesh, dtype=None):
    shardings = param_shardings({p: v.shape for p, v in flat_abstract.items()}, mesh)
    if dtype is not None:
        flat_abstract = {p: jax.ShapeDtypeStruct(v.shape, dtype) for p, v in flat_abstract.items()}
    return sharding_stats(flat_abstract, shardings)


def plan(preset: str, mesh_spec: str, tokens: int, text_len: int, batch_per_device: int) -> dict:
    cfg = PRESETS[preset]
    mesh = make_mesh(mesh_spec)
    gen = flat_state(abstract_model(lambda: WanModel(cfg, rngs=nnx.Rngs(0))))
    critic = flat_state(abstract_model(lambda: Critic(cfg, rngs=nnx.Rngs(0))))
    c = distill_config()
    rows = {
        "generator (fp32)": tree_bytes_per_device(gen, mesh),
        "critic + GAN head (fp32)": tree_bytes_per_device(critic, mesh),
        "teacher (bf16, frozen)": tree_bytes_per_device(gen, mesh, jnp.bfloat16),
    }
    # AdamW keeps two float32 moments per parameter, sharded like the parameter (b1 = 0 still stores mu).
    rows["generator AdamW (2 x fp32)"] = rows["generator (fp32)"]
    rows["critic AdamW (2 x fp32)"] = rows["critic + GAN head (fp32)"]
    state = {k: v.per_device_bytes * (2 if "AdamW" in k else 1) for k, v in rows.items()}
    if c.ema.decay > 0:
        state["generator EMA (fp32)"] = rows["generator (fp32)"].per_device_bytes
    context = mesh.shape["context"]
    carry = (cfg.num_layers + len(cfg.vace_layers)) * batch_per_device * (tokens // context) * cfg.dim * 4
    hints = len(cfg.vace_layers) * batch_per_device * (tokens // context) * cfg.dim * 2
    total = sum(state.values())
    return {
        "preset": preset, "mesh": describe(mesh), "devices": int(mesh.devices.size),
        "parameters": sum(v.size for v in gen.values()),
        "state_gib_per_device": {k: v / GiB for k, v in state.items()},
        "state_total_gib_per_device": total / GiB,
        "activations_full_remat_gib_per_device": (carry + hints) / GiB,
        "replicated_fraction": rows["generator (fp32)"].replicated_fraction,
        "tokens": tokens, "text_len": text_len, "batch_per_device": batch_per_device,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="wan2.1-vace-14b", choices=sorted(PRESETS))
    ap.add_argument("--mesh", default=None, help="default: fsdp over all devices")
    ap.add_argument("--tokens", type=int, default=21 * 30 * 52, help="video tokens (81x480x832 -> 32,760)")
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--batch-per-device", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    mesh = args.mesh or f"fsdp={jax.device_count()}"
    result = plan(args.preset, mesh, args.tokens, args.text_len, args.batch_per_device)
    write_json(result, args.out)


if __name__ == "__main__":
    main()
