"""``vdot data`` (``vdot_jax.data.curate``): a folder of small synthetic mp4s with a hard cut, a static, a black, a
low-resolution, a too-short, an uncaptioned and an unreadable video, an exact and a near duplicate: exactly those are
dropped, each with its reason, the cut becomes two clips, and the manifest feeds the training pipeline's raw rows."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from vdot_jax.cli import main
from vdot_jax.data import curate as CU
from vdot_jax.data import video_io

flags.FLAGS.mark_as_parsed()
ROOT = Path(__file__).parents[1]
CAPTIONS = {"a": "a red square", "b": "a green circle", "cut": "a yellow shape moving left"}
T = 24  # frames per synthetic shot, 16 fps
OPTS = ["--min-frames", "9", "--fps", "0", "--min-size", "48", "--max-seconds", "0", "--sheet", "20"]


def scene(seed: int, colour, frames=T, size=64, shift=0) -> np.ndarray:
    """uint8 [frames, size, size, 3]: a smooth random texture around ``colour``, rolling 1 pixel a frame (rolling
    keeps the colour histogram exactly, so only a cut changes it)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.uniform(-70, 70, (8, 8, 3))
    tex = np.stack([np.asarray(Image.fromarray(small[..., c].astype(np.float32)).resize((size, size),
                                                                                        Image.Resampling.BICUBIC))
                    for c in range(3)], -1)
    img = np.clip(tex + np.asarray(colour, np.float32), 0, 255).astype(np.uint8)
    return np.stack([np.roll(img, k + shift, axis=1) for k in range(frames)])


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    src = d / "videos"
    w = video_io.write_video
    w(src / "a.mp4", scene(1, (200, 60, 60)), fps=16)
    shutil.copy(src / "a.mp4", src / "a_copy.mp4")  # exact duplicate
    w(src / "a_near.mp4", scene(1, (205, 58, 62), shift=2), fps=16, quality=5)  # shifted, tinted, re-encoded
    w(src / "b.mp4", scene(2, (60, 200, 60)), fps=16)
    w(src / "sub/c.mp4", scene(3, (60, 60, 200)), fps=16)  # walked recursively
    w(src / "cut.mp4", np.concatenate([scene(4, (220, 200, 40)), scene(5, (40, 90, 140))]), fps=16)
    w(src / "static.mp4", np.repeat(scene(6, (120, 120, 120))[:1], T, 0), fps=16)
    w(src / "black.mp4", np.zeros((T, 64, 64, 3), np.uint8), fps=16)
    w(src / "lowres.mp4", scene(7, (150, 100, 200), size=32), fps=16)
    w(src / "short.mp4", scene(8, (100, 200, 200), frames=5), fps=16)
    w(src / "nocap.mp4", scene(9, (30, 160, 90)), fps=16)
    (src / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    for name in ("a", "a_copy", "b", "cut", "static", "black", "lowres", "short", "broken"):  # the toy vocabulary
        (src / f"{name}.txt").write_text(CAPTIONS.get(name, "a shape") + "\n")
    (d / "captions.jsonl").write_text(json.dumps({"video": "videos/sub/c.mp4", "caption": "a blue square"}) + "\n"
                                      + json.dumps({"video": "a_near.mp4", "caption": "a red shape"}) + "\n")
    out = d / "out"
    assert main(["data", str(src), "--out", str(out), "--captions", str(d / "captions.jsonl"), *OPTS]) == 0
    return {"dir": d, "src": src, "out": out, "report": json.loads((out / "report.json").read_text())}


def by_name(report) -> dict:
    got = {}
    for e in report["entries"]:
        got.setdefault(Path(e["source"]).name, []).append(e)
    return got


def test_drops_exactly_the_bad_clips_with_their_reasons_and_splits_the_cut(made):
    """Catches a detector that misses (or over-fires on) any case: each source's clips and outcomes are listed."""
    got = {k: [(e["start"], e["end"], e["status"]) for e in v] for k, v in by_name(made["report"]).items()}
    assert got == {
        "a.mp4": [(0, T, "kept")], "a_copy.mp4": [(0, T, "duplicate")], "a_near.mp4": [(0, T, "duplicate")],
        "b.mp4": [(0, T, "kept")], "c.mp4": [(0, T, "kept")], "cut.mp4": [(0, T, "kept"), (T, 2 * T, "kept")],
        "static.mp4": [(0, T, "static")], "black.mp4": [(0, T, "black")], "lowres.mp4": [(0, T, "low_resolution")],
        "short.mp4": [(0, 5, "too_short")], "nocap.mp4": [(0, T, "no_caption")], "broken.mp4": [(0, 0, "unreadable")]}
    c = made["report"]["counts"]
    assert c == {"kept": 5, "unreadable": 1, "low_resolution": 1, "too_short": 1, "black": 1, "static": 1,
                 "duplicate": 2, "no_caption": 1, "captioner_error": 0}
    dup = by_name(made["report"])["a_near.mp4"][0]["detail"]
    assert "a.mp4 frames 0-24" in dup  # the first of the group is kept, the others name it
    md = (made["out"] / "report.md").read_text()
    assert "| static | 1 |" in md and "broken.mp4" in md and "low_resolution" in md


def test_manifest_rows_are_the_kept_clips_with_sizes_and_captions(made):
    out = made["out"]
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(Path(r["source"]).name, r["start"], r["caption"]) for r in rows] == [
        ("a.mp4", 0, "a red square"), ("b.mp4", 0, "a green circle"), ("cut.mp4", 0, "a yellow shape moving left"),
        ("cut.mp4", T, "a yellow shape moving left"), ("c.mp4", 0, "a blue square")]
    for r in rows:  # each clip file is whole, its frames the source's range (H.264 tolerance)
        info = video_io.probe_video(out / r["video"])
        assert (info.num_frames, info.height, info.width) == (r["frames"], r["height"], r["width"]) == (T, 64, 64)
        got = video_io.read_video(out / r["video"], normalize=False)
        want = video_io.read_video(r["source"], normalize=False)[r["start"]:r["end"]]
        assert np.abs(got - want).mean() < 3
    assert sorted(p.name for p in (out / "clips").iterdir()) == sorted(Path(r["video"]).name for r in rows)
    from PIL import Image

    with Image.open(out / "contact_sheet.png") as im:  # a row per decodable clip (13 clips, one unreadable; --sheet 20)
        assert im.size[1] == 12 * (CU.SHEET_H + 4) + 4


def test_the_manifest_trains_through_the_raw_row_path(made):
    """One batch of the grain pipeline from the manifest (raw rows: every model-free task derivable)."""
    from vdot_jax.conditions import derive as D
    from vdot_jax.data.pipeline import DataPipeline, Layout
    from vdot_jax.train.config import apply_overrides, load_config

    c = load_config(f"{ROOT / 'configs/tiny.py'}:flow")
    apply_overrides(c, ["mesh.num_devices=1", "data.source=manifest", f"data.manifest={made['out'] / 'manifest.jsonl'}",
                        *[f"data.raw_task_mix.{t}=1" for t in D.RAW_TASKS if t != "layout"]])
    pipe = DataPipeline(c, Layout(1, 4, (0, 1, 2, 3)), with_context=True)
    arrays, info = next(pipe)
    pipe.close()
    assert arrays["latents"].shape[:2] == (1, 4) and np.isfinite(arrays["latents"]).all()
    assert info["bad"] == [] and len(set(info["row"])) == 4 and set(info["row"]) <= set(range(5))  # 5 rows, shuffled
    assert set(info["caption"]) <= {*CAPTIONS.values(), "a blue square"}


def test_rerun_keeps_written_clips_and_captioner_replaces_captions(made, tmp_path):
    out = made["out"]
    clip = next(p for p in (out / "clips").iterdir() if p.name.startswith("a-"))  # kept by both runs
    stamp = clip.stat().st_mtime_ns
    (out / "clips" / "notes.mp4").write_bytes(b"x")  # not a clip's name: a rerun leaves it
    cap = tmp_path / "cap.py"
    cap.write_text("from pathlib import Path\ndef caption(p):\n    if 'cut' in p: raise RuntimeError('no model')\n"
                   "    return '' if '-000000-' not in p else 'clip ' + Path(p).name[:1]\n")
    assert main(["data", str(made["src"]), "--out", str(out), "--captioner", f"{cap}:caption", *OPTS]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert clip.stat().st_mtime_ns == stamp  # not re-encoded
    got = {(Path(e["source"]).name, e["start"]): (e["status"], e["caption"]) for e in rep["entries"]}
    assert got[("a.mp4", 0)] == ("kept", "clip a") and got[("nocap.mp4", 0)] == ("kept", "clip n")
    assert got[("cut.mp4", 0)][0] == got[("cut.mp4", T)][0] == "captioner_error"
    rows = (out / "manifest.jsonl").read_text()
    left = sorted(p.name.split("-")[0] for p in (out / "clips").iterdir())
    assert "cut" not in rows and left == ["a", "b", "c", "nocap", "notes.mp4"]  # dropped clips gone, other files not
    (out / "clips" / "notes.mp4").unlink()


@pytest.mark.parametrize("argv, message", [
    (["--cut-threshold", "1.5"], "--cut-threshold is a fraction in 0..1"),
    (["--min-frames", "0"], "--min-frames must be a positive integer"),
    (["--max-seconds", "2"], "raise --max-seconds to at least 10"),
    (["--captioner", "no_such_module_x:fn"], "could not be loaded"),
    (["--captioner", "/nonexistent/cap.py:fn"], "does not exist"),
    (["--captions", "/nonexistent.jsonl"], "--captions /nonexistent.jsonl does not exist"),
])
def test_bad_options_are_one_line_before_any_work(made, tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    assert main(["data", str(made["src"]), "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()


def test_output_folder_rules(made, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    assert main(["data", str(made["src"]), "--out", str(other)]) == 2
    assert "not made by vdot data" in capsys.readouterr().err
    assert main(["data", str(made["src"]), "--out", str(made["src"] / "o")]) == 2
    assert "inside SRC" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text(next((made["out"] / "clips").iterdir()).as_posix() + "\n")
    assert main(["data", str(tmp_path / "list.txt"), "--out", str(made["out"])]) == 2
    assert "holds the input SRC" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("")
    assert main(["data", str(tmp_path / "list.txt"), "--out", str(tmp_path / "o2")]) == 2
    assert "holds no videos" in capsys.readouterr().err


def test_detectors_on_arrays():
    """Known values of the pure functions: cut indices, equal pieces, hash distance of a copy and of another."""
    assert CU.cuts(np.array([0.01, 0.5, 0.02, 0.31]), 0.3) == [2, 4]
    assert CU.segments(10, [4], None) == [(0, 4), (4, 10)]
    assert CU.segments(25, [], 10) == [(0, 8), (8, 17), (17, 25)]
    g = np.stack([CU.grey(CU.thumbnail(f)) for f in scene(1, (128, 128, 128), frames=8)])
    other = np.stack([CU.grey(CU.thumbnail(f)) for f in scene(2, (128, 128, 128), frames=8)])
    h = CU.clip_hash(g)
    assert CU.hash_distance(h, np.stack([h, CU.clip_hash(other)]))[0] == 0
    assert CU.hash_distance(h, CU.clip_hash(other)[None])[0] > 0.3
    assert CU.hist_distance(CU.histogram(np.zeros((4, 4, 3), np.uint8)),
                            CU.histogram(np.full((4, 4, 3), 255, np.uint8))) == 1.0


def test_clip_writer_leaves_a_whole_file_or_nothing(tmp_path):
    """Catches a writer that leaves a partial clip (which a rerun would then keep as done)."""
    frames = scene(1, (100, 100, 100), frames=6)
    with pytest.raises(RuntimeError):
        with video_io.ClipWriter(tmp_path / "c.mp4", 16) as w:
            for f in frames[:3]:
                w.append(f)
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with video_io.ClipWriter(tmp_path / "c.mp4", 16) as w:
        for f in frames:
            w.append(f)
    assert [p.name for p in tmp_path.iterdir()] == ["c.mp4"]
    assert video_io.probe_video(tmp_path / "c.mp4").num_frames == 6


# ----------------------------------------------------------------------------- resolution/length buckets

BUCKETS = "5x32x32,5x32x64,9x32x64"


@pytest.fixture(scope="module")
def bucketed(tmp_path_factory):
    """`vdot data` clips of three kinds -> buckets: square 64x64 (24 frames) -> 5x32x32; wide 32x64 (24 frames) ->
    9x32x64 (the longest of the two wide buckets); wide and 6 frames -> 5x32x64 (too short for 9)."""
    d = tmp_path_factory.mktemp("buckets")
    kinds = {"sq": dict(size=64), "wide": dict(size=64), "short": dict(size=64, frames=6)}
    n = 0
    for kind, count in (("sq", 3), ("wide", 3), ("short", 2)):
        for k in range(count):
            n += 1
            v = scene(100 + n, (60 + 20 * n, 200 - 15 * n, 90), **kinds[kind])
            if kind != "sq":
                v = v[:, 16:48]  # 32x64
            video_io.write_video(d / "src" / f"{kind}{k}.mp4", v, fps=16)
            (d / "src" / f"{kind}{k}.txt").write_text("a red square\n")
    out = d / "out"
    assert main(["data", str(d / "src"), "--out", str(out), "--min-frames", "5", "--fps", "0", "--min-size", "32",
                 "--max-seconds", "0"]) == 0
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    bare = out / "bare.jsonl"  # the same rows without the size columns: probed
    bare.write_text("".join(json.dumps({"video": r["video"], "caption": r["caption"]}) + "\n" for r in rows))
    want = [{"sq": 0, "wi": 2, "sh": 1}[Path(r["source"]).name[:2]] for r in rows]
    return out / "manifest.jsonl", bare, want


def bucket_config(manifest, accumulation=1):
    from vdot_jax.train.config import apply_overrides, load_config

    c = load_config(f"{ROOT / 'configs/tiny.py'}:flow")
    apply_overrides(c, ["mesh.num_devices=1", "data.source=manifest", f"data.manifest={manifest}", "seed=3"])
    c.optim.accumulation = accumulation
    c.data.buckets = BUCKETS  # not a key of the default config (train/config.py): set here as a config file would
    return c


def test_bucket_assignment_known_values(bucketed):
    from vdot_jax.data.pipeline import DataError, ManifestSource, assign_bucket, make_encoder, parse_buckets

    b = parse_buckets(BUCKETS)
    assert b == [(5, 32, 32), (5, 32, 64), (9, 32, 64)]
    assert assign_bucket((24, 16.0, 64, 64), b, None) == 0  # the aspect decides first
    assert assign_bucket((24, 16.0, 720, 1280), b, None) == 2  # 16:9 is nearer 2:1 than 1:1; the longest of those
    assert assign_bucket((24, 16.0, 720, 1280), b, 4.0) == 1  # re-timed to 4 fps: 6 frames, too few for 9
    assert assign_bucket((3, 16.0, 64, 64), b, None) == 0  # too short for all: the shortest (fails there, replaced)
    for manifest in bucketed[:2]:  # from the size columns, and probed
        c = bucket_config(manifest)
        assert ManifestSource(c, make_encoder(c, with_context=True)).bucket == bucketed[2]
    with pytest.raises(DataError, match="buckets 5x30x32"):
        c.data.buckets = "5x30x32"
        ManifestSource(c, make_encoder(c, with_context=True))


def test_buckets_one_shape_per_step_resumable_and_the_same_on_every_host(bucketed):
    """Catches a step that mixes buckets (no single batch shape), a resume that changes the order, and hosts that
    disagree: each step's rows share a bucket and its latents have that bucket's shape; an epoch covers every row
    once; a pipeline restored from a saved state continues identically; a host loading one row of the batch gets
    exactly that row of the full batch."""
    from vdot_jax.data.pipeline import DataPipeline, Layout, parse_buckets

    manifest, _, want = bucketed
    c = bucket_config(manifest)
    full = Layout(1, 2, (0, 1))
    pipe = DataPipeline(c, full, with_context=True)
    st = pipe.sampler.source.encoder.stride
    steps = [next(pipe) for _ in range(5)]  # one epoch: ceil(3/2) + ceil(3/2) + ceil(2/2)
    seen = []
    for arrays, info in steps:
        (bucket,) = {want[r] for r in info["row"]}
        f, h, w = parse_buckets(BUCKETS)[bucket]
        assert arrays["latents"].shape[-3:] == ((f - 1) // st[0] + 1, h // st[1], w // st[2])
        seen += info["row"]
    assert sorted(set(seen)) == list(range(8)) and len(seen) == 10  # two groups of 3 wrap once each
    a = DataPipeline(c, full, with_context=True)
    [next(a) for _ in range(2)]
    state = json.loads(json.dumps(a.get_state()))
    a.close()
    b = DataPipeline(c, full, with_context=True, state=state)
    for (x, xi), (y, yi) in zip(steps[2:], [next(b) for _ in range(3)]):
        assert xi["row"] == yi["row"] and all(np.array_equal(x[k], y[k]) for k in x)
    b.close()
    one = DataPipeline(c, Layout(1, 2, (1,)), with_context=True)
    for arrays, info in steps[:3]:
        got, gi = next(one)
        assert gi["row"] == info["row"][1:] and np.array_equal(got["latents"][:, 0], arrays["latents"][:, 1])
    one.close()
    pipe.close()


def test_buckets_is_a_config_option_checked_before_a_run():
    from vdot_jax.data.pipeline import DataError
    from vdot_jax.train.config import check_data, load_config

    c = load_config("configs/tiny.py")
    assert c.data.buckets == ""  # the default: one size, so `--config.data.buckets=...` is accepted on the CLI
    c.data.buckets = "9x32x32,9x32x32"
    with pytest.raises(DataError, match="names a bucket twice"):
        check_data(c)
