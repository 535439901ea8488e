"""The stage-2 (distillation) step of VACE-14B on 4 GPUs at real size, sharded as on a v5p-8: memory and time of
each phase, as JSON.

    python bench/stage2_4gpu.py --out out/stage2_4gpu.json   # 4 GPUs (else: skipped)
    python bench/stage2_4gpu.py --tiny     # CPU smoke test: tiny model, 4 fake devices (fsdp=2,context=2)

configs/wan14b_stage2_vace_v5p8.py's run (one video split over the 4 devices by sequence, ``context=4``; the
train state split over all 4, ZeRO-3; AdamW moments in host memory; layer inputs offloaded; 3 micro-batches of
81x480x832) with random weights: each phase compiled once (its memory report: arguments, temporaries, peak,
host bytes per device), then run ``--iters`` times on random batches, the state donated and fed back. Fewer
than 4 devices: ``{"skipped": "needs 4 GPUs"}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
if "--tiny" in sys.argv:  # before jax is imported: 4 fake CPU devices
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from common import device_info, time_fn, write_json  # noqa: E402

flags.FLAGS.mark_as_parsed()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--phases", default="critic_flow,generator_dmd_ot,critic_gan,generator_gan")
    ap.add_argument("--tiny", action="store_true", help="configs/tiny.py's model on 4 fake CPU devices")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if jax.device_count() < 4:
        write_json({"bench": "stage2_4gpu", "skipped": "needs 4 GPUs", **device_info()}, args.out)
        return

    from vdot_jax.parallel.logical import activate
    from vdot_jax.parallel.sharding import compile_program
    from vdot_jax.train.config import apply_overrides, load_config
    from vdot_jax.train.loop import build, init_state
    from vdot_jax.train.plan import latent_grid

    if args.tiny:
        c = load_config("configs/tiny.py")
        apply_overrides(c, ["mesh.ici=fsdp=2,context=2", "mesh.opt_state_memory=host", "model.remat=offload",
                            "mesh.grad_dtype=compute", "data.batch_size=0", "optim.accumulation=3"])
        frames, height, width = int(c.data.toy.frames), int(c.data.toy.height), int(c.data.toy.width)
    else:
        c = load_config("configs/wan14b_stage2_vace_v5p8.py")
        apply_overrides(c, ["model.preset=wan2.1-vace-14b", "model.teacher=", "model.generator="])
        frames, height, width = 81, 480, 832
    run = build(c, mesh=None)
    state = init_state(run)
    a = run.arch
    f, h, w = latent_grid(c, frames, height, width)
    acc, b = int(c.optim.accumulation), run.batch_size
    text_len = int(c.data.toy.text_len) if args.tiny else 512
    r = np.random.default_rng(0)
    shapes = {"latents": (acc, b, a.in_channels, f, h, w), "text": (acc, b, text_len, a.text_dim),
              "neg_text": (acc, b, text_len, a.text_dim), "context": (acc, b, a.vace_in_channels, f, h, w)}
    batch = run.global_batch({k: r.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    bsh = {k: v.sharding for k, v in batch.items()}
    rows = {}
    with activate(run.mesh, run.rules):
        for name in args.phases.split(","):
            t0 = time.perf_counter()
            compiled, report = compile_program(run.trainer.phase(name, run.state_sharding, bsh), state, batch,
                                               name=name, mesh=run.mesh, rules=run.rules, catch=True)
            row = {"compile_s": round(time.perf_counter() - t0, 1), "line": report.line()}
            if compiled is not None:
                holder = {"state": state}

                def step(compiled=compiled, holder=holder):
                    holder["state"], m = compiled(holder["state"], batch)
                    return m

                try:  # the 14B programs do not fit 80 GB yet (docs/scaling.md): record the error and stop
                    row.update(time_fn(step, iters=args.iters))
                except Exception as e:  # noqa: BLE001
                    first = (str(e).strip().splitlines() or [""])[0]
                    row["error"] = f"{type(e).__name__}: {first[:300]}"
                    rows[name] = row
                    print(name, row, flush=True)
                    break  # the donated state is gone
                state = holder["state"]
                stats = jax.local_devices()[0].memory_stats() or {}
                row["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
            rows[name] = row
            print(name, row, flush=True)
    write_json({"bench": "stage2_4gpu", "tiny": args.tiny, "mesh": dict(run.mesh.shape),
                "video": [frames, height, width], "micro_batches": acc, **device_info(), "phases": rows}, args.out)


if __name__ == "__main__":
    main()
