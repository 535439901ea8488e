"""The ``vdot`` command: one subcommand per module of ``vdot_jax.commands`` (listed in ``COMMANDS``)."""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
from typing import Sequence

COMMANDS = ("demo", "convert", "generate", "train", "precompute", "export", "eval", "plan", "prepare", "data", "ui")


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
    """What ``vdot`` reports as one line: ``VdotError`` (every error a user can cause; the message names the file or
    option) and the file-system errors of the paths the user gave. Anything else is a bug and keeps its traceback."""
    from vdot_jax.errors import VdotError

    return (VdotError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


_ENV_ERRNOS = {errno.EROFS: "the file system is read-only", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded"}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):  # only commands that opt in take extra arguments
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        code = args.func(args)
    except _user_errors() as e:
        print(f"vdot {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a command's own cleanup (finally blocks) has run; train saves on the first Ctrl-C
        print(f"vdot {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno not in _ENV_ERRNOS:
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"vdot {args.command}: error: {_ENV_ERRNOS[e.errno]}{where}; nothing more was written", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
