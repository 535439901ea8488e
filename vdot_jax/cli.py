"""The ``vdot`` command: one subcommand per module of ``vdot_jax.commands`` (listed in ``COMMANDS``)."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMANDS = ("demo", "convert", "generate", "train", "precompute", "export", "eval", "plan")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdot",
        description="VDOT distillation of Wan2.1-VACE into a 4-step unified video generator, in JAX.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"vdot_jax.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"vdot_jax.commands.{name}":
                raise
            continue  # not written yet
        module.register(sub)
    return parser


def _user_errors():
    from vdot_jax.commands.common import UserError
    from vdot_jax.weights.checkpoint_io import CheckpointError

    return (UserError, CheckpointError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):  # only commands that opt in take extra arguments
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        args.func(args)
    except _user_errors() as e:
        print(f"vdot {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
