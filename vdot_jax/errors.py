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


_FULL = ("RESOURCE_EXHAUSTED", "No space left", "Disk quota exceeded", "File too large")


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` is a full disk or quota, as OSError (ENOSPC, EDQUOT, EFBIG) or as the ``ValueError`` /
    ``RuntimeError`` that orbax and tensorstore raise for it (``RESOURCE_EXHAUSTED: ... No space left``)."""
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    return any(s in str(e) for s in _FULL)


def disk_full_error(path) -> OSError:
    """The one error a full disk becomes, whoever raised it: ``OSError(ENOSPC)`` naming ``path`` (``vdot`` prints it
    as one line: ``no space left on the device writing PATH; nothing more was written``)."""
    import errno
    import os

    return OSError(errno.ENOSPC, "No space left on device", os.fspath(path))


def _read_bytes(path) -> bytes:
    """Local paths and path objects with their own reader (etils.epath: gs://)."""
    if hasattr(path, "read_bytes"):
        return path.read_bytes()
    with open(path, "rb") as f:
        return f.read()


def read_utf8(path, what: str, error: type = VdotError) -> str:
    """A text file the user gave (manifest, index, ...) as str; a byte that is not UTF-8 is ``error`` naming the
    file, line and byte, not a UnicodeDecodeError traceback."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{what} {path} line {line} is not UTF-8 text (byte {data[e.start]:#04x}); save it as UTF-8.") \
            from None


def read_jsonl(path, what: str, error: type = VdotError) -> list[tuple[int, dict]]:
    """The JSON objects of a JSON-lines file the user gave, with their 1-based line numbers (blank lines skipped);
    a line that is not JSON or not an object is ``error`` naming the file and line."""
    import json

    out = []
    for i, line in enumerate(read_utf8(path, what, error).splitlines()):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise error(f"{what} {path} line {i + 1} is not valid JSON ({e}).") from None
        if not isinstance(obj, dict):
            raise error(f"{what} {path} line {i + 1} is not a JSON object.")
        out.append((i + 1, obj))
    return out


def read_json(path, what: str = "file", error: type = VdotError) -> dict:
    """A JSON object from ``path``, or ``error`` naming the file (truncated, not UTF-8, not an object)."""
    import json

    data = _read_bytes(path)
    try:
        d = json.loads(data.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise error(f"{what} {path} is unreadable ({' '.join(str(e).split())}); it may be truncated: write it "
                    "again (convert or export)") from None
    if not isinstance(d, dict):
        raise error(f"{what} {path} is not a JSON object")
    return d
