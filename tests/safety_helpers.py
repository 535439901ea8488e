"""Helpers of the reliability tests: the CLI in-process, its one-line refusals, and checksums of folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vdot_jax.cli import main as vdot


def checksums(root) -> dict[str, str]:
    """{relative path: sha256} of every file under ``root`` (a file alone: {"": sha256})."""
    root = Path(root)
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def refused(capsys, argv, *needles, code=2) -> str:
    """Run ``vdot ARGV`` in-process; assert it exits ``code`` with one stderr line holding every needle."""
    rc = vdot([str(a) for a in argv])
    out = capsys.readouterr()
    err = out.err.strip()
    assert rc == code, (rc, out.out, err)
    lines = [x for x in err.splitlines() if x.startswith("vdot ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
