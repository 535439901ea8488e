"""Time of each VDOT training phase and the OT term's share, on one device, as JSON.

    python bench/train_step.py --out out/train_step.json            # VACE-1.3B at 81x480x832 (GPU)
    python bench/train_step.py --tiny                               # CPU smoke test

Random weights: generator and critic float32 masters, teacher bf16, compute bf16, cuDNN attention on
GPU, full remat, one micro-batch of one video. Each phase is compiled once (compile time reported
separately), then run ``--iters`` times; the state is donated and fed back as in training. The OT share
is the time of ``ot_direction`` on the [1, 16, 21, 60, 104] x0 pair over the generator_dmd_ot phase.
Achieved TFLOP/s counts the DiT passes of each phase with ``dit_forward.forward_flops`` (a backward
pass as two forwards, remat recomputation as one more).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from common import device_info, time_fn, write_json  # noqa: E402
from dit_forward import TINY, forward_flops  # noqa: E402
from vdot_jax.distill.config import distill_config, ot_config  # noqa: E402
from vdot_jax.models.attention import resolve  # noqa: E402
from vdot_jax.distill.critic import Critic  # noqa: E402
from vdot_jax.distill.ot import ot_direction  # noqa: E402
from vdot_jax.distill.steps import PHASES, Distiller  # noqa: E402
from vdot_jax.models.config import PRESETS  # noqa: E402
from vdot_jax.models.wan import WanModel  # noqa: E402

# Forward-pass equivalents per phase (exit step 0 of the rollout: the cheapest; exits 1-3 add 1-3
# generator forwards): fwd = 1, fwd+bwd with full remat = 4.
PASSES = {
    "critic_flow": 1 + 4,  # generator sample (no grad) + critic fwd/bwd
    "critic_gan": 1 + 2 * 4,  # generator sample + critic fwd/bwd on fake and real
    "generator_dmd_ot": 4 + 2 * 2 + 2,  # generator fwd/bwd + teacher cond/uncond x 2 draws + critic x 2 draws
    "generator_gan": 4 + 2 * 4,  # generator fwd/bwd + critic fwd/bwd (for the input gradient) on fake and real
}


def build(cfg, dtype, attention):
    def make(cls, **kw):
        abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), **kw))
        state = jax.jit(lambda: nnx.state(cls(cfg, rngs=nnx.Rngs(0), **kw)))()
        model = nnx.merge(nnx.graphdef(abstract), state)
        (model.model if cls is Critic else model).set_runtime(dtype=dtype, attention=attention, remat="full")
        return model

    return make(WanModel), make(Critic), make(WanModel)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="wan2.1-vace-1.3b", choices=sorted(PRESETS))
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--tiny", action="store_true", help="a tiny model at 9x64x64 (CPU smoke test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    gpu = jax.devices()[0].platform == "gpu"
    cfg = TINY if args.tiny else PRESETS[args.preset]
    frames, height, width = (9, 64, 64) if args.tiny else (args.frames, args.height, args.width)
    f, h, w = 1 + (frames - 1) // 4, height // 8, width // 8
    text_len = 16 if args.tiny else 512
    dtype = "bfloat16" if gpu else "float32"
    generator, critic, teacher = build(cfg, dtype, resolve("auto"))  # cudnn on GPU, splash on TPU, xla on CPU
    c = distill_config()
    c.optim.accumulation = 1
    d = Distiller(generator, critic, teacher, c)
    state = d.init_state(generator, critic, teacher, consume=True)
    del generator, critic, teacher
    k = jax.random.split(jax.random.key(0), 4)
    batch = {
        "latents": jax.random.normal(k[0], (1, 1, cfg.in_channels, f, h, w)),
        "text": jax.random.normal(k[1], (1, 1, text_len, cfg.text_dim)),
        "neg_text": jax.random.normal(k[2], (1, 1, text_len, cfg.text_dim)),
    }
    if cfg.is_vace:
        batch["context"] = jax.random.normal(k[3], (1, 1, cfg.vace_in_channels, f, h, w))
    tokens = f * (h // 2) * (w // 2)
    fwd = forward_flops(cfg, tokens, text_len)
    rows = {}
    for name in args.phases.split(","):
        fn = d.phase(name)
        t0 = time.perf_counter()
        compiled = fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        holder = {"state": state}

        def run():
            holder["state"], m = compiled(holder["state"], batch)
            return m

        timing = time_fn(run, iters=args.iters)
        state = holder["state"]
        rows[name] = {**timing, "compile_s": compile_s,
                      "tflops_per_s": PASSES[name] * fwd / timing["median_s"] / 1e12}
        print(name, rows[name], flush=True)

    x = jax.random.normal(k[0], (1, cfg.in_channels, f, h, w))
    ot = jax.jit(lambda a, b: ot_direction(a, b, ot_config(c)))
    ot_timing = time_fn(lambda: ot(x, x * 0.8 + 0.1), iters=args.iters)
    result = {"bench": "train_step", "preset": "tiny" if args.tiny else args.preset, "video": [frames, height, width],
              "tokens": tokens, "compute_dtype": dtype, **device_info(), "phases": rows, "ot": ot_timing}
    if "generator_dmd_ot" in rows:
        result["ot_share_of_generator_step"] = ot_timing["median_s"] / rows["generator_dmd_ot"]["median_s"]
    write_json(result, args.out)


if __name__ == "__main__":
    main()
