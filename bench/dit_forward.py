"""DiT forward time and achieved TFLOP/s, ours vs PyTorch diffusers on the same card, as JSON.

    python bench/dit_forward.py --models vace-1.3b,1.3b,14b --out out/dit_forward.json     # GPU
    python bench/dit_forward.py --tiny                                                     # CPU smoke

Random weights in bf16, batch 1, 512 text tokens. The PyTorch reference (diffusers, SDPA) runs first in
the same process when torch with CUDA and diffusers are importable, and is freed before JAX allocates.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the card with the torch reference
sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from common import device_info, time_fn, torch_cuda_available, torch_time_fn, write_json  # noqa: E402
from vdot_jax.models.config import PRESETS, WanConfig  # noqa: E402
from vdot_jax.models.wan import WanModel  # noqa: E402

MODELS = {"1.3b": "wan2.1-t2v-1.3b", "vace-1.3b": "wan2.1-vace-1.3b", "14b": "wan2.1-t2v-14b",
          "vace-14b": "wan2.1-vace-14b"}
TINY = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32, freq_dim=32, vace_layers=(0,))


def forward_flops(cfg: WanConfig, n: int, text_len: int) -> float:
    """Matmul + attention FLOPs of one forward (2 per multiply-add), as in shared/GPU.md."""
    d = cfg.dim
    per_block = 2 * n * (6 * d * d + 2 * d * cfg.ffn_dim) + 4 * text_len * d * d + 4 * n * n * d + 4 * n * text_len * d
    blocks = cfg.num_layers + len(cfg.vace_layers)
    return float(per_block * blocks)


def random_state(cfg: WanConfig, dtype):
    abstract = nnx.eval_shape(lambda: WanModel(cfg, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract)

    @jax.jit
    def init():
        return jax.tree.map(lambda a: a.astype(dtype), nnx.state(WanModel(cfg, rngs=nnx.Rngs(0))))

    return graphdef, init()


def bench_ours(cfg, shape, text_len, dtype, attention, iters):
    graphdef, state = random_state(cfg, jnp.dtype(dtype))
    f, h, w = shape
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (1, cfg.in_channels, f, h, w), jnp.float32)
    text = jax.random.normal(k[1], (1, text_len, cfg.text_dim), jnp.dtype(dtype))
    ctx = jax.random.normal(k[2], (1, cfg.vace_in_channels, f, h, w), jnp.float32) if cfg.is_vace else None
    t = jnp.array([500.0])

    @jax.jit
    def fwd(state, x, t, text, ctx):
        model = nnx.merge(graphdef, state)
        model.set_runtime(dtype=dtype, attention=attention)
        return model(x, t, text, ctx)

    compiled = fwd.lower(state, x, t, text, ctx).compile()
    mem = compiled.memory_analysis()
    timing = time_fn(lambda: compiled(state, x, t, text, ctx), iters=iters)
    del state
    gc.collect()
    return timing, {"temp_bytes": getattr(mem, "temp_size_in_bytes", None),
                    "argument_bytes": getattr(mem, "argument_size_in_bytes", None)}


def bench_torch(cfg, shape, text_len, iters):
    import torch
    from diffusers import WanTransformer3DModel, WanVACETransformer3DModel

    cls = WanVACETransformer3DModel if cfg.is_vace else WanTransformer3DModel
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = cls(**cfg.to_diffusers()).eval()
    torch.set_default_dtype(torch.float32)
    f, h, w = shape
    x = torch.randn(1, cfg.in_channels, f, h, w, device="cuda", dtype=torch.bfloat16)
    text = torch.randn(1, text_len, cfg.text_dim, device="cuda", dtype=torch.bfloat16)
    kw = {}
    if cfg.is_vace:
        kw["control_hidden_states"] = torch.randn(1, cfg.vace_in_channels, f, h, w, device="cuda", dtype=torch.bfloat16)
    t = torch.tensor([500], device="cuda")

    def run():
        with torch.no_grad():
            return model(x, t, text, return_dict=False, **kw)[0]

    timing = torch_time_fn(run, iters=iters)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    return timing


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vace-1.3b,1.3b,14b", help=f"comma list of {sorted(MODELS)}")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--text-len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--attention", default="auto", help="auto: cudnn on GPU, splash on TPU, xla elsewhere")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    ap.add_argument("--tiny", action="store_true", help="a tiny model at 9x64x64 (CPU smoke test)")
    ap.add_argument("--out", default=None, help="JSON result path")
    args = ap.parse_args()

    from vdot_jax.models.attention import resolve

    attention = resolve(args.attention)
    frames, height, width = (9, 64, 64) if args.tiny else (args.frames, args.height, args.width)
    shape = (1 + (frames - 1) // 4, height // 8, width // 8)
    configs = {"tiny": TINY} if args.tiny else {m: PRESETS[MODELS[m]] for m in args.models.split(",")}
    text_len = 16 if args.tiny else args.text_len
    results = []
    for name, cfg in configs.items():
        n = shape[0] * (shape[1] // 2) * (shape[2] // 2)
        flops = forward_flops(cfg, n, text_len)
        row = {"model": name, "tokens": n, "tflop": flops / 1e12}
        if not args.no_torch and torch_cuda_available():
            ref = bench_torch(cfg, shape, text_len, args.iters)
            row["torch"] = {**ref, "tflops_per_s": flops / ref["median_s"] / 1e12}
        timing, mem = bench_ours(cfg, shape, text_len, args.dtype, attention, args.iters)
        row["ours"] = {**timing, **mem, "tflops_per_s": flops / timing["median_s"] / 1e12}
        if "torch" in row:
            row["speedup_vs_torch"] = row["torch"]["median_s"] / timing["median_s"]
        results.append(row)
        print(row, flush=True)
    write_json({"bench": "dit_forward", "video": [frames, height, width], "dtype": args.dtype,
                "attention": attention, **device_info(), "results": results}, args.out)


if __name__ == "__main__":
    main()
