"""Annotator backends (``conditions.annotators``): output conventions against the release's post-processing on
known values, end to end on random weights of the real architectures, and the one-line refusals.

The numpy parts run everywhere; a backend's network needs its packages (the ``annotators`` extra; depth's --
torch, transformers, OpenCV -- are in the test extra too) and is skipped without them."""

import importlib
import json
import re
import sys

import numpy as np
import pytest

from vdot_jax import conditions as C
from vdot_jax.cli import main
from vdot_jax.conditions import annotators as AN
from vdot_jax.conditions.annotators import depth as D
from vdot_jax.conditions.annotators import flow as FL
from vdot_jax.data import video_io

T, H, W = 5, 32, 48


def need(*names):
    """Skip unless every package imports (torchvision from PyPI raises RuntimeError beside a CPU-only torch)."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001
            pytest.skip(f"{name} unavailable: {type(e).__name__}")


def moving_video(t=T, h=H, w=W):
    """uint8 [t, h, w, 3]: a bright square on a colour ramp, moving 2 pixels right per frame."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.stack([np.stack([x * 4 % 256, y * 6 % 256, np.full_like(x, 90)], -1)] * t).astype(np.uint8)
    for k in range(t):
        out[k, h // 4:h // 4 + h // 3, 4 + 2 * k:4 + 2 * k + w // 4] = 240
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    d = tmp_path_factory.mktemp("anno")
    return str(video_io.write_video(d / "raw.mp4", moving_video(), fps=16))


@pytest.fixture(scope="module")
def depth_model(tmp_path_factory):
    """A random Depth-Anything-V2 (DINOv2 backbone + DPT head) of tiny width, saved as transformers saves it."""
    need("torch", "transformers", "cv2")
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=518, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16, 16, 16],
                              fusion_hidden_size=8, head_hidden_size=8, patch_size=14, initializer_range=0.3)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("depth") / "da2"
    DepthAnythingForDepthEstimation(cfg).eval().save_pretrained(path)
    return str(path)


def prepare(tmp_path, *argv, h=H, w=W, name="out"):
    out = tmp_path / name
    code = main(["prepare", *argv, "--out", str(out), "--height", str(h), "--width", str(w)])
    return code, out


# ----------------------------------------------------------------------------- depth


def test_depth_post_processing_known_values():
    # the release's Resize: aspect kept, both sides >= 518, each rounded (half to even) to a multiple of 14
    assert D.net_size(32, 48) == (518, 784)  # 777 = 55.5 x 14 -> 56 x 14
    assert D.net_size(480, 832) == (518, 896) and D.net_size(832, 480) == (896, 518)
    assert D.net_size(600, 600) == (518, 518)
    # a depth ramp a + b x becomes 0..255 across the frame, truncated (not rounded), grey in three channels
    ramp = 3.0 + 0.5 * np.arange(256, dtype=np.float32)[None, None, :].repeat(2, 1)
    out = D.depth_to_frames(np.concatenate([ramp, -2 * ramp]))
    assert out.shape == (2, 2, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0, :, 0], np.arange(256))  # per-frame normalisation, near = white
    np.testing.assert_array_equal(out[1, 0, :, 0], 255 - np.arange(256) - (np.arange(256) % 1))
    assert (out[..., 0] == out[..., 2]).all()
    third = D.depth_to_frames(np.array([[[0.0, 1.0, 3.0]]]))[0, 0, :, 0]
    np.testing.assert_array_equal(third, [0, 85, 255])  # 255 / 3 = 85.0
    assert (D.depth_to_frames(np.full((1, 4, 4), 7.0)) == 0).all()  # constant: black, not NaN


def test_depth_network_follows_the_release_chain(depth_model):
    """Our preprocessing + network + post-processing equals the release's ``infer_image`` steps written out
    (cvtColor BGR2RGB of the RGB frame, bicubic resize, ImageNet normalisation, bilinear align-corners back)."""
    import cv2
    import torch
    import torch.nn.functional as F

    model = D.load(depth_model)
    model.side = 70  # small network input for speed; the chain is the same at 518
    frames = moving_video(3)
    got = model(frames)
    for k, f in enumerate(frames):
        img = cv2.cvtColor(f, cv2.COLOR_BGR2RGB) / 255.0
        img = cv2.resize(img, (112, 70), interpolation=cv2.INTER_CUBIC)  # 70 x 105 -> 70 x 112 (7.5 -> 8 x 14)
        img = (img - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
        x = torch.from_numpy(img.transpose(2, 0, 1)[None].astype(np.float32))
        with torch.no_grad():
            d = model.model(pixel_values=x).predicted_depth
        d = F.interpolate(d[:, None], (H, W), mode="bilinear", align_corners=True)[0, 0].numpy()
        d = d - d.min()
        d = d / d.max()
        want = (d * 255.0).clip(0, 255).astype(np.uint8)
        assert np.abs(got[k, :, :, 1].astype(int) - want).max() <= 1  # float32 summation order
        assert got[k].min() == 0 and got[k].max() == 255
    assert not (got[0] == got[1]).all()  # a moving square changes the map


def test_prepare_depth_end_to_end(tmp_path, video, depth_model):
    code, out = prepare(tmp_path, "depth", "--src-video", video, "--weights", depth_model)
    assert code == 0
    row = json.loads((out / "row.json").read_text())
    assert row["task"] == "depth" and row["src_mask"] is None and (row["frames"], row["height"]) == (T, H)
    back = C.task_inputs(row["task"], src_video=str(out / "src_video.mp4"), frames=T, height=H, width=W)
    assert back.kind == "control" and back.frames.shape == (1, 3, T, H, W)
    frames = video_io.read_video(video, num_frames=T, size=(H, W))
    want = AN.annotate(D.load(depth_model), C.video_from_frames(frames[[0, -1]]))  # frame by frame: two suffice
    assert np.abs(back.frames[:, :, [0, -1]] - want).mean() < 0.03  # H.264 of the written control
    assert np.abs(back.frames[0, 0] - back.frames[0, 2]).max() < 0.1  # grey


def test_ui_runs_a_configured_annotator_on_the_raw_upload(tmp_path, video, depth_model, capsys):
    """vdot ui --annotator depth=WEIGHTS: the page's depth task annotates the uploaded raw video exactly as vdot
    prepare depth does (its build), the reproduce line names vdot prepare without the server's path; without the
    flag the task asks for a finished file; a bad --annotator is one line before the page starts."""
    pytest.importorskip("gradio")
    from vdot_jax.ui.backend import Server, Settings, UIError, command, task_help

    s = Settings(task="depth", prompt="a red circle moving left", frames=T, height=H, width=W)
    vcu = Server(annotators={"depth": depth_model}, out_dir=str(tmp_path / "ui")).task_inputs(s, src_video=video)
    frames = video_io.read_video(video, num_frames=T, size=(H, W))
    want = AN.annotate(D.load(depth_model), C.video_from_frames(frames))
    assert vcu.kind == "control" and np.abs(vcu.frames - want).max() < 1e-6
    line = command("MODEL", s, video, annotated=True)
    assert line.startswith("vdot prepare depth") and "--weights WEIGHTS" in line and depth_model not in line
    with pytest.raises(UIError, match="upload a video for depth"):
        Server(annotators={"depth": depth_model}, out_dir=str(tmp_path / "ui")).task_inputs(s)
    assert "--annotator depth=WEIGHTS" in task_help("depth") and "Depth-Anything" in task_help("depth", {"depth": 1})
    assert "--ref-face-model WEIGHTS" in task_help("face") and "--ref-salient-model" in task_help("salient")
    for spec, message in (("depth=/nonexistent", "depth weights /nonexistent do not exist"),
                          ("face=x", "--annotator takes TASK=WEIGHTS")):
        assert main(["ui", "--annotator", spec, "--port", "1"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------- flow


def test_flow_colour_wheel_known_values():
    wheel = FL.colour_wheel()
    assert wheel.shape == (55, 3)
    np.testing.assert_array_equal(wheel[[0, 15, 21, 25, 36, 49, 54]],
                                  [[255, 0, 0], [255, 255, 0], [0, 255, 0], [0, 255, 255], [0, 0, 255],
                                   [255, 0, 255], [255, 0, 43]])
    f = np.zeros((2, 3, 2))
    f[0, 0], f[0, 1], f[0, 2], f[1, 0] = [4, 0], [-4, 0], [2, 0], [0, 4]
    rgb = FL.flow_to_rgb(f)
    np.testing.assert_array_equal(rgb[0], [[255, 0, 0], [0, 209, 255], [255, 127, 127]])  # right, left, half
    np.testing.assert_array_equal(rgb[1], [[255, 229, 0], [255, 255, 255], [255, 255, 255]])  # down; still: white
    np.testing.assert_array_equal(FL.flow_to_rgb(f * 10), rgb)  # scaled by the pair's largest magnitude
    assert FL.repeat_first(["a", "b", "c"]) == ["a", "a", "b", "c"]  # T - 1 flows -> T frames


@pytest.mark.slow  # RAFT's 20 refinements on CPU: ~1 min
def test_prepare_flow_end_to_end(tmp_path):
    need("torch", "torchvision")
    import torch
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    weights = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), weights)
    src = str(video_io.write_video(tmp_path / "v.mp4", moving_video(5, 128, 128), fps=16))
    code, out = prepare(tmp_path, "flow", "--src-video", src, "--weights", str(weights), "--frames", "5", h=128,
                        w=128)
    assert code == 0 and json.loads((out / "row.json").read_text())["task"] == "flow"
    back = video_io.read_video(out / "src_video.mp4", normalize=False)
    assert back.shape == (5, 128, 128, 3) and np.abs(back[0] - back[1]).max() < 8  # the first flow repeated
    model = AN.load("flow", str(weights))
    frames = video_io.read_video(src, num_frames=5, size=(128, 128), normalize=False)[:3]
    flows = model.flows(np.rint(frames).astype(np.uint8))
    assert flows.shape == (2, 128, 128, 2)
    want = FL.flow_to_rgb(flows[1]).astype(float)
    assert np.abs(back[2] - want).mean() < 3 and (np.abs(back[2] - want) > 12).mean() < 0.01  # H.264 (chroma)


# ----------------------------------------------------------------------------- refusals


def test_every_backend_is_a_prepare_task():
    from vdot_jax.commands import prepare

    assert prepare.ANNOTATOR_TASKS == AN.ANNOTATOR_TASKS == ("depth", "flow", "pose", "scribble")
    assert all(AN.BACKENDS[t].kind in C.CONTROL_KINDS for t in AN.ANNOTATOR_TASKS)
    assert set(AN.BACKENDS) == set(AN.ANNOTATOR_TASKS) | {"track", "detect", "salient", "face"}


def test_annotator_refusals_write_nothing(tmp_path, video, capsys, monkeypatch):
    missing = str(tmp_path / "nowhere")
    cases = [
        (["depth", "--src-video", video], "needs its model's weights: give --weights, a Depth-Anything-V2"),
        (["depth", "--src-video", video, "--weights", missing], "do not exist"),
        (["gray", "--src-video", video, "--weights", missing],
         "--weights is for tasks depth, flow, pose, scribble, not gray"),
        (["depth", "--src-video", video, "--weights", video], "cannot load depth weights"),
        (["depth", "--src-video", str(tmp_path / "bad.mp4"), "--weights", video], "bad.mp4"),
    ]
    try:
        importlib.import_module("torchvision")
        cases.append((["flow", "--src-video", video, "--weights", video], "at least 128 pixels a side"))
    except Exception:  # noqa: BLE001
        cases.append((["flow", "--src-video", video, "--weights", video], "needs the Python package torchvision"))
    for argv, msg in cases:
        if argv[0] == "depth" and "--weights" in argv and argv[-1] == video:
            need("torch", "transformers", "cv2")
        code, out = prepare(tmp_path, *argv)
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and re.search(re.escape(msg), err), (argv, err)
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if the extra were not installed
    code, out = prepare(tmp_path, "depth", "--src-video", video, "--weights", video)
    err = capsys.readouterr().err.strip()
    assert code == 2 and "needs the Python package transformers, which is not installed: pip install -e " \
                         "\".[annotators]\"" in err and not out.exists()


# ----------------------------------------------------------------------------- vdot precompute --annotate


def test_precompute_annotate_rows_resumable_sharded_bad_rows_counted(tmp_path, depth_model, capsys):
    from pathlib import Path

    from vdot_jax.commands.common import mark_output_folder
    from vdot_jax.data import precompute as P
    from vdot_jax.data.manifest import read_manifest
    from vdot_jax.train.config import load_config

    tiny = str(Path(__file__).resolve().parents[1] / "configs/tiny.py")
    vid = video_io.write_video(tmp_path / "v.mp4", moving_video(5, 32, 32), fps=16)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    rows = [{"task": "depth", "caption": "a", "video": "v.mp4"},
            {"task": "depth", "caption": "b", "video": "broken.mp4"},
            {"caption": "c", "video": "v.mp4"},  # raw, no task: passed through (derived at training)
            {"task": "depth", "caption": "d", "video": "v.mp4"},
            {"task": "depth", "caption": "e", "video": "v.mp4", "src_video": "v.mp4"}]  # has its files
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ann"
    argv = ["precompute", "--config", tiny + ":flow", "--manifest", str(manifest), "--out", str(out),
            "--config.data.num_frames=1"]  # one frame of the five: the depth network at 518 x 518 is the cost
    # refused before anything is written: a depth row and no depth weights; an unknown task
    for extra, msg in ((["--annotate", "flow=" + depth_model], "rows 1, 2, 4 are task depth without condition "
                                                               "files: give --annotate depth=WEIGHTS"),
                       (["--annotate", "face=" + depth_model], "no annotator for task face; annotator tasks are "
                                                               "depth, flow, pose, scribble"),
                       (["--annotate", "depth"], "TASK=WEIGHTS")):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, err
        assert not out.exists()

    # process 1 of 2 first (indices 1 and 3 are its share: 1 is bad, 3 is done)
    config = load_config(tiny + ":flow")
    config.data.manifest, config.data.num_frames = str(manifest), 1
    targets = P.annotation_targets(read_manifest(manifest), {"depth": depth_model})
    assert targets == {0: "depth", 1: "depth", 3: "depth"}
    mark_output_folder(out, "precompute")  # as the command does
    half = P.annotate_rows(config, out, {"depth": depth_model}, targets, pid=1, nproc=2, log=lambda m: None)
    assert half == {"annotated_now": 1, "bad_now": 1, "skipped_finished": 0}
    assert sorted(p.name for p in (out / "conditions").iterdir()) == ["row-000001.depth.bad.json",
                                                                      "row-000003.depth.mp4"]
    done3 = (out / "conditions/row-000003.depth.mp4").stat().st_mtime_ns
    # the whole command: the rest is done, the finished row kept, the bad row retried and counted
    assert main(argv + ["--annotate", "depth=" + depth_model]) == 0
    assert (out / "conditions/row-000003.depth.mp4").stat().st_mtime_ns == done3
    report = json.loads((out / "annotated_report.json").read_text())
    assert (report["annotated"], report["passed_through"], len(report["bad"])) == (2, 2, 1)
    assert report["bad"][0]["row"] == 1 and "broken.mp4" in report["bad"][0]["error"]
    got = read_manifest(out / P.ANNOTATED_MANIFEST)
    assert [r.caption for r in got] == ["a", "c", "d", "e"] and not got[0].raw and got[1].raw
    assert got[0].src_video == str(out / "conditions/row-000000.depth.mp4") and got[3].src_video == str(vid)
    control = video_io.read_video(got[0].src_video)
    assert control.shape == (1, 32, 32, 3)  # the config's frames and size
    frames = video_io.read_video(vid, num_frames=1, size=(32, 32))
    want = AN.annotate(D.load(depth_model), C.video_from_frames(frames[:1]))
    assert np.abs(C.video_from_frames(control[:1]) - want).mean() < 0.03
    # another size over the same folder is refused, nothing mixed in
    assert main(argv + ["--annotate", "depth=" + depth_model, "--config.data.height=48"]) == 2
    assert "annotations made with other settings (height" in capsys.readouterr().err


# ----------------------------------------------------------------------------- pose


# DWPose test networks with the release's signatures (YOLOX: [1, 3, 640, 640] -> [1, 8400, 85]; RTMPose 384 x 288:
# -> SimCC x [1, 133, 576], y [1, 133, 768]) whose outputs are designed: one person box, and peaks placing the nose,
# both shoulders and one face point at known pixels of a 1024 x 1024 frame (its drawing canvas is the frame itself).
BOX = (256, 128, 768, 896)  # the person, in canvas pixels
# mmpose index -> SimCC bins (x, y); the box maps bin b to x = 1.25 b + 152, y = 1.25 b + 32 (box grown 1.25x to the
# model's 3:4 aspect: 720 x 960 around (512, 512))
PEAKS = {0: (288, 160), 5: (376, 260), 6: (200, 260), 40: (288, 100)}


def pose_models(d):
    need("torch", "onnxruntime", "cv2")
    import torch

    class Const(torch.nn.Module):
        """Designed outputs, tied to the input so the graph has one."""

        def __init__(self, *outs):
            super().__init__()
            for i, o in enumerate(outs):
                self.register_buffer(f"o{i}", o)
            self.n = len(outs)

        def forward(self, x):
            z = 0 * x.mean()
            outs = tuple(getattr(self, f"o{i}") + z for i in range(self.n))
            return outs if self.n > 1 else outs[0]

    det = torch.zeros(1, 8400, 85)
    det[0, 8000 + 10 * 20 + 10] = torch.tensor([0.0, 0.0, np.log(10.0), np.log(15.0), 1.0, 1.0] + [0.0] * 79)
    sx, sy = torch.zeros(1, 133, 576), torch.zeros(1, 133, 768)
    for k, (bx, by) in PEAKS.items():
        sx[0, k, bx], sy[0, k, by] = 1.0, 1.0
    paths = (d / "det.onnx", d / "pose.onnx")
    for model, shape, path, names in ((Const(det), (1, 3, 640, 640), paths[0], ["output"]),
                                      (Const(sx, sy), (1, 3, 384, 288), paths[1], ["simcc_x", "simcc_y"])):
        torch.onnx.export(model, (torch.zeros(shape),), str(path), input_names=["input"], output_names=names,
                          dynamo=False)
    return ",".join(map(str, paths))


@pytest.fixture(scope="module")
def pose_weights(tmp_path_factory):
    return pose_models(tmp_path_factory.mktemp("pose"))


def test_pose_detection_and_simcc_decoding_known_values():
    from vdot_jax.conditions.annotators import pose as PO

    assert PO.canvas_size(480, 832) == (1024, 1792) and PO.canvas_size(256, 256) == (1024, 1024)
    raw = np.zeros((8400, 85))
    raw[8210, :6] = [0, 0, np.log(10), np.log(15), 1, 1]  # stride-32 cell (10, 10): centre 320, 320 at 640
    raw[8211, :6] = [0, 0, np.log(10), np.log(15), 0.9, 1]  # overlapping, weaker: suppressed
    raw[100, :6] = [0, 0, 1, 1, 0.25, 1]  # a weak person (0.25 <= 0.3): dropped
    raw[200, [0, 1, 2, 3, 4, 6]] = [0, 0, 1, 1, 1, 1]  # class 1, not a person
    np.testing.assert_allclose(PO.decode_detections(raw, 0.625), [BOX])
    keypoints, scores = PO.decode_simcc(np.eye(3, 576) * [[1], [0.5], [0]], np.eye(3, 768)[::-1] * 0.8, (288, 384),
                                        np.array([512.0, 512.0]), np.array([720.0, 960.0]))
    np.testing.assert_allclose(keypoints[:2], [[152, 32 + 1.25 * 2], [152 + 1.25, 32 + 1.25]])
    np.testing.assert_allclose(scores, [0.8, 0.5, 0])  # the smaller of the two maxima
    kp, sc = PO.openpose_order(np.arange(133 * 2, dtype=float).reshape(1, 133, 2), np.ones((1, 133)))
    assert kp.shape == (1, 134, 2)
    np.testing.assert_allclose(kp[0, 1], [11, 12])  # the neck: mean of the shoulders (10, 11) and (12, 13)
    np.testing.assert_allclose(kp[0, [0, 2, 5, 6, 11, 8]], [[0, 1], [12, 13], [10, 11], [14, 15], [22, 23],
                                                            [24, 25]])  # nose, r/l shoulder, l elbow, l/r hip


def test_pose_draws_the_release_skeleton_on_black(pose_weights):
    from vdot_jax.conditions.annotators import pose as PO

    model = AN.load("pose", pose_weights)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (1024, 1024, 3), np.uint8)  # the picture does not matter: the networks are fixed
    out = model(frame[None])[0]
    at = lambda b: (int(1.25 * b[1] + 32), int(1.25 * b[0] + 152))  # noqa: E731  (row, column)
    # joints: full colour, drawn in BGR then reversed: nose (255, 0, 0) -> blue; neck (255, 85, 0) -> (0, 85, 255)
    nose, rs, ls, face = at(PEAKS[0]), at(PEAKS[6]), at(PEAKS[5]), at(PEAKS[40])
    np.testing.assert_array_equal(out[nose], [0, 0, 255])
    np.testing.assert_array_equal(out[(357, 512)], [0, 85, 255])  # neck: mean of the shoulders
    np.testing.assert_array_equal(out[rs], [0, 170, 255])  # OpenPose joint 2 (right shoulder) colour (255, 170, 0)
    np.testing.assert_array_equal(out[ls], [0, 255, 85])  # joint 5 (left shoulder) colour (85, 255, 0)
    np.testing.assert_array_equal(out[face], [255, 255, 255])  # face points white
    # limbs at 60 %: neck-right shoulder (255, 0, 0), neck-left shoulder (255, 85, 0), neck-nose (0, 0, 255)
    np.testing.assert_array_equal(out[357, 457], [0, 0, 153])
    np.testing.assert_array_equal(out[357, 567], [0, 51, 153])
    np.testing.assert_array_equal(out[(232 + 357) // 2, 512], [153, 0, 0])
    assert (out[:100] == 0).all() and (out[:, :300] == 0).all() and (out[500:] == 0).all()  # black elsewhere
    # nothing visible (all scores 0) -> a black frame
    keypoints, scores = PO.openpose_order(np.zeros((1, 133, 2)), np.zeros((1, 133)))
    assert (PO.draw(keypoints, scores, 64, 64) == 0).all()


def test_prepare_pose_end_to_end(tmp_path, pose_weights, capsys):
    src = str(video_io.write_video(tmp_path / "p.mp4", moving_video(5, 256, 256), fps=16))
    code, out = prepare(tmp_path, "pose", "--src-video", src, "--weights", pose_weights, h=256, w=256)
    assert code == 0 and json.loads((out / "row.json").read_text())["task"] == "pose"
    back = video_io.read_video(out / "src_video.mp4", normalize=False)
    assert back.shape == (5, 256, 256, 3)
    want = AN.load("pose", pose_weights)(video_io.read_video(src, num_frames=1, size=(256, 256),
                                                             normalize=False).astype(np.uint8))
    assert np.abs(back[0] - want[0]).mean() < 3 and want[0].max() > 200 and (want[0, :20] == 0).all()
    det = pose_weights.split(",")[0]
    code, out = prepare(tmp_path, "pose", "--src-video", src, "--weights", det, h=256, w=256, name="never")
    assert code == 2 and "pose weights are 2 path(s) separated by ','" in capsys.readouterr().err
    code, out = prepare(tmp_path, "pose", "--src-video", src, "--weights", f"{src},{det}", h=256, w=256, name="never")
    err = capsys.readouterr().err
    assert code == 2 and f"cannot load pose weights from {src},{det} ({src} does not load as an ONNX model" in err
    assert not out.exists()


# ----------------------------------------------------------------------------- tracking (SAM 2)


@pytest.fixture(scope="module")
def sam2_model(tmp_path_factory):
    """A random SAM 2 video model (Hiera backbone, prompt encoder, mask decoder, memory attention and encoder) at a
    256-pixel input instead of 1024, saved as transformers saves it."""
    need("torch", "transformers")
    import torch
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(hidden_size=8, num_attention_heads=1, blocks_per_stage=[1, 2, 1, 1],
                                  embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                                  global_attention_blocks=[2], image_size=[256, 256])
    vision = Sam2VisionConfig(backbone_config=backbone, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[64, 64], [32, 32], [16, 16]])
    cfg = Sam2VideoConfig(vision_config=vision, image_size=256, prompt_encoder_config={"image_size": 256},
                          mask_decoder_config={"num_hidden_layers": 1}, memory_attention_num_layers=1,
                          memory_fuser_num_layers=1, memory_attention_rope_feat_sizes=[16, 16])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam2") / "sam2"
    Sam2VideoModel(cfg).eval().save_pretrained(path)
    return str(path)


def test_sam2_tracker_and_its_refusals(tmp_path, sam2_model, capsys):
    """Fast: the tracker on two frames (binary masks of the frame's size, not constant, the same on a rerun) and
    the one-line refusals of --track-model (nothing written)."""
    tracker = AN.load("track", sam2_model)
    frames = moving_video(2, 32, 48)
    masks = tracker(frames, np.array([8.0, 8, 30, 24]))
    assert masks.shape == (2, H, W) and set(np.unique(masks)) <= {0.0, 1.0}
    assert 0.02 < masks.mean() < 0.98  # random weights: some object, not all (catches a constant mask)
    np.testing.assert_array_equal(tracker(frames, np.array([8.0, 8, 30, 24])), masks)
    src = str(video_io.write_video(tmp_path / "v.mp4", moving_video(5, 32, 48), fps=16))
    capsys.readouterr()
    for argv, msg in ((["--track", "0:8,8,30,24", "--track-model", sam2_model], "give one box"),
                      (["--box", "8,8,30,24", "--track-model", str(tmp_path / "none")], "track weights"),
                      (["--box", "8,8,30,24", "--track-model", src], "cannot load track weights")):
        code, out = prepare(tmp_path, "inpaint", "--src-video", src, *argv, name="never")
        err = capsys.readouterr().err.strip().splitlines()[-1]  # (transformers' loading bar may come first)
        assert code == 2 and msg in err and not out.exists(), err
    code, out = prepare(tmp_path, "gray", "--src-video", src, "--track-model", sam2_model, name="never")
    assert code == 2 and "--track-model is for tasks inpaint, layout, not gray" in capsys.readouterr().err


@pytest.mark.slow  # ~40 s: SAM 2 over 5 frames, three times
def test_prepare_inpaint_tracks_the_box_with_sam2(tmp_path, sam2_model):
    src = str(video_io.write_video(tmp_path / "v.mp4", moving_video(5, 32, 48), fps=16))
    code, out = prepare(tmp_path, "inpaint", "--src-video", src, "--box", "8,8,30,24", "--track-model", sam2_model,
                        "--frames", "5")
    assert code == 0
    row = json.loads((out / "row.json").read_text())
    back = C.task_inputs(row["task"], src_video=str(out / "src_video.mp4"), src_mask=str(out / "src_mask.mp4"),
                         frames=5, height=H, width=W)
    frames = video_io.read_video(src, num_frames=5, size=(H, W))
    masks = AN.load("track", sam2_model)(AN.to_uint8(C.video_from_frames(frames)), np.array([8.0, 8, 30, 24]))
    assert (np.abs(back.masks[0, 0] - masks) > 0.5).mean() < 0.01  # white = the tracked object (H.264 edges)
    want = C.inpaint(C.video_from_frames(frames), masks[None, None])  # the one inpainting builder: grey there
    assert np.abs(back.frames - want.frames).mean() < 0.03
    # --mask-kind acts on the tracked masks as on a given mask (the one mask_aug)
    code, out = prepare(tmp_path, "inpaint", "--src-video", src, "--box", "8,8,30,24", "--track-model", sam2_model,
                        "--frames", "5", "--mask-kind", "bbox", name="bbox")
    assert code == 0
    boxed = C.task_inputs("mv2v", src_video=str(out / "src_video.mp4"), src_mask=str(out / "src_mask.mp4"),
                          frames=5, height=H, width=W).masks[0, 0]
    ys, xs = np.nonzero(masks[0])
    assert boxed[0, ys.min():ys.max() + 1, xs.min():xs.max() + 1].mean() > 0.95


# ----------------------------------------------------------------------------- text -> box (Grounding DINO)

GD_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "a", "red", "car", "dog", "the", "person"]


def gdino_folder(path, designed_score=None):
    """A random Grounding DINO (Swin backbone, BERT text encoder, fusion encoder, deformable decoder) of tiny width
    with a BERT tokenizer of a 13-word vocabulary, saved as transformers saves them. ``designed_score``: every
    query's logit on every text token is that value (the last text layer norm and the decoder's layer norm
    constant), so the detector's answer is known."""
    need("torch", "transformers")
    import torch
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              SwinConfig)

    path.mkdir(parents=True)
    (path / "vocab.txt").write_text("\n".join(GD_VOCAB) + "\n")
    backbone = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                          out_features=["stage2", "stage3", "stage4"])
    text = BertConfig(vocab_size=len(GD_VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=backbone, text_config=text, d_model=32, encoder_layers=1,
                              decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, num_queries=20, encoder_n_points=2, decoder_n_points=2)
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(cfg).eval()
    if designed_score is not None:
        with torch.no_grad():
            model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after.weight.zero_()
            model.model.encoder.layers[-1].text_enhancer_layer.layer_norm_after.bias.fill_(1.0)
            model.model.decoder.layer_norm.weight.zero_()
            model.model.decoder.layer_norm.bias.fill_(designed_score / 32)
    model.save_pretrained(path)
    BertTokenizer(str(path / "vocab.txt")).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gdino_model(tmp_path_factory):
    return gdino_folder(tmp_path_factory.mktemp("gdino") / "gd")


def test_gdino_post_processing_known_values():
    """The release's chain on designed outputs: the text, DETR's resize rule, the 0.25 box threshold on the best
    token, centre/size -> corners in frame pixels, NMS at IoU > 0.5, most confident first."""
    from vdot_jax.conditions.annotators import gdino as GD

    assert GD.caption_text(["Red car", "dog"]) == "red car. dog."  # predict_with_classes' ". ".join, lower, '.'
    assert GD.caption_text(caption="  A red car. ") == "a red car."
    assert GD.input_size(32, 48) == (800, 1200) and GD.input_size(1000, 800) == (1000, 800)
    assert GD.input_size(600, 800) == (800, 1066)
    assert GD.input_size(480, 832) == (769, 1332)  # 832 / 480 x 800 > 1333: short side round(769.04), long truncated
    assert GD.input_size(1000, 500) == (1332, 666)  # round(666.5) = 666 (Python's, as the release)
    h, w = 32, 64
    px = {2: [8, 8, 24, 24], 0: [8, 8, 24, 20], 5: [8, 8, 40, 24], 3: [40, 0, 64, 8], 1: [0, 0, 8, 8],
          4: [0, 24, 8, 32]}  # query -> corners; IoU(0, 2) = 0.75, IoU(5, 2) = 0.5 exactly (kept), 3 touches 5
    boxes = np.zeros((6, 4))
    for q, (x1, y1, x2, y2) in px.items():
        boxes[q] = [(x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
    logits = np.full((6, 8), -np.inf)
    logits[:, :3] = -9.0
    logits[[0, 1, 2, 3, 5], 1] = [0.0, -1.2, 2.0, -1.0, 0.5]  # sigmoid 0.5, 0.23 (dropped), 0.88, 0.27, 0.62
    logits[4, 2] = 1.0  # 0.73 on another token: the best token counts
    got, score = GD.detections(logits, boxes, h, w)
    np.testing.assert_allclose(got, [px[2], px[4], px[5], px[3]])  # query 0 suppressed by the better query 2
    np.testing.assert_allclose(score, 1 / (1 + np.exp(-np.array([2.0, 1.0, 0.5, -1.0]))))
    none = GD.detections(np.full((6, 8), -2.0), boxes, h, w)
    assert none[0].shape == (0, 4) and none[1].shape == (0,)


def test_gdino_detector_matches_transformers_processing(tmp_path, gdino_model):
    """Our input and box decoding against transformers' own Grounding DINO image processor and
    post_process_grounded_object_detection (the same rules, written independently), NMS on top."""
    import torch
    from transformers import GroundingDinoProcessor

    try:  # transformers 5: the PIL backend has its own class (the default one needs torchvision)
        from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
            GroundingDinoImageProcessorPil)
    except ImportError:  # transformers 4: the default class is the PIL one
        from transformers import GroundingDinoImageProcessor as GroundingDinoImageProcessorPil

    from vdot_jax.conditions.annotators import gdino as GD

    det = AN.load("detect", gdino_model)
    det.size, det.max_size = 200, 333  # a small network input for speed; the rule is the same at 800 / 1333
    frame = moving_video(1)[0]
    images = GroundingDinoImageProcessorPil(size={"shortest_edge": 200, "longest_edge": 333})
    proc = GroundingDinoProcessor(image_processor=images, tokenizer=det.tokenizer)
    ref = proc(images=frame, text="a red car.", return_tensors="pt")
    x = det.inputs(frame)
    assert x.shape == (1, 3, 200, 300)
    np.testing.assert_allclose(x, ref.pixel_values.numpy(), atol=1e-5)
    with torch.inference_mode():
        out = det.model(**ref)
    want = proc.post_process_grounded_object_detection(out, ref.input_ids, threshold=0.25, target_sizes=[(H, W)])[0]
    boxes, scores = det.detect(frame, "a red car.")
    assert len(want["scores"]) >= 2  # random weights: several boxes pass, so NMS and the order are exercised
    order = np.argsort(-want["scores"].numpy(), kind="stable")
    keep = GD.nms(want["boxes"].numpy()[order].astype(np.float64), want["scores"].numpy()[order])
    np.testing.assert_allclose(boxes, want["boxes"].numpy()[order][keep], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(scores, want["scores"].numpy()[order][keep], rtol=1e-5)
    np.testing.assert_allclose(det(frame, "a red car."), boxes[0])  # the most confident box is the one tracked
    blind = AN.load("detect", gdino_folder(tmp_path / "blind", designed_score=-4.0))  # all scores sigmoid(-4)
    blind.size, blind.max_size = 200, 333
    assert blind.detect(frame, "a dog.")[0].shape == (0, 4)
    with pytest.raises(AN.AnnotatorError, match="the detector finds no box for 'a dog.' on the first frame"):
        blind(frame, "a dog.")


def test_prepare_inpaint_from_a_label(tmp_path, gdino_model, sam2_model, capsys):
    """--label: the detector's box on the first frame, followed by SAM 2, then the one inpainting builder; the
    refusals are one line and write nothing."""
    src = str(video_io.write_video(tmp_path / "v.mp4", moving_video(5, 32, 48), fps=16))
    code, out = prepare(tmp_path, "inpaint", "--src-video", src, "--label", "Red car", "--detect-model", gdino_model,
                        "--track-model", sam2_model, "--frames", "1")
    assert code == 0, capsys.readouterr().err
    back = C.task_inputs("mv2v", src_video=str(out / "src_video.mp4"), src_mask=str(out / "src_mask.mp4"),
                         frames=1, height=H, width=W)
    frames = AN.to_uint8(C.video_from_frames(video_io.read_video(src, num_frames=1, size=(H, W))))
    box = AN.load("detect", gdino_model)(frames[0], "red car.")
    masks = AN.load("track", sam2_model)(frames, box)
    assert 0.02 < masks.mean() < 0.98
    assert (np.abs(back.masks[0, 0] - masks) > 0.5).mean() < 0.01  # white = the object the label found
    capsys.readouterr()
    for argv, msg in (
            (["--label", "car", "--track-model", sam2_model], "--label/--caption need --detect-model"),
            (["--caption", "a car", "--label", "car"], "give --label or --caption, not both"),
            (["--label", "car", "--box", "1,1,9,9"], "give one of --mask, --box/--track, --label/--caption"),
            (["--label", "car,", "--detect-model", gdino_model, "--track-model", sam2_model], "names separated"),
            (["--box", "1,1,9,9", "--detect-model", gdino_model], "--detect-model finds the object that --label"),
            (["--label", "car", "--detect-model", str(tmp_path / "none"), "--track-model", sam2_model],
             "detect weights")):
        code, never = prepare(tmp_path, "inpaint", "--src-video", src, *argv, name="never")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and msg in err and not never.exists(), (argv, err)
    code, never = prepare(tmp_path, "gray", "--src-video", src, "--label", "car", name="never")
    assert code == 2 and "--label is for tasks inpaint, layout, not gray" in capsys.readouterr().err


# ----------------------------------------------------------------------------- scribble (the release's network)


def release_scribble_keys():
    """The state dict of the release's ``ContourInference(3, 1, n_residual_blocks=3)``: name -> shape."""
    keys = {"model0.1": (64, 3, 7, 7), "model1.0": (128, 64, 3, 3), "model1.3": (256, 128, 3, 3),
            "model3.0": (256, 128, 3, 3), "model3.3": (128, 64, 3, 3), "model4.1": (1, 64, 7, 7)}
    keys.update({f"model2.{i}.conv_block.{j}": (256, 256, 3, 3) for i in range(3) for j in (1, 5)})
    out = {}
    for name, shape in keys.items():
        out[name + ".weight"] = shape
        out[name + ".bias"] = (shape[1] if name.startswith("model3") else shape[0],)  # transposed: [in, out, k, k]
    return out


def scribble_reference(state, x):
    """The release's forward written out with torch.nn.functional: reflection pads, convolutions, instance norms
    (no affine), ReLUs, three residual blocks, transposed convolutions, a sigmoid."""
    import torch.nn.functional as F

    def conv(x, name, pad=0, stride=1):
        if pad and stride == 1:
            x = F.pad(x, (pad,) * 4, mode="reflect")
            pad = 0
        return F.conv2d(x, state[name + ".weight"], state[name + ".bias"], stride=stride, padding=pad)

    norm_relu = lambda x: F.relu(F.instance_norm(x, eps=1e-5))  # noqa: E731
    x = norm_relu(conv(x, "model0.1", 3))
    x = norm_relu(conv(x, "model1.0", 1, 2))
    x = norm_relu(conv(x, "model1.3", 1, 2))
    for i in range(3):
        y = norm_relu(conv(x, f"model2.{i}.conv_block.1", 1))
        x = x + F.instance_norm(conv(y, f"model2.{i}.conv_block.5", 1), eps=1e-5)
    for name in ("model3.0", "model3.3"):
        x = norm_relu(F.conv_transpose2d(x, state[name + ".weight"], state[name + ".bias"], stride=2, padding=1,
                                         output_padding=1))
    return F.conv2d(F.pad(x, (3,) * 4, mode="reflect"), state["model4.1.weight"], state["model4.1.bias"]).sigmoid()


@pytest.fixture(scope="module")
def scribble_weights(tmp_path_factory):
    """Random weights of the release's scribble network, saved as its netG_A_latest.pth is (a torch state dict)."""
    need("torch")
    import torch

    from vdot_jax.conditions.annotators import scribble as SC

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("scribble") / "netG_A_latest.pth"
    torch.save(SC.network().state_dict(), path)
    return str(path)


def test_scribble_is_the_release_network_and_post_processing(scribble_weights):
    import torch

    from vdot_jax.conditions.annotators import scribble as SC

    state = torch.load(scribble_weights, weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == release_scribble_keys()  # the release's file loads
    model = AN.load("scribble", scribble_weights)
    frames = moving_video(3)
    x = torch.from_numpy(frames.transpose(0, 3, 1, 2).copy()).float() / 255.0
    with torch.no_grad():
        want = scribble_reference(state, x)[:, 0].numpy()
    got = model.lines(frames)
    assert got.shape == (3, H, W) and np.abs(got - want).max() < 1e-5
    assert got.std() > 1e-3  # not constant: random weights draw something
    np.testing.assert_array_equal(model(frames), SC.lines_to_frames(want))
    # post-processing: times 255, clipped, truncated, three equal channels
    out = SC.lines_to_frames(np.array([[[0.0, 0.5, 1.0, 0.9999, -0.1, 1.2]]]))
    np.testing.assert_array_equal(out[0, 0, :, 0], [0, 127, 255, 254, 0, 255])
    assert out.shape == (1, 1, 6, 3) and (out[..., 0] == out[..., 2]).all()


def test_prepare_scribble_end_to_end(tmp_path, video, scribble_weights, capsys):
    import torch

    code, out = prepare(tmp_path, "scribble", "--src-video", video, "--weights", scribble_weights)
    assert code == 0
    row = json.loads((out / "row.json").read_text())
    assert row["task"] == "scribble" and row["src_mask"] is None
    back = C.task_inputs("scribble", src_video=str(out / "src_video.mp4"), frames=T, height=H, width=W)
    frames = video_io.read_video(video, num_frames=T, size=(H, W))
    want = AN.annotate(AN.load("scribble", scribble_weights), C.video_from_frames(frames))
    assert np.abs(back.frames - want).mean() < 0.03  # H.264 of the written control
    code, out = prepare(tmp_path, "edges", "--src-video", video, name="edges")  # Canny stays a v2v row
    assert code == 0 and json.loads((out / "row.json").read_text())["task"] == "v2v"
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, other)
    code, out = prepare(tmp_path, "scribble", "--src-video", video, "--weights", str(other), name="never")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot load scribble weights from" in err and len(err.splitlines()) == 1
    assert not out.exists()


# ----------------------------------------------------------------------------- salient (the release's U^2-Net)


def test_salient_is_the_release_u2net_and_post_processing():
    """The release's U2NET(3, 1): its parameter count, names, shapes and dilations; RSU-7, RSU-4F and the whole
    net's wiring against the release's forward written out (each hx named as it names them); the map's
    post-processing and the box SAM 2 gets, on known values."""
    need("torch", "cv2")
    import torch
    import torch.nn.functional as F

    from vdot_jax.conditions.annotators import salient as SA

    full = SA.network()
    assert sum(p.numel() for p in full.parameters()) == 44_009_869  # U^2-Net's 176 MB u2net.pth
    shapes = {k: tuple(v.shape) for k, v in full.state_dict().items()}  # 112 conv+bn blocks (7 entries), 7 convs
    assert len(shapes) == 112 * 7 + 7 * 2 and shapes["stage1.rebnconvin.conv_s1.weight"] == (64, 3, 3, 3)
    assert shapes["stage1.rebnconv7.conv_s1.weight"] == (32, 32, 3, 3)
    assert shapes["stage1d.rebnconv1d.conv_s1.weight"] == (64, 32, 3, 3)
    assert shapes["stage5d.rebnconv3d.bn_s1.running_var"] == (256,) and shapes["outconv.weight"] == (1, 6, 1, 1)
    assert shapes["side6.weight"] == (1, 512, 3, 3) and "stage4.rebnconv5.conv_s1.weight" not in shapes
    assert [full.stage5.rebnconv4.conv_s1.dilation, full.stage5.rebnconv3d.conv_s1.dilation,
            full.stage3.rebnconv5.conv_s1.dilation] == [(8, 8), (4, 4), (2, 2)]

    torch.manual_seed(0)
    net = SA.network(1 / 16).eval()  # the same graph, narrow (speed)
    for m in net.modules():  # random batch-norm statistics, so eval mode is exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    up = lambda a, b: F.interpolate(a, size=b.shape[2:], mode="bilinear", align_corners=False)  # noqa: E731
    pool = lambda a: F.max_pool2d(a, 2, 2, ceil_mode=True)  # noqa: E731

    def rsu7(m, x):
        hxin = m.rebnconvin(x)
        hx1 = m.rebnconv1(hxin)
        hx2 = m.rebnconv2(pool(hx1))
        hx3 = m.rebnconv3(pool(hx2))
        hx4 = m.rebnconv4(pool(hx3))
        hx5 = m.rebnconv5(pool(hx4))
        hx6 = m.rebnconv6(pool(hx5))
        hx7 = m.rebnconv7(hx6)
        hx6d = m.rebnconv6d(torch.cat((hx7, hx6), 1))
        hx5d = m.rebnconv5d(torch.cat((up(hx6d, hx5), hx5), 1))
        hx4d = m.rebnconv4d(torch.cat((up(hx5d, hx4), hx4), 1))
        hx3d = m.rebnconv3d(torch.cat((up(hx4d, hx3), hx3), 1))
        hx2d = m.rebnconv2d(torch.cat((up(hx3d, hx2), hx2), 1))
        return m.rebnconv1d(torch.cat((up(hx2d, hx1), hx1), 1)) + hxin

    def rsu4f(m, x):
        hxin = m.rebnconvin(x)
        hx1 = m.rebnconv1(hxin)
        hx2 = m.rebnconv2(hx1)
        hx3 = m.rebnconv3(hx2)
        hx4 = m.rebnconv4(hx3)
        hx3d = m.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = m.rebnconv2d(torch.cat((hx3d, hx2), 1))
        return m.rebnconv1d(torch.cat((hx2d, hx1), 1)) + hxin

    def u2net(m, x):
        hx1 = m.stage1(x)
        hx2 = m.stage2(pool(hx1))
        hx3 = m.stage3(pool(hx2))
        hx4 = m.stage4(pool(hx3))
        hx5 = m.stage5(pool(hx4))
        hx6 = m.stage6(pool(hx5))
        hx5d = m.stage5d(torch.cat((up(hx6, hx5), hx5), 1))
        hx4d = m.stage4d(torch.cat((up(hx5d, hx4), hx4), 1))
        hx3d = m.stage3d(torch.cat((up(hx4d, hx3), hx3), 1))
        hx2d = m.stage2d(torch.cat((up(hx3d, hx2), hx2), 1))
        hx1d = m.stage1d(torch.cat((up(hx2d, hx1), hx1), 1))
        d1 = m.side1(hx1d)
        ds = [d1] + [up(s, d1) for s in (m.side2(hx2d), m.side3(hx3d), m.side4(hx4d), m.side5(hx5d), m.side6(hx6))]
        return torch.sigmoid(m.outconv(torch.cat(ds, 1)))

    x = torch.randn(1, 3, 50, 70)  # odd sizes: ceil pooling and upsampling to the skip's size
    with torch.no_grad():
        torch.testing.assert_close(net.stage1(x), rsu7(net.stage1, x))
        h = torch.randn(1, 32, 9, 7)
        torch.testing.assert_close(net.stage5(h), rsu4f(net.stage5, h))
        torch.testing.assert_close(net(x), u2net(net, x))

    model = SA.Salient(net)
    frame = moving_video(1)[0]
    x = model.inputs(frame)
    assert x.shape == (1, 3, 320, 320) and abs(x.mean()) < 3
    with torch.no_grad():
        d = net(torch.from_numpy(x))[0, 0].numpy()
    got = model(frame)
    assert got.shape == (H, W) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, SA.map_to_uint8(d, H, W))
    # post-processing: min-max to 0..255, truncated; OpenCV's bilinear resize; a constant map is 0
    np.testing.assert_array_equal(SA.map_to_uint8(np.array([[2.0, 3.0, 4.0, 6.0]]), 1, 4), [[0, 63, 127, 255]])
    assert (SA.map_to_uint8(np.full((4, 4), 0.3), 8, 8) == 0).all()
    m = np.zeros((6, 8), np.uint8)
    m[1, 2], m[4, 5], m[5, 7] = 1, 200, 0
    np.testing.assert_array_equal(SA.mask_box(m), [2, 1, 5, 4])  # pixels >= 1, inclusive corners
    assert SA.mask_box(np.zeros((3, 3))) is None
    # the reference image: kept where the map > 1, white elsewhere, cropped to those pixels
    img = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
    m = np.zeros((6, 8), np.uint8)
    m[1, 2], m[4, 5], m[2, 3], m[0, 7] = 2, 200, 1, 1  # 1 is not > 1: white, and outside the crop's extent
    want = np.full((4, 4, 3), 255, np.uint8)  # rows 1..4, columns 2..5
    want[0, 0], want[3, 3] = img[1, 2], img[4, 5]
    np.testing.assert_array_equal(SA.subject(img, m), want)
    assert SA.subject(img, np.ones((6, 8))) is None


@pytest.fixture(scope="module")
def salient_weights(tmp_path_factory):
    """Random weights of the release's U^2-Net (full width: 176 MB), saved as its u2net.pt is; the fusion reads
    only the first side output, sharpened around its median on the test video (30 per standard deviation), so part
    of the map is 0 (as a real model's background is)."""
    need("torch", "cv2")
    import torch

    from vdot_jax.conditions.annotators import salient as SA

    torch.manual_seed(0)
    net = SA.network().eval()
    seen = {}
    hook = net.side1.register_forward_hook(lambda m, i, o: seen.setdefault("d1", o))
    with torch.no_grad():
        net(torch.from_numpy(SA.Salient(net).inputs(moving_video(1)[0])))
        hook.remove()
        net.outconv.weight.zero_()
        gain = 30.0 / float(seen["d1"].std())
        net.outconv.weight[0, 0] = gain
        net.outconv.bias.fill_(-gain * float(seen["d1"].median()))
    path = tmp_path_factory.mktemp("salient") / "u2net.pt"
    torch.save(net.state_dict(), path)
    return str(path)


def test_salient_refusals_write_nothing(tmp_path, video, sam2_model, capsys):
    for argv, msg in ((["--salient-model", str(tmp_path / "none")], "salient weights"),
                      (["--salient-model", video, "--box", "1,1,9,9"], "give one of --mask, --box/--track, "
                                                                         "--label/--caption, --salient-model"),
                      (["--salient-model", video], "cannot load salient weights from")):
        code, out = prepare(tmp_path, "inpaint", "--src-video", video, *argv, name="never")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and msg in err and not out.exists(), (argv, err)
    code, out = prepare(tmp_path, "depth", "--src-video", video, "--salient-model", video, name="never")
    assert code == 2 and "--salient-model is for tasks inpaint, layout, not depth" in capsys.readouterr().err
    ref = str(video_io.write_image(tmp_path / "ref.png", moving_video(1)[0]))
    for argv, msg in ((["--ref-salient-model", video], "give --ref-images"),
                      (["--ref-images", ref, "--ref-salient-model", str(tmp_path / "none")], "salient weights")):
        code, out = prepare(tmp_path, "plain", "--src-video", video, *argv, name="never")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and msg in err and not out.exists(), (argv, err)


@pytest.mark.slow  # U^2-Net at full width on CPU: ~10 s a frame, twice, and SAM 2
def test_prepare_inpaint_salient_end_to_end(tmp_path, salient_weights, sam2_model):
    src = str(video_io.write_video(tmp_path / "v.mp4", moving_video(5, 32, 48), fps=16))
    frames = AN.to_uint8(C.video_from_frames(video_io.read_video(src, num_frames=5, size=(H, W))))
    smap = AN.load("salient", salient_weights)(frames[0])
    assert 0.1 < (smap > 0).mean() < 0.9  # an object, not everything
    # the release's salient mode: the first frame's map > 0, on every frame
    code, out = prepare(tmp_path, "inpaint", "--src-video", src, "--salient-model", salient_weights, "--frames", "5")
    assert code == 0
    back = C.task_inputs("mv2v", src_video=str(out / "src_video.mp4"), src_mask=str(out / "src_mask.mp4"),
                         frames=5, height=H, width=W)
    for t in range(5):
        assert (np.abs(back.masks[0, 0, t] - (smap > 0)) > 0.5).mean() < 0.01
    # salientbboxtrack: SAM 2 follows the box of the map's pixels >= 1
    from vdot_jax.conditions.annotators.salient import mask_box

    code, out = prepare(tmp_path, "inpaint", "--src-video", src, "--salient-model", salient_weights,
                        "--track-model", sam2_model, "--frames", "5", name="tracked")
    assert code == 0
    back = C.task_inputs("mv2v", src_video=str(out / "src_video.mp4"), src_mask=str(out / "src_mask.mp4"),
                         frames=5, height=H, width=W)
    masks = AN.load("track", sam2_model)(frames, mask_box(smap))
    assert (np.abs(back.masks[0, 0] - masks) > 0.5).mean() < 0.01
    # a reference image made the salient object on white, cropped (the release's image salient task)
    from vdot_jax.conditions.annotators.salient import subject

    img = moving_video(1, 40, 56)[0]
    ref = str(video_io.write_image(tmp_path / "ref.png", img))
    code, out = prepare(tmp_path, "plain", "--src-video", src, "--ref-images", ref, "--ref-salient-model",
                        salient_weights, name="ref")
    assert code == 0
    want = subject(img, AN.load("salient", salient_weights)(img))
    assert want.shape[0] < 40 or want.shape[1] < 56 or (want == 255).any()  # something was cut or whitened
    np.testing.assert_array_equal(video_io.read_image(out / "ref_0.png", normalize=False), want)  # png: lossless


# ----------------------------------------------------------------------------- face (the release's SCRFD detector)

# SCRFD outputs on a 640 x 640 input, designed: (stride, anchor index, score, distances left, top, right, bottom in
# strides). A 160 x 320 image is letterboxed at det_scale 2.
FACES = ((16, (10 * 40 + 12) * 2, 0.9, (2, 3, 4, 5)),  # A: (160, 112, 256, 240) -> image (80, 56, 128, 120)
         (16, (10 * 40 + 12) * 2 + 1, 0.8, (2, 3, 4, 4)),  # B: IoU 0.88 with A (+1 areas): suppressed
         (8, (5 * 80 + 60) * 2, 0.7, (1, 1, 1, 1)),  # C: centre (480, 40) -> image (236, 16, 244, 24)
         (32, (2 * 20 + 2) * 2, 0.5, (1, 1, 1, 1)),  # D: score 0.5 is kept (>=): image (16, 16, 48, 48)
         (32, 0, 0.49, (1, 1, 1, 1)))  # E: below the threshold


def scrfd_outputs(faces=FACES):
    """The 9 outputs (scores, boxes, key points per stride 8, 16, 32), float32."""
    n = {8: 12800, 16: 3200, 32: 800}
    scores = {s: np.zeros((k, 1), np.float32) for s, k in n.items()}
    boxes = {s: np.zeros((k, 4), np.float32) for s, k in n.items()}
    for stride, i, score, dist in faces:
        scores[stride][i, 0], boxes[stride][i] = score, dist
    return [scores[s] for s in n] + [boxes[s] for s in n] + [np.zeros((k, 10), np.float32) for k in n.values()]


def scrfd_onnx(path, faces=FACES):
    need("torch", "onnxruntime", "cv2")
    import torch

    class Const(torch.nn.Module):
        def __init__(self, outs):
            super().__init__()
            for i, o in enumerate(outs):
                self.register_buffer(f"o{i}", torch.from_numpy(o))

        def forward(self, x):
            z = 0 * x.mean()
            return tuple(getattr(self, f"o{i}") + z for i in range(9))

    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    torch.onnx.export(Const(scrfd_outputs(faces)), (torch.zeros(1, 3, 640, 640),), str(path), input_names=["input.1"],
                      output_names=names, dynamo=False)
    return str(path)


def test_face_detection_decoding_and_crop_known_values():
    from vdot_jax.conditions.annotators import face as FA

    det = FA.decode(scrfd_outputs(), det_scale=2.0)
    np.testing.assert_allclose(det, [[80, 56, 128, 120, 0.9], [236, 16, 244, 24, 0.7], [16, 16, 48, 48, 0.5]],
                               rtol=1e-6)
    assert FA.decode(scrfd_outputs(FACES[4:]), 2.0).shape == (0, 5)
    img = np.arange(160 * 320 * 3).reshape(160, 320, 3).astype(np.uint8)
    np.testing.assert_array_equal(FA.crop(img, det[0]), img[56:121, 80:129])  # inclusive of int(x2), int(y2)
    np.testing.assert_array_equal(FA.crop(img, [-3.5, 2.9, 10.2, 5.0]), img[2:6, 0:11])  # truncated; x1 clipped at 0
    # letterbox: fitted (the other side truncated), top-left on black; the input: BGR, (x - 127.5) / 128
    boxed, scale = FA.letterbox(img[:, :300])
    assert scale == 640 * 160 // 300 / 160 and (boxed[341:] == 0).all() and boxed[:341].any()
    tall, scale = FA.letterbox(img[:150, :100])
    assert scale == 640 / 150 and (tall[:, 426:] == 0).all() and tall[:, :426].any()
    import cv2

    x, scale = FA.FaceDetector.inputs(None, img)
    want = cv2.dnn.blobFromImage(FA.letterbox(img)[0], 1.0 / 128, (640, 640), (127.5, 127.5, 127.5), swapRB=True)
    assert scale == 2.0 and x.shape == (1, 3, 640, 640)
    np.testing.assert_allclose(x, want, atol=1e-6)


def test_prepare_face_reference_end_to_end(tmp_path, video, capsys):
    """--ref-face-model: the reference written is the first face's crop; no face, a non-SCRFD file, no references
    and two crop models are one line each, nothing written."""
    det = scrfd_onnx(tmp_path / "scrfd.onnx")
    img = moving_video(1, 160, 320)[0]
    ref = str(video_io.write_image(tmp_path / "me.png", img))
    code, out = prepare(tmp_path, "plain", "--src-video", video, "--ref-images", ref, "--ref-face-model", det)
    assert code == 0 and json.loads((out / "row.json").read_text())["ref_images"] == ["ref_0.png"]
    np.testing.assert_array_equal(video_io.read_image(out / "ref_0.png", normalize=False), img[56:121, 80:129])
    blind = scrfd_onnx(tmp_path / "blind.onnx", faces=FACES[4:])
    capsys.readouterr()
    for argv, msg in ((["--ref-images", ref, "--ref-face-model", blind], "me.png: the face detector finds no face"),
                      (["--ref-images", ref, "--ref-face-model", video], "cannot load face weights"),
                      (["--ref-face-model", det], "give --ref-images"),
                      (["--ref-images", ref, "--ref-face-model", det, "--ref-salient-model", det], "not both"),
                      (["--ref-images", ref, "--ref-face-model", str(tmp_path / "no.onnx")], "face weights")):
        code, never = prepare(tmp_path, "plain", "--src-video", video, *argv, name="never")
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert code == 2 and msg in err and not never.exists(), (argv, err)


def test_precompute_annotates_scribble_rows_through_the_registry(tmp_path, scribble_weights):
    """A raw row of task scribble gets its control from ``vdot precompute --annotate scribble=W``: the same network
    and post-processing as ``vdot prepare scribble`` (one implementation, the registry's)."""
    from pathlib import Path

    from vdot_jax.data import precompute as P
    from vdot_jax.data.manifest import read_manifest
    from vdot_jax.train.config import load_config

    vid = video_io.write_video(tmp_path / "v.mp4", moving_video(5, 32, 32), fps=16)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"task": "scribble", "caption": "a", "video": "v.mp4"}) + "\n")
    config = load_config(str(Path(__file__).resolve().parents[1] / "configs/tiny.py") + ":flow")
    config.data.manifest, config.data.num_frames = str(manifest), 1
    targets = P.annotation_targets(read_manifest(manifest), {"scribble": scribble_weights})
    assert targets == {0: "scribble"}
    got = P.annotate_rows(config, tmp_path / "ann", {"scribble": scribble_weights}, targets, log=lambda m: None)
    assert got["annotated_now"] == 1
    control = video_io.read_video(tmp_path / "ann/conditions/row-000000.scribble.mp4")
    want = AN.annotate(AN.load("scribble", scribble_weights),
                       C.video_from_frames(video_io.read_video(vid, num_frames=1, size=(32, 32))))
    assert control.shape == (1, 32, 32, 3) and np.abs(C.video_from_frames(control) - want).mean() < 0.03
