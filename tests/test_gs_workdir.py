"""A gs:// workdir stays on the bucket (a stand-in gcs file system in memory, registered with fsspec, which is what
etils.epath uses for gs://); a scheme the checkpoints cannot be written to is refused in one line."""

from __future__ import annotations

import json
import os

import pytest

from safety_helpers import refused
from vdot_jax.train import checkpoint as ckpt
from vdot_jax.train.paths import WorkdirError, local_dir, workdir_path


@pytest.fixture
def bucket():
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store: dict = {}
        pseudo_dirs = [""]

    old = _registry.get("gcs")
    fsspec.register_implementation("gcs", FakeGCS, clobber=True)
    yield FakeGCS.store
    if old is None:
        _registry.pop("gcs", None)
    else:
        fsspec.register_implementation("gcs", old, clobber=True)


def test_gs_paths_are_never_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = workdir_path("gs://bucket/runs/x")
    assert os.fspath(p) == "gs://bucket/runs/x"
    assert os.fspath(ckpt.checkpoint_dir("gs://bucket/runs/x")) == "gs://bucket/runs/x/checkpoints"
    assert os.fspath(workdir_path("runs/x")) == str(tmp_path / "runs" / "x")  # local: absolute, as before
    assert not (tmp_path / "gs:").exists()


@pytest.mark.parametrize("uri", ["memory://runs/x", "s3://bucket/x", "hf://org/repo"])
def test_unwritable_schemes_are_refused(uri, tmp_path, capsys):
    with pytest.raises(WorkdirError, match="cannot be written"):
        workdir_path(uri)
    refused(capsys, ["train", "--config", "configs/tiny.py", "--workdir", uri], uri, "cannot be written")


def test_logs_plots_and_samples_reach_the_bucket(bucket):
    from vdot_jax.train.logging import MetricLogger

    run = "gs://bucket/runs/x"
    ckpt.check_workdir(run)  # new: fine
    assert ckpt.latest_meta(run) is None
    log = MetricLogger(run, progress=False)
    for step in (1, 2, 3):
        log.log(step, {"dmd_loss": 1.0 / step})
    log.message("hello")
    assert log.plot() is not None
    log.close()
    assert [json.loads(x)["step"] for x in bucket[f"{run}/metrics.jsonl"].getvalue().decode().splitlines()] == [1, 2, 3]
    assert "hello" in bucket[f"{run}/train.log"].getvalue().decode()
    assert bucket[f"{run}/plots/losses.png"].getvalue()[:4] == b"\x89PNG"
    # a resume at step 2 cuts the later lines, on the bucket too
    MetricLogger(run, progress=False, resume_from=2).close()
    assert len(bucket[f"{run}/metrics.jsonl"].getvalue().decode().splitlines()) == 2
    # samples are written locally (ffmpeg needs files) and copied up
    with local_dir(workdir_path(run) / "samples" / "step_000003") as d:
        (d / "sample_0.mp4").write_bytes(b"video")
    assert bucket[f"{run}/samples/step_000003/sample_0.mp4"].getvalue() == b"video"
    ckpt.check_workdir(run)  # what a run wrote is a training workdir
    workdir_path(run).joinpath("notes.txt").write_text("mine")
    with pytest.raises(ckpt.CheckpointMismatch, match="notes.txt"):
        ckpt.check_workdir(run)
