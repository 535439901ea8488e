"""The one base class of errors a user can cause and fix.

``vdot`` prints a ``VdotError`` as one line (``vdot CMD: error: MESSAGE``) and exits non-zero; every other
exception is a bug and keeps its traceback. Raise a subclass (or ``VdotError`` itself) with one sentence that
names the file or option and what was expected.
"""

from __future__ import annotations


class VdotError(Exception):
    """An error the user can fix; its message is one sentence naming the file/option and what was expected."""


class CheckpointError(VdotError, ValueError):
    """A checkpoint (or a tokenizer beside it) cannot be read or does not fit; raised by ``weights/`` and by the
    tokenizer in ``models/text_encoder``, which may not import ``weights/``."""
