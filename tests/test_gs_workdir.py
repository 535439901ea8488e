"""A gs:// workdir stays on the bucket (a stand-in gcs file system in memory, registered with fsspec, which is what
etils.epath uses for gs://); a scheme the checkpoints cannot be written to is refused in one line."""

from __future__ import annotations

import json
import os

import pytest

from safety_helpers import refused
from vdot_jax.train import checkpoint as ckpt
from vdot_jax.train.paths import WorkdirError, local_dir, workdir_path


_FAKE_GCS = []  # one class for the process: etils/fsspec keep the file system instance of the first use


@pytest.fixture
def bucket():
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem
    from fsspec.registry import _registry

    if not _FAKE_GCS:
        class FakeGCS(MemoryFileSystem):
            protocol = ("gs", "gcs")
            store: dict = {}
            pseudo_dirs = [""]

        _FAKE_GCS.append(FakeGCS)
    fake = _FAKE_GCS[0]
    fake.store.clear()  # each test starts with an empty bucket, whichever test used the class before
    fake.pseudo_dirs[:] = [""]
    old = _registry.get("gcs")
    fsspec.register_implementation("gcs", fake, clobber=True)
    yield fake.store
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
    events = [k for k in bucket if k.startswith(f"{run}/tb/events.out.tfevents.")]  # TensorBoard, copied up
    assert len(events) == 1 and len(bucket[events[0]].getvalue()) > 100
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


def test_model_directories_manifests_and_data_on_the_bucket(bucket, tmp_path, capsys):
    """What a pod run reads may be on gs:// too: a converted model directory resolves (and its architecture is read)
    through epath, a manifest's relative paths stay on the bucket; what only local readers can open (raw
    checkpoints, the tokenizer, ArrayRecord shards) and what commands write locally are refused in one line."""
    import dataclasses

    from etils import epath
    from oracles import TINY_VACE

    from vdot_jax import sources
    from vdot_jax.data.manifest import read_manifest
    from vdot_jax.data.pipeline import DataError, PrecomputedSource
    from vdot_jax.train.config import base_config

    root = epath.Path("gs://bucket/models/vace")
    (root / "transformer" / "params").mkdir(parents=True)
    (root / "vdot_model.json").write_text(json.dumps({"format": "vdot-jax", "components": {"transformer":
                                                                                          "transformer"}}))
    (root / "transformer" / "config.json").write_text(json.dumps(
        {"component": "transformer", "class": "WanModel", "dtype": "float32",
         "config": dataclasses.asdict(TINY_VACE)}))
    src = sources.resolve("gs://bucket/models/vace")
    assert src.kind == "model_dir" and os.fspath(src.path) == "gs://bucket/models/vace"
    assert sources.source_arch("gs://bucket/models/vace") == TINY_VACE  # what `build` needs before any array
    config = base_config()
    config.model.teacher = "gs://bucket/models/vace"
    assert sources.model_arch(config) == TINY_VACE
    assert sources.has_component("gs://bucket/models/vace", "transformer")
    assert not sources.has_component("gs://bucket/models/vace", "vae")
    assert not (tmp_path / "gs:").exists() and not os.path.exists("gs:")

    epath.Path("gs://bucket/raw/model.safetensors").write_bytes(b"x")
    with pytest.raises(sources.SourceError, match="neither a converted model directory nor a training workdir"):
        sources.resolve("gs://bucket/raw/model.safetensors")
    with pytest.raises(sources.SourceError, match="does not exist"):
        sources.resolve("gs://bucket/models/none")
    with pytest.raises(sources.SourceError, match="tokenizer is read from local files"):
        sources.load_text_encoder("gs://bucket/models/vace")

    epath.Path("gs://bucket/data/train.csv").write_text(
        "caption,video,src_video\na cat,clips/a.mp4,gs://other/b.mp4\n")
    rows = read_manifest("gs://bucket/data/train.csv")
    assert rows[0].video == "gs://bucket/data/clips/a.mp4" and rows[0].src_video == "gs://other/b.mp4"

    config.data.precomputed = "gs://bucket/pre"
    with pytest.raises(DataError, match="gcsfuse"):
        PrecomputedSource(config, with_context=True)
    refused(capsys, ["precompute", "--config", "configs/tiny.py", "--out", "gs://bucket/pre"], "gs://bucket/pre",
            "writes local files")
    assert not os.path.exists("gs:")
