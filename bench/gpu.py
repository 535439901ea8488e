"""One command for a lent GPU (at most ~9.5 minutes on one H100/H200): every GPU figure docs/performance.md needs.

    python bench/gpu.py --out out/gpu.json          # on the GPU machine, from the repository root
    python bench/gpu.py --tiny --out out/gpu.json   # CPU smoke test of the same sections

Sections, each one subprocess of an existing bench script under its own time limit, the JSON rewritten after
each (so a cut-off run keeps what finished):

1. ``dit_forward``  VACE-1.3B DiT forward at 81x480x832, ours (cuDNN) against diffusers (SDPA)
2. ``vae``          Wan VAE decode (and encode) in float32 and bfloat16, ours against diffusers
3. ``student``      the 4-step student pipeline end to end (text, conditions, denoise, decode), no teacher
4. ``batch``        the batched sampler (``vdot generate --batch``): videos/s at 1 and 4 videos per call
5. ``generator``    one generator phase (generator_dmd_ot) and the OT term's share of it
6. ``stage2_4gpu``  the VACE-14B stage-2 step at real size on 4 GPUs, sharded as configs/wan14b_stage2_vace_v5p8.py
                    (memory and time per phase); records ``"skipped": "needs 4 GPUs"`` on fewer

The GPU image lacks some wheels; ``WHEELS`` lists them (``--wheels`` prints the pip download command). Carry
them in ``.whl/`` (downloaded with the command ``--wheels`` prints) and install with
``pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# not in the GPU image (it has jax, flax, optax, orbax-checkpoint, chex, torch, transformers)
WHEELS = ["ott-jax==0.6.0", "jaxopt==0.8.5", "ml-collections==1.1.0", "grain==0.2.18", "array-record==0.8.6",
          "portpicker", "diffusers==0.42.1", "importlib-metadata", "ftfy==6.3.1", "wcwidth", "imageio-ffmpeg==0.8.1"]

# (name, script, real-size arguments, --tiny arguments, seconds allowed on the GPU)
SECTIONS = [
    ("dit_forward", "dit_forward.py", ["--models", "vace-1.3b", "--iters", "3"], ["--tiny", "--no-torch"], 100),
    ("vae", "vae.py", ["--repeats", "2"], ["--tiny", "--torch-dtypes", ""], 120),
    ("student", "generate.py", ["--no-teacher", "--repeats", "2"], ["--tiny", "--no-teacher", "--no-torch",
                                                                     "--repeats", "1"], 150),
    ("batch", "generate.py", ["--batch", "1x1,1x4", "--batch-calls", "2"], ["--tiny", "--batch", "1x1,1x2",
                                                                             "--batch-calls", "1"], 90),
    ("generator", "train_step.py", ["--phases", "generator_dmd_ot", "--iters", "2"], ["--tiny", "--phases",
                                                                                      "generator_dmd_ot"], 90),
    ("stage2_4gpu", "stage2_4gpu.py", ["--iters", "2"], ["--tiny", "--iters", "1", "--phases",
                                                          "critic_flow,generator_gan"], 300),
]


def run_section(name, script, args, limit, out_json):
    t0 = time.perf_counter()
    cmd = [sys.executable, str(HERE / script), *args, "--out", str(out_json)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e.stdout or "")[-2000:] if e.stdout else ""
    result = json.loads(out_json.read_text()) if out_json.exists() else None
    return {"command": " ".join(cmd[1:]), "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "result": result, "log_tail": None if rc == 0 else tail}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/gpu.json", help="JSON written after each section")
    ap.add_argument("--tiny", action="store_true", help="tiny models on any backend (CPU smoke test)")
    ap.add_argument("--sections", default=",".join(s[0] for s in SECTIONS))
    ap.add_argument("--wheels", action="store_true", help="print the wheels to carry to the GPU machine and exit")
    a = ap.parse_args(argv)
    if a.wheels:
        print("python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform "
              "manylinux2014_x86_64 -d .whl " + " ".join(WHEELS))
        return 0
    chosen = a.sections.split(",")
    unknown = sorted(set(chosen) - {s[0] for s in SECTIONS})
    if unknown:
        ap.error(f"unknown sections {unknown}; choose from {[s[0] for s in SECTIONS]}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"bench": "gpu", "tiny": a.tiny, "wheels": WHEELS, "sections": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, script, real, tiny, limit in SECTIONS:
            if name not in chosen:
                continue
            print(f"[bench/gpu] {name} ...", flush=True)
            # the limits keep a GPU run within ~9.5 minutes; a CPU smoke run takes what it takes
            sec = run_section(name, script, tiny if a.tiny else real, None if a.tiny else limit,
                              Path(tmp) / f"{name}.json")
            report["sections"][name] = sec
            out.write_text(json.dumps(report, indent=2, default=str))
            print(f"[bench/gpu] {name}: rc {sec['rc']} in {sec['seconds']} s -> {out}", flush=True)
    bad = [n for n, s in report["sections"].items() if s["rc"] != 0]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
