"""The task table (conditions.vcu.TASKS) drives the files front end (conditions.task_inputs): each task's wrong
files are refused with its one sentence before any file is read, and each task builds a VCU of its name and kind."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PIL_Image

from vdot_jax import conditions as C
from vdot_jax.data import video_io

T, H, W = 5, 16, 32
SIZE = dict(frames=T, height=H, width=W)

# The kind each task's VCU has (how it composes); written out here, not read from the table.
KIND = {"t2v": "text", "r2v": "reference", **{k: "control" for k in ("depth", "pose", "scribble", "flow", "gray",
                                                                      "layout", "v2v")},
        "mv2v": "repaint", "inpaint": "repaint", "outpaint": "repaint",
        **{m: "extension" for m in ("first_frame", "last_frame", "first_clip", "last_clip", "first_last_frame",
                                    "first_last_clip")}}


def test_table_lists_every_task_once_in_the_cli_order():
    # Catches a task dropped from or mislabelled in the table (a control kind in the wrong family, say).
    assert list(C.TASKS) == ["t2v", "r2v", "depth", "pose", "scribble", "flow", "gray", "layout", "v2v", "mv2v",
                             "inpaint", "outpaint", "first_frame", "last_frame", "first_clip", "last_clip",
                             "first_last_frame", "first_last_clip"]
    assert C.CONTROL_KINDS == ("depth", "pose", "scribble", "flow", "gray", "layout")
    assert C.EXTENSION_MODES == ("first_frame", "last_frame", "first_clip", "last_clip", "first_last_frame",
                                 "first_last_clip")
    assert {n: t.kind for n, t in C.TASKS.items()} == KIND


@pytest.mark.parametrize("task, files, message", [
    ("t2v", dict(src_video="v.mp4"), "task t2v takes no src_video or src_mask."),
    ("r2v", dict(), "task r2v needs reference images (ref_images)."),
    ("depth", dict(src_video="v.mp4", src_mask="m.mp4"), "task depth needs a control video as src_video and no "
                                                           "src_mask."),
    ("v2v", dict(), "task v2v needs a control video as src_video and no src_mask."),
    ("mv2v", dict(src_video="v.mp4"), "task mv2v needs both src_video and src_mask."),
    ("inpaint", dict(src_mask="m.mp4"), "task inpaint needs both src_video and src_mask."),
    ("outpaint", dict(expand="0,0,0.5,0.5"), "task outpaint needs src_video (the video to outpaint)."),
    ("outpaint", dict(src_video="v.mp4"), "task outpaint needs expand=(top, bottom, left, right) ratios, e.g. "
                                          "0,0,0.25,0.25."),
    ("first_last_frame", dict(), "task first_last_frame needs src_video (the video or image to extend)."),
    ("last_clip", dict(), "task last_clip needs src_video (the video to extend)."),
    ("first_clip", dict(src_video="v.mp4", src_mask="m.mp4"), "task first_clip makes its own mask; do not pass "
                                                               "src_mask."),
    ("depth", dict(src_video="v.mp4", expand="0,0,0.5,0.5"), "expand is for task outpaint, not depth."),
    ("bogus", dict(), "unknown task 'bogus'; choose one of t2v, r2v, depth, pose, scribble, flow, gray, layout, v2v, "
                      "mv2v, inpaint, outpaint, first_frame, last_frame, first_clip, last_clip, first_last_frame, "
                      "first_last_clip (or leave it out to follow the files)."),
])
def test_wrong_files_refused_before_reading(tmp_path, task, files, message):
    # The paths do not exist: a front end that read a file before checking the task's entry would fail on the
    # missing file instead. Catches a wrong src_video/src_mask/refs field in the table or a check done late.
    files = {k: (str(tmp_path / v) if k.startswith("src") else v) for k, v in files.items()}
    with pytest.raises(C.ConditionError) as e:
        C.task_inputs(task, **files, **SIZE)
    assert str(e.value) == message


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    d = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    video = (rng.random((T, H, W, 3)) * 255).astype(np.uint8)
    mask = np.zeros((T, H, W, 3), np.uint8)
    mask[:, 4:12, 8:24] = 255
    PIL_Image.fromarray(video[0]).save(d / "ref.png")
    return {"video": str(video_io.write_video(d / "v.mp4", video, fps=16)),
            "mask": str(video_io.write_video(d / "m.mp4", mask, fps=16)), "ref": str(d / "ref.png")}


def _expected(task: str, refs: bool) -> tuple[str, str]:
    """(name, kind) of a task's VCU, with or without reference images (the release's naming)."""
    if task in ("t2v", "r2v"):
        return ("r2v", "reference") if refs else ("t2v", "text")
    if task in ("v2v", "mv2v"):
        return (f"r2v+{task}" if refs else task), KIND[task]
    if task in C.CONTROL_KINDS:  # a named control keeps its name
        return task, "control"
    return (f"{task}+r2v" if refs else task), KIND[task]


def test_every_family_builds_its_vcu_from_files(paths):
    # Catches a family without a reader, a reader that names or kinds the VCU wrongly, or references dropped.
    # One task per family (reading a video costs ~0.3 s); the entries of a family share its reader.
    v, m, r = paths["video"], paths["mask"], paths["ref"]
    files = {"t2v": {}, "r2v": {}, "v2v": dict(src_video=v), "mv2v": dict(src_video=v, src_mask=m),
             "depth": dict(src_video=v), "inpaint": dict(src_video=v, src_mask=m),
             "outpaint": dict(src_video=v, expand="0,0,0.5,0.5"), "first_frame": dict(src_video=v),
             "first_last_clip": dict(src_video=v)}
    assert {C.TASKS[t].family for t in files} == {t.family for t in C.TASKS.values()}
    assert (C.task_inputs("t2v", **SIZE).task, C.task_inputs("t2v", **SIZE).kind) == _expected("t2v", False)
    for task, kw in files.items():
        vcu = C.task_inputs(task, ref_images=r, **kw, **SIZE)
        assert (vcu.task, vcu.kind) == _expected(task, True), task
        assert vcu.frames.shape == (1, 3, T, H, W) and vcu.refs.shape == (1, 1, 3, H, W), task
