"""Peak host memory of the chunked VAE decode and encode, 21 against 41 latent frames.

    python bench/vae_memory.py --out out/vae_memory.json                 # real Wan2.1 VAE, 64x64 frames, CPU
    python bench/vae_memory.py --tiny --out out/vae_memory_tiny.json     # tiny VAE (quick)

Each (operation, length) runs in a fresh process, so its peak resident set size (``ru_maxrss``) is its own:
model construction, compilation, the input, the output and the working set. The working set of the causal
chunked scan is bounded by one chunk, so going from 21 to 41 latent frames (81 to 161 video frames) should add
about the size of the longer input and output and nothing that scales with a per-frame activation. The JSON
holds every measurement and, per operation, the RSS growth next to the growth of input + output bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LATENT_FRAMES = (21, 41)


def _measure(op: str, latent_frames: int, size: int, tiny: bool) -> dict:
    """Runs in the child: build, compile and run one operation, then report the peak RSS."""
    import jax
    import numpy as np
    from flax import nnx

    from vdot_jax.models import vae as V

    cfg = V.VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                      temperal_downsample=(False, True, True), latents_mean=(0.0,) * 4,
                      latents_std=(1.0,) * 4) if tiny else V.VAEConfig()
    vae = V.WanVAE(cfg, rngs=nnx.Rngs(0))
    frames = 4 * (latent_frames - 1) + 1
    rng = np.random.default_rng(0)
    if op == "decode":
        x = rng.standard_normal((1, cfg.z_dim, latent_frames, size // 8, size // 8), np.float32)
        y = vae.decode(x)
    else:
        x = rng.uniform(-1, 1, (1, 3, frames, size, size)).astype(np.float32)
        y = vae.encode(x)
    y = np.asarray(jax.block_until_ready(y))
    return {"op": op, "latent_frames": latent_frames, "video_frames": frames, "size": size,
            "in_bytes": int(x.nbytes), "out_bytes": int(y.nbytes),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels (multiple of 8)")
    p.add_argument("--tiny", action="store_true", help="tiny VAE instead of the real Wan2.1 architecture")
    p.add_argument("--out", required=True, help="JSON result path")
    p.add_argument("--child", nargs=2, metavar=("OP", "LATENT_FRAMES"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_measure(a.child[0], int(a.child[1]), a.size, a.tiny)))
        return
    runs = []
    for op in ("decode", "encode"):
        for f in LATENT_FRAMES:
            cmd = [sys.executable, __file__, "--size", str(a.size), "--out", os.devnull, "--child", op, str(f)]
            cmd += ["--tiny"] if a.tiny else []
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{op} of {f} latent frames failed:\n{done.stderr[-2000:]}")
            out = done.stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{op} {f} latent frames: peak RSS {runs[-1]['peak_rss_bytes'] / 2**20:.0f} MiB", flush=True)
    summary = {}
    for op in ("decode", "encode"):
        short, long = [r for r in runs if r["op"] == op]
        io = (long["in_bytes"] + long["out_bytes"]) - (short["in_bytes"] + short["out_bytes"])
        summary[op] = {"rss_growth_mib": (long["peak_rss_bytes"] - short["peak_rss_bytes"]) / 2**20,
                       "input_output_growth_mib": io / 2**20}
        print(f"{op}: 21 -> 41 latent frames adds {summary[op]['rss_growth_mib']:.0f} MiB of peak RSS; "
              f"input + output grow by {summary[op]['input_output_growth_mib']:.0f} MiB", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"runs": runs, "summary": summary, "tiny": a.tiny}, indent=2))


if __name__ == "__main__":
    main()
