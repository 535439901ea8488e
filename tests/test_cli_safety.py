"""Nothing a user owns is destroyed: convert never writes over a source or a non-empty folder without
--overwrite, and an interrupted convert leaves the old directory; train refuses a folder that is not its own."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest

from oracles import TINY_VACE, diffusers_transformer
from safety_helpers import checksums, refused
from vdot_jax.cli import main as vdot


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    """A tiny diffusers transformer folder (config.json + safetensors), as a user downloads one."""
    d = tmp_path_factory.mktemp("src") / "transformer"
    diffusers_transformer(TINY_VACE).save_pretrained(d, safe_serialization=True)
    (d / "NOTES.txt").write_text("the user's own file")
    return d


def test_convert_onto_its_source_is_refused_and_the_source_survives(diffusers_dir, capsys):
    before = checksums(diffusers_dir)
    refused(capsys, ["convert", "--src", diffusers_dir, "--dst", diffusers_dir], "source")
    # --overwrite does not make a source writable either
    refused(capsys, ["convert", "--src", diffusers_dir, "--dst", diffusers_dir.parent, "--overwrite"], "source")
    assert checksums(diffusers_dir) == before


def test_convert_refuses_a_non_empty_folder_without_overwrite(diffusers_dir, tmp_path, capsys):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "transformer").mkdir()
    (dst / "transformer" / "keep.txt").write_text("precious")
    before = checksums(dst)
    refused(capsys, ["convert", "--src", diffusers_dir, "--dst", dst], "not empty", "--overwrite")
    assert checksums(dst) == before
    assert vdot(["convert", "--src", str(diffusers_dir), "--dst", str(dst), "--overwrite"]) == 0
    capsys.readouterr()
    assert json.loads((dst / "vdot_model.json").read_text())["components"] == {"transformer": "transformer"}
    assert not (dst / "transformer" / "keep.txt").exists()  # the named component was replaced, as asked
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_convert_into_a_model_directory_adds_but_does_not_replace(diffusers_dir, tmp_path, capsys):
    dst = tmp_path / "model"
    assert vdot(["convert", "--src", str(diffusers_dir), "--dst", str(dst)]) == 0
    capsys.readouterr()
    before = checksums(dst)
    refused(capsys, ["convert", "--src", diffusers_dir, "--dst", dst], "already holds transformer", "--overwrite")
    assert checksums(dst) == before


def test_interrupted_convert_leaves_the_old_directory(diffusers_dir, tmp_path, capsys, monkeypatch):
    dst = tmp_path / "model"
    assert vdot(["convert", "--src", str(diffusers_dir), "--dst", str(dst)]) == 0
    capsys.readouterr()
    before = checksums(dst)
    import vdot_jax.weights.convert as C

    real = C.convert_transformer

    def dies_after_writing(src, out, **kw):
        real(src, out, **kw)
        raise KeyboardInterrupt  # the user pressed Ctrl-C just before the new transformer was moved into place

    monkeypatch.setattr(C, "convert_transformer", dies_after_writing)
    refused(capsys, ["convert", "--src", diffusers_dir, "--dst", dst, "--overwrite"], "interrupted", code=130)
    assert checksums(dst) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    refused(capsys, ["convert", "--src", diffusers_dir, "--dst", tmp_path / "new"], "interrupted", code=130)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # a new --dst appears whole or not at all


def test_convert_dst_that_is_a_file(diffusers_dir, tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    refused(capsys, ["convert", "--src", diffusers_dir, "--dst", tmp_path / "f"], "is a file")
    assert (tmp_path / "f").read_text() == "x"


def test_train_refuses_a_model_folder_untouched(diffusers_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(diffusers_dir, model)
    before = checksums(model)
    refused(capsys, ["train", "--config", "configs/tiny.py", "--workdir", model],
            "not a vdot training workdir", "config.json")
    assert checksums(model) == before


def test_check_workdir_accepts_new_empty_and_its_own(tmp_path):
    from vdot_jax.train.checkpoint import CheckpointMismatch, check_workdir

    check_workdir(tmp_path / "new")
    check_workdir(tmp_path)
    # a run stopped before its first checkpoint left its logs and its training config
    (tmp_path / "train.log").write_text("started\n")
    (tmp_path / "config.json").write_text(json.dumps({"mode": "vdot", "train": {}}))
    check_workdir(tmp_path)
    (tmp_path / "notes.md").write_text("mine")
    with pytest.raises(CheckpointMismatch, match="notes.md"):
        check_workdir(tmp_path)
    with pytest.raises(CheckpointMismatch, match="is a file"):
        check_workdir(tmp_path / "notes.md")


def test_ctrl_c_stops_like_sigterm_and_a_second_aborts():
    from vdot_jax.train.loop import _StopFlag

    # A known start: a pytest-xdist worker may inherit SIGINT ignored, and restore() must give back what was there.
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        flag = _StopFlag(catch_int=True)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            assert flag.set and flag.signal == "SIGINT"  # first Ctrl-C: a flag, the loop saves and stops
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)  # second: at once
        finally:
            flag.restore()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)


def test_train_cli_reports_ctrl_c_in_one_line(tmp_path, capsys, monkeypatch):
    import vdot_jax.train.loop as L

    seen = {}

    def fake_train(config, workdir, **kw):
        seen.update(kw)
        return {"stopped": "SIGINT", "checkpoint_step": 7, "workdir": str(workdir)}

    monkeypatch.setattr(L, "train", fake_train)
    line = refused(capsys, ["train", "--config", "configs/tiny.py", "--workdir", tmp_path / "w"], "interrupted",
                   "saved step 7", "resume", code=130)
    assert seen["catch_sigint"] is True and "error" not in line


def test_a_bad_task_mix_is_refused_before_the_workdir_is_made(tmp_path, capsys):
    refused(capsys, ["train", "--config", "configs/tiny.py", "--workdir", tmp_path / "w",
                     "--config.data.toy.task_mix.juggling=1"], "task_mix", "juggling")
    assert not (tmp_path / "w").exists()


def test_generate_out_is_checked_before_anything_loads(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    base = ["generate", "--model", tmp_path / "missing", "--prompt", "a", "--frames", "5", "--height", "32",
            "--width", "32"]
    refused(capsys, [*base, "--out", tmp_path], "--out", "is a folder")
    refused(capsys, [*base, "--out", tmp_path / "file" / "o.mp4"], "--out", "is a file, not a folder")
    refused(capsys, [*base, "--out", tmp_path / "o.png"], "--out", "must end in .mp4")
    assert (tmp_path / "file").read_text() == "x"


def test_read_only_file_system_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import vdot_jax.commands.convert as C

    def ro(args):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "dst"))

    monkeypatch.setattr(C, "run", ro)
    refused(capsys, ["convert", "--src", tmp_path, "--dst", tmp_path / "dst"], "read-only", str(tmp_path / "dst"))


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only VdotError (and file-system errors of given paths) become one line: a ValueError is a bug."""
    import vdot_jax.commands.convert as C

    def bug(args):
        raise ValueError("internal")

    monkeypatch.setattr(C, "run", bug)
    with pytest.raises(ValueError, match="internal"):
        vdot(["convert", "--src", str(tmp_path), "--dst", str(tmp_path / "d")])


def test_non_finite_video_is_an_error():
    import numpy as np

    from vdot_jax.errors import VdotError
    from vdot_jax.sampling.pipeline import check_finite_video

    video = np.zeros((1, 3, 5, 8, 8), np.float32)
    check_finite_video(video, {})
    video[0, 1, 2, 3, 4] = np.nan
    with pytest.raises(VdotError, match="1 non-finite values"):
        check_finite_video(video, {"guide_scale": float("nan")})


def test_a_bad_attention_is_refused_before_anything_loads(tmp_path, capsys):
    refused(capsys, ["train", "--config", "configs/tiny.py", "--workdir", tmp_path / "w",
                     "--config.model.attention=bogus"], "config.model.attention", "bogus")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("override, named", [("--config.ot.epsilon=-1", "epsilon"),
                                             ("--config.schedule=foo", "schedule"),
                                             ("--config.attention_typo=1", "attention_typo")])
def test_a_bad_recipe_setting_is_refused_before_the_workdir_is_made(tmp_path, capsys, override, named):
    refused(capsys, ["train", "--config", "configs/tiny.py", "--workdir", tmp_path / "w", override], named)
    assert not (tmp_path / "w").exists()
