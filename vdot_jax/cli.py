"""The ``vdot`` command. Each subcommand lives in its own function; heavy imports happen inside them."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence


class UserError(Exception):
    """An error the user can fix; printed as one sentence without a traceback."""


def _user_errors():
    from vdot_jax.weights.checkpoint_io import CheckpointError

    return (UserError, CheckpointError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def _progress(desc: str):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, tests).
    return lambda it: tqdm(list(it), desc=desc, unit="tensor", leave=False, mininterval=1.0, disable=None)


def cmd_convert(args) -> None:
    import json
    from pathlib import Path

    from vdot_jax.models.config import WanConfig, preset
    from vdot_jax.weights.convert import convert_transformer

    config = None
    if args.config:
        p = Path(args.config)
        config = WanConfig.from_dict(json.loads(p.read_text())) if p.suffix == ".json" else preset(args.config)
    t0 = time.time()
    out = convert_transformer(args.src, args.dst, dtype=args.dtype, config=config, key=args.key,
                              progress=_progress("converting"))
    meta = json.loads((out / "config.json").read_text())
    cfg = WanConfig.from_dict(meta["config"])
    print(f"converted a {cfg.describe()} to {out} as {args.dtype} in {time.time() - t0:.1f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdot",
        description="VDOT distillation of Wan2.1-VACE into a 4-step unified video generator, in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
    p.set_defaults(func=cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except _user_errors() as e:
        print(f"vdot {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
