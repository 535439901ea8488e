"""Workdir paths: a local folder or a ``gs://`` bucket, through ``etils.epath`` (orbax's own path type).

``pathlib.Path("gs://b/run").absolute()`` is ``<cwd>/gs:/b/run``: a local folder on each worker, whose checkpoints
never reach the bucket. Every workdir, checkpoint, log and sample path of a training run goes through
``workdir_path`` instead. Local paths behave exactly as before; a scheme that the checkpoints cannot be written
to (orbax writes arrays with tensorstore, which knows ``gs://``) is refused before anything is done.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from etils import epath

from vdot_jax.errors import VdotError

WRITABLE_SCHEMES = {"gs"}  # written by etils (gcsfs), orbax's metadata and tensorstore's arrays alike


class WorkdirError(VdotError):
    """A workdir that cannot be used (an unwritable scheme)."""


def is_local(path) -> bool:
    return "://" not in os.fspath(path)


def workdir_path(path) -> epath.Path:
    """``path`` as an ``epath.Path``: absolute when local, the bucket URI as given otherwise."""
    s = os.fspath(path)
    scheme, sep, _ = s.partition("://")
    if not sep:
        return epath.Path(os.path.abspath(s))
    if scheme not in WRITABLE_SCHEMES:
        raise WorkdirError(f"workdir {s}: {scheme}:// cannot be written by training checkpoints; use a local folder "
                           f"or {', '.join(x + '://BUCKET/...' for x in sorted(WRITABLE_SCHEMES))}")
    try:
        return epath.Path(s)
    except KeyError:
        raise WorkdirError(f"workdir {s}: this installation has no file system for {scheme}://") from None


@contextlib.contextmanager
def local_dir(target: epath.Path):
    """A local folder to write into (for writers that need real files: ffmpeg, matplotlib, tensorboard); on a
    bucket its files are copied to ``target`` at the end, locally it is ``target`` itself."""
    if is_local(target):
        Path(target).mkdir(parents=True, exist_ok=True)
        yield Path(target)
        return
    with tempfile.TemporaryDirectory(prefix="vdot-upload-") as d:
        yield Path(d)
        for f in sorted(Path(d).rglob("*")):
            if f.is_file():
                dst = target / str(f.relative_to(d))
                dst.parent.mkdir(parents=True, exist_ok=True)
                with f.open("rb") as src, dst.open("wb") as out:
                    shutil.copyfileobj(src, out)


class RemoteAppendFile:
    """An append-only text file on a bucket, which has no append: kept in memory and the whole file rewritten,
    at most every ``every`` seconds and at ``close``."""

    def __init__(self, path: epath.Path, every: float = 30.0):
        import time

        self.path, self.every, self._time = path, every, time
        self.text = path.read_text() if path.exists() else ""
        self._written, self._dirty = 0.0, False

    def write(self, s: str) -> None:
        self.text += s
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        if self._dirty and (force or self._time.time() - self._written >= self.every):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(self.text)
            self._written, self._dirty = self._time.time(), False

    def close(self) -> None:
        self.flush(force=True)
