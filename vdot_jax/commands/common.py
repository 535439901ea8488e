"""Helpers shared by the subcommands."""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; ``vdot`` prints it as one sentence without a traceback."""


def progress(desc: str, unit: str = "it"):
    """A tqdm wrapper for iterables; silent when stderr is not a terminal (logs, tests)."""
    from tqdm import tqdm

    return lambda it: tqdm(it, desc=desc, unit=unit, leave=False, mininterval=1.0, disable=None)
