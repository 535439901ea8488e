"""``vdot eval`` over a small generated UVCBench-style index: every subtask family, a missing input file, an
unreadable index line; the VBench layout and the per-subtask table; a second run generates nothing; the offline
metrics and the subtask routing on their own. The model is a tiny random one built here (no torch)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import nnx

pytest.importorskip("imageio")
from vdot_jax.cli import main as vdot  # noqa: E402
from vdot_jax.data import video_io  # noqa: E402
from vdot_jax.eval import benchmark as B  # noqa: E402
from vdot_jax.eval.video_metrics import Sample, flicker, kept_mae, kept_psnr, temporal_consistency  # noqa: E402

T, H, W, Z = 5, 32, 32, 4
WORDS = "a the cat dog runs jumps on grass in snow red blue car face".split()


def _model_dir(root):
    """transformer (VACE, 2 layers), VAE (z 4, x8 space, x4 time) and umT5 with a WordLevel tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    from vdot_jax.models.config import WanConfig
    from vdot_jax.models.text_encoder import PromptTokenizer, TextEncoder
    from vdot_jax.models.umt5 import UMT5Config, UMT5EncoderModel
    from vdot_jax.models.vae import VAEConfig, WanVAE
    from vdot_jax.models.wan import WanModel
    from vdot_jax.weights.convert import save_transformer
    from vdot_jax.weights.text_encoder import save_text_encoder
    from vdot_jax.weights.wan_vae import save_vae

    dit = WanConfig(dim=32, ffn_dim=40, num_heads=2, num_layers=2, in_channels=Z, out_channels=Z, text_dim=16,
                    freq_dim=32, rope_max_seq_len=64, vace_layers=(0,), vace_in_channels=2 * Z + 64)
    save_transformer(WanModel(dit, rngs=nnx.Rngs(0)), root)
    vae = VAEConfig(base_dim=8, z_dim=Z, dim_mult=(1, 2, 2, 2), num_res_blocks=1, latents_mean=(0.0,) * Z,
                    latents_std=(1.0,) * Z)
    save_vae(WanVAE(vae, rngs=nnx.Rngs(1)), root)
    tok_dir = root / "tok"
    tok_dir.mkdir()
    tok = Tokenizer(models.WordLevel({"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(tok_dir / "tokenizer.json"))
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "</s>"}))
    umt5 = UMT5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=4)
    save_text_encoder(TextEncoder(UMT5EncoderModel(umt5, rngs=nnx.Rngs(2)), PromptTokenizer(tok_dir, 16)), root)
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(model dir, index, root): one row per subtask family, plus broken rows."""
    base = tmp_path_factory.mktemp("eval")
    model = _model_dir(base / "model")
    root = base / "data"
    yy, xx = np.mgrid[0:H, 0:W]
    video = np.stack([np.stack([(xx * 7 + i * 20) % 256, (yy * 5) % 256, np.full_like(xx, 90)], -1)
                      for i in range(T)]).astype(np.uint8)
    hole = np.zeros((T, H, W), np.uint8)
    hole[:, 8:24, 8:24] = 255
    grey = video.copy()
    grey[hole > 0] = 127
    first = np.full((T, H, W), 255, np.uint8)
    first[0] = 0
    ext = np.full_like(video, 127)
    ext[0] = video[0]
    files = {
        "depth.mp4": video[..., ::-1].copy(), "masked.mp4": grey, "hole.mp4": hole, "ext.mp4": ext,
        "first.mp4": first,
    }
    for name, frames in files.items():
        video_io.write_video(root / name, frames, fps=16)
    video_io.write_image(root / "face.png", np.full((20, 12, 3), 200, np.uint8))
    rows = [
        dict(subtask="t2v", sample_id="t0", en_prompt="a red car", src_video=None, src_mask=None, src_ref_images=None),
        dict(subtask="face", sample_id="f0", en_prompt="a face in snow", src_video=None, src_mask=None,
             src_ref_images=["face.png"]),
        dict(subtask="depth", sample_id="d0", en_prompt="a dog runs", src_video="depth.mp4", src_mask=None,
             src_ref_images=None),
        dict(subtask="inpainting", sample_id="i0", en_prompt="a cat on grass", src_video="masked.mp4",
             src_mask="hole.mp4", src_ref_images=""),
        dict(subtask="firstframe", sample_id="e0", en_prompt="the cat jumps", src_video="ext.mp4",
             src_mask="first.mp4", src_ref_images=None),
        dict(subtask="swap_anything", sample_id="s0", en_prompt="a blue cat", src_video="masked.mp4",
             src_mask="hole.mp4", src_ref_images="face.png"),
        dict(subtask="Mystery Task", sample_id="m0", en_prompt="a cat on grass", src_video="depth.mp4",
             src_mask=None, src_ref_images=None),
        dict(subtask="depth", sample_id="d1", en_prompt="a dog runs", src_video="gone.mp4", src_mask=None,
             src_ref_images=None),
        dict(subtask="inpainting", sample_id="i1", en_prompt="a cat", src_video="masked.mp4", src_mask=None,
             src_ref_images=None),
    ]
    index = root / "index.jsonl"
    index.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    return model, index, root


def _eval(bench, out, *extra):
    model, index, root = bench
    return vdot(["eval", "--model", str(model), "--index", str(index), "--root", str(root), "--out", str(out),
                 "--frames", str(T), "--height", str(H), "--width", str(W), *extra])


FAKE_VBENCH = """#!/usr/bin/env python3
import json, sys
from pathlib import Path
a = sys.argv[1:]
dim, videos, out = a[a.index("--dimension") + 1], a[a.index("--videos_path") + 1], a[a.index("--output_path") + 1]
files = sorted(Path(videos).glob("*.mp4"))
res = {dim: [0.5, [{"video_path": str(f), "video_results": 0.25 + i} for i, f in enumerate(files)]]}
Path(out, "vdot_eval_results.json").write_text(json.dumps(res))
"""


def test_eval_generates_scores_and_resumes(bench, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert _eval(bench, out) == 0
    cap = capsys.readouterr()
    assert "evaluated 9 rows of 7 subtask(s): 7 generated, 0 reused, 2 skipped, 0 failed" in cap.out
    assert "d1: skipped (missing input file" in cap.err and "gone.mp4" in cap.err
    assert "sampling: 4 steps, guide scale 1, shift 16 (the model's defaults)" in cap.err  # its vdot_model.json

    table = json.loads((out / "table.json").read_text())
    rows = table["subtasks"]
    assert {k: v["family"] for k, v in rows.items() if k != "all"} == {
        "t2v": "text", "face": "reference", "depth": "control", "inpainting": "repaint", "firstframe": "extension",
        "swap_anything": "composite", "Mystery Task": "control"}
    assert table["routed_by_files"] == ["Mystery Task"]
    assert rows["all"]["videos"] == 7 and rows["depth"]["skipped"] == 1 and rows["inpainting"]["skipped"] == 1
    reasons = {r["key"]: r["reason"] for r in table["skipped_rows"]}
    assert "gone.mp4" in reasons["depth/d1"]
    assert reasons["inpainting/i1"] == "subtask inpainting (repaint) needs src_mask"
    assert table["index_problems"][0]["line"] == 10 and "not valid JSON" in table["index_problems"][0]["reason"]
    for k in rows:  # per-video metrics everywhere, fidelity only where the mask keeps source pixels
        assert 0.0 <= rows[k]["temporal_consistency"] <= 1.0 and rows[k]["flicker"] >= 0.0
    for k in ("inpainting", "firstframe", "swap_anything"):
        assert rows[k]["kept_psnr"] > 0 and rows[k]["kept_mae"] >= 0
    for k in ("t2v", "face", "depth", "Mystery Task"):
        assert rows[k]["kept_psnr"] is None
    assert "vbench_subject_consistency" in table["skipped_metrics"]  # no VBench weights here: listed, not run
    md = (out / "table.md").read_text()
    assert "| swap_anything | composite |" in md and "## Metrics not computed" in md and "gone.mp4" in md

    # the layouts: ours by sample id, VBench's by prompt (k counts a prompt's rows within the subtask)
    for sub, sid in (("t2v", "t0"), ("face", "f0"), ("firstframe", "e0"), ("Mystery Task", "m0")):
        info = video_io.probe_video(out / "videos" / sub / f"{sid}.mp4")
        assert (info.num_frames, info.height, info.width) == (T, H, W)
    assert (out / "vbench" / "depth" / "a dog runs-0.mp4").exists()
    assert json.loads((out / "vbench" / "inpainting" / "index.json").read_text()) == {
        "a cat on grass-0.mp4": {"sample_id": "i0", "prompt": "a cat on grass"}}
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 9 and all("status" in r for r in records)

    # a second run generates nothing (the model is not even loaded) and gives the same table
    assert _eval(bench, out) == 0
    cap = capsys.readouterr()
    assert "7 reused" in cap.out and "0 generated" in cap.out and "loading the model" not in cap.err
    again = json.loads((out / "table.json").read_text())
    assert again["subtasks"]["all"]["temporal_consistency"] == rows["all"]["temporal_consistency"]

    # a VBench dimension runs through the vbench command (here a stand-in) once per subtask folder
    fake = tmp_path / "bin" / "vbench"
    fake.parent.mkdir()
    fake.write_text(FAKE_VBENCH)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    assert _eval(bench, out, "--metrics", "flicker,vbench_temporal_flickering", "--quiet") == 0
    capsys.readouterr()
    scored = json.loads((out / "table.json").read_text())
    assert scored["metrics"] == ["flicker", "vbench_temporal_flickering"] and not scored["skipped_metrics"]
    assert scored["subtasks"]["depth"]["vbench_temporal_flickering"] == 0.25  # one video in the folder
    assert scored["subtasks"]["all"]["flicker"] == rows["all"]["flicker"]

    # a broken video is generated again; --subtasks picks rows
    (out / "videos" / "depth" / "d0.mp4").write_bytes(b"broken")
    assert _eval(bench, out, "--subtasks", "depth", "--quiet") == 0
    assert "1 generated, 0 reused, 1 skipped" in capsys.readouterr().out


def test_eval_refusals(bench, tmp_path, capsys):
    model, index, root = bench
    assert vdot(["eval", "--model", str(model), "--index", str(tmp_path / "none.jsonl"), "--root", str(root),
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert _eval(bench, tmp_path / "o", "--metrics", "flicker,sharpness") == 2
    assert "unknown metric(s) sharpness" in capsys.readouterr().err
    assert _eval(bench, tmp_path / "o", "--steps", "0") == 2
    assert "--steps must be a positive integer, got 0" in capsys.readouterr().err
    assert vdot(["eval", "--transformer", str(model), "--index", str(index), "--root", str(root),
                 "--out", str(tmp_path / "o")]) == 2
    assert "give --model DIR" in capsys.readouterr().err
    assert vdot(["eval", "--list-metrics"]) == 0
    assert "kept_psnr" in capsys.readouterr().out


def test_routing():
    assert B.route("Depth").family == "control" and B.route("pose_body").control == "pose"
    assert B.route("layout-track").control == "layout"
    assert B.route("outpainting").needs == ("src_video", "src_mask")
    assert B.route("firstlastclip").family == "extension" and B.route("i2v").family == "extension"
    assert B.route("reference").needs == ("src_ref_images",) and B.route("face").family == "reference"
    assert B.route("animate_anything") == B.Route("composite", ("src_video", "src_ref_images"), "pose")
    assert B.route("T2V").family == "text" and B.route("something new") is None


def test_offline_metrics():
    still = np.full((6, 8, 8, 3), 100, np.uint8)
    assert temporal_consistency(Sample(still)) == 1.0 and flicker(Sample(still)) == 0.0
    ramp = np.stack([np.full((8, 8, 3), 10 * t, np.uint8) for t in range(6)])  # steady change: no flicker
    assert temporal_consistency(Sample(ramp)) == pytest.approx(1 - 10 / 255) and flicker(Sample(ramp)) == 0.0
    blink = np.stack([np.full((8, 8, 3), 200 * (t % 2), np.uint8) for t in range(6)])
    assert flicker(Sample(blink)) == pytest.approx(400.0)
    src = still.astype(np.float32) / 127.5 - 1.0
    mask = np.zeros((6, 8, 8), np.float32)
    mask[:, :4] = 1.0  # the top half is generated: only the bottom half counts
    gen = still.copy()
    gen[:, :4] = 0
    assert kept_psnr(Sample(gen, src, mask)) == float("inf") and kept_mae(Sample(gen, src, mask)) == 0.0
    gen[:, 4:] = 110
    assert kept_mae(Sample(gen, src, mask)) == pytest.approx(10.0, abs=1e-3)
    # a uniform error of 10 grey levels: 20 log10(255 / 10) = 28.13 dB (a known value, not just a sign)
    assert kept_psnr(Sample(gen, src, mask)) == pytest.approx(20 * np.log10(255 / 10), abs=1e-3)
    assert 20 * np.log10(255 / 10) == pytest.approx(28.13, abs=5e-3)
    assert kept_psnr(Sample(gen, src, np.ones_like(mask))) is None  # nothing kept
    assert kept_psnr(Sample(gen)) is None  # no source
