"""``vdot convert``: official checkpoints -> a vdot-jax model directory."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vdot_jax.commands.common import progress


def run(args) -> None:
    from vdot_jax.models.config import WanConfig, preset
    from vdot_jax.weights.convert import convert_transformer

    config = None
    if args.config:
        p = Path(args.config)
        config = WanConfig.from_dict(json.loads(p.read_text())) if p.suffix == ".json" else preset(args.config)
    t0 = time.time()
    out = convert_transformer(args.src, args.dst, dtype=args.dtype, config=config, key=args.key,
                              progress=lambda it: progress("converting", "tensor")(list(it)))
    cfg = WanConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
    print(f"converted a {cfg.describe()} to {out} as {args.dtype} in {time.time() - t0:.1f} s")


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official Wan/VACE/VDOT or diffusers checkpoint into a vdot-jax model directory",
        description=(
            "Convert a transformer checkpoint into DST/transformer (orbax checkpoint + config.json). SRC may be "
            "a diffusers folder (config.json + safetensors, sharded with an index, or a whole pipeline folder), "
            "an original Wan/VACE *.safetensors file or folder (with or without index), or a torch .pt/.pth "
            "state dict (e.g. the released vdot_14b.pt), possibly nested and with wrapper prefixes. Pickles are "
            "read with weights_only=True; one that would run code is refused. The architecture is read from a "
            "diffusers config.json or inferred from the tensor shapes unless --config is given."
        ),
    )
    p.add_argument("--src", required=True, help="checkpoint file or folder")
    p.add_argument("--dst", required=True, help="output model directory")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="stored parameter dtype")
    p.add_argument("--key", default=None,
                   help="which state dict of a .pt holding several, e.g. 'generator' or 'generator_ema'")
    p.add_argument("--config", default=None,
                   help="architecture: a preset name (wan2.1-vace-14b, ...) or a JSON file of WanConfig fields")
    p.set_defaults(func=run)
