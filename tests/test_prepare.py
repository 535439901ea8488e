"""``vdot prepare`` and ``conditions.prepare``: the release's model-free preprocessing, checked on known values.

Small synthetic videos (9 frames of 32x48, or 13 of 48x64); mp4 round trips are compared with a tolerance for
H.264, array builders exactly."""

import json

import numpy as np
import pytest

from vdot_jax import conditions as C
from vdot_jax.cli import main
from vdot_jax.conditions import prepare as PR
from vdot_jax.data import video_io

T, H, W = 9, 32, 48


def ramp_video(t=T, h=H, w=W, seed=0):
    """[1, 3, t, h, w] in [-1, 1]: a smooth colour field per frame (survives H.264 well)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    f = np.stack([np.stack([np.sin(3 * x + k + c) * 0.8 for c in range(3)]) for k in range(t)], 1)
    return f[None].astype(np.float32) + 0 * y


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    video = ramp_video()
    mask = np.zeros((T, H, W), np.uint8)
    mask[:, 8:20, 16:40] = 255
    return {"dir": d, "video_arr": video,
            "video": str(video_io.write_video(d / "raw.mp4", C.frames_from_video(video)[0], fps=16)),
            "mask": str(video_io.write_image(d / "mask.png", np.repeat(mask[0, :, :, None], 3, 2))),
            "mask_video": str(video_io.write_video(d / "mask.mp4", mask, fps=16)),
            "small_mask": str(video_io.write_image(d / "small.png", np.zeros((16, 16, 3), np.uint8))),
            "ref": str(video_io.write_image(d / "ref.png", np.full((20, 30, 3), 200, np.uint8))),
            "bad": str(d / "bad.mp4")}


def prepare(tmp_path, *argv, name="out"):
    out = tmp_path / name
    assert main(["prepare", *argv, "--out", str(out), "--height", str(H), "--width", str(W)]) == 0
    row = json.loads((out / "row.json").read_text())
    return out, row


def read_back(out, row):
    """The prepared folder read as a row is read by ``vdot generate`` (one implementation: task_inputs)."""
    refs = [str(out / r) for r in row["ref_images"]]
    return C.task_inputs(row["task"], src_video=str(out / row["src_video"]),
                         src_mask=str(out / row["src_mask"]) if row["src_mask"] else None, ref_images=refs or None,
                         frames=row["frames"], height=row["height"], width=row["width"])


# ----------------------------------------------------------------------------- array builders, known values


def test_box_mask_release_rule_and_mapping():
    # start clamped and truncated, end truncated and exclusive (the release's bbox mode)
    m = PR.box_masks(np.array([[2.7, 3.2, 10.9, 8.0], [-5, -5, 100, 4.5]]), 16, 20)
    assert m.shape == (1, 1, 2, 16, 20)
    assert m[0, 0, 0].sum() == (8 - 3) * (10 - 2) and m[0, 0, 0, 3, 2] == 1 and m[0, 0, 0, 8, 9] == 0
    assert m[0, 0, 1].sum() == 4 * 20
    # 64x96 -> 32x32: scale 0.5 to cover (32x48), crop 8 columns each side
    b = PR.map_boxes(np.array([[32, 16, 64, 48]]), (64, 96), (32, 32))
    np.testing.assert_allclose(b, [[8, 8, 24, 24]])


def test_boxes_refused_outside_the_frame_and_wrong_count():
    with pytest.raises(C.ConditionError, match="not inside the 48x32 frame"):
        PR.boxes_per_frame(PR.parse_boxes("0,0,49,10"), T, (H, W))
    with pytest.raises(C.ConditionError, match="x1 < x2"):
        PR.boxes_per_frame(PR.parse_boxes("10,0,5,10"), T, (H, W))
    with pytest.raises(C.ConditionError, match="one per frame of the source \\(9\\), got 2"):
        PR.boxes_per_frame(PR.parse_boxes("0,0,4,4;0,0,5,5"), T, (H, W))
    with pytest.raises(C.ConditionError, match="four numbers"):
        PR.parse_boxes("1,2,3")


def test_track_interpolates_between_keyframes():
    b = PR.interpolate_track(PR.parse_track("2:0,0,10,10;6:8,4,18,14"), 9)
    np.testing.assert_allclose(b[0], [0, 0, 10, 10])  # held before the first keyframe
    np.testing.assert_allclose(b[4], [4, 2, 14, 12])  # halfway
    np.testing.assert_allclose(b[6], [8, 4, 18, 14])  # reached exactly
    np.testing.assert_allclose(b[8], [8, 4, 18, 14])  # held after
    with pytest.raises(C.ConditionError, match="past the video's last frame 8"):
        PR.interpolate_track({9: np.zeros(4)}, 9)


def test_mask_aug_bbox_hull_and_expand():
    m = np.zeros((1, 1, 1, 20, 30), np.float32)
    m[0, 0, 0, 5, 5] = m[0, 0, 0, 5, 15] = m[0, 0, 0, 15, 10] = 1  # a triangle's corners
    rng = np.random.default_rng(0)
    bbox = PR.mask_aug(m, "bbox", rng)[0, 0, 0]
    assert bbox.sum() == 11 * 11 and bbox[5:16, 5:16].all()
    hull = PR.mask_aug(m, "hull", rng)[0, 0, 0]
    assert hull[5, 5] and hull[5, 15] and hull[15, 10] and hull[8, 10]  # corners and inside
    assert not hull[15, 5] and not hull[15, 15] and hull.sum() < bbox.sum()
    assert np.array_equal(PR.mask_aug(m, "original", rng), m)
    many = np.repeat(m, 12, axis=2)  # random: one of the six per frame, drawn from the generator
    sim, kinds = np.random.default_rng(4), []
    for _ in range(12):  # the same draws: a mode per frame, then four sides for an *_expand one
        kinds.append(PR.MASKAUG_MODES[sim.integers(6)])
        if kinds[-1].endswith("_expand"):
            sim.random(4)
    got = PR.mask_aug(many, "random", np.random.default_rng(4))[0, 0]
    assert {got[i].sum() for i, k in enumerate(kinds) if k == "bbox"} == {121.0} and "bbox" in kinds
    assert all(got[i].sum() == 3 for i, k in enumerate(kinds) if k == "original")
    # expand: each side grows by iters * int(u * min(ratio * side, room / 2) / iters), u drawn left,right,top,bottom
    u = np.random.default_rng(7).random(4)
    grown = PR.mask_aug(m, "bbox_expand", np.random.default_rng(7), expand_ratio=0.5, expand_iters=2)[0, 0, 0]
    side = [2 * int(u[0] * min(5.5, 5 / 2) / 2), 2 * int(u[1] * min(5.5, 15 / 2) / 2),
            2 * int(u[2] * min(5.5, 5 / 2) / 2), 2 * int(u[3] * min(5.5, 5 / 2) / 2)]
    ys, xs = np.nonzero(grown)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5 - side[0], 15 + side[1], 5 - side[2], 15 + side[3])
    assert sum(side) > 0  # the seed grows something, so the test sees the sides
    assert grown.sum() == (11 + side[0] + side[1]) * (11 + side[2] + side[3])


def test_frame_refs_modes():
    v = ramp_video()
    first = PR.frame_refs(v, "firstlast", 2)
    assert first.masks[0, 0, :, 0, 0].tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]
    np.testing.assert_array_equal(first.frames[:, :, :2], v[:, :, :2])
    assert not first.frames[:, :, 2:7].any()  # grey = 0
    rnd = PR.frame_refs(v, "random", 3, np.random.default_rng(1))
    kept = np.nonzero(rnd.masks[0, 0, :, 0, 0] == 0)[0]
    assert len(kept) == 3 and np.array_equal(kept, np.sort(np.random.default_rng(1).choice(T, 3, replace=False)))
    np.testing.assert_array_equal(rnd.frames[:, :, kept], v[:, :, kept])


def test_outpaint_inner_and_gray_and_layout():
    v = ramp_video()
    u = PR.outpaint_inner(v, 0.25, 0, 0.25, 0.5)  # 8 rows top, 12 columns left, 24 right
    assert u.masks[0, 0, 0].sum() == H * W - (H - 8) * (W - 36)
    assert u.masks[0, 0, 0, 8:, 12:24].sum() == 0 and not u.frames[..., :8, :].any()
    np.testing.assert_array_equal(u.frames[..., 8:, 12:24], v[..., 8:, 12:24])
    g = PR.gray(np.array([1.0, -1.0, -1.0], np.float32).reshape(1, 3, 1, 1, 1))  # pure red
    np.testing.assert_allclose(g[0, :, 0, 0, 0], [0.114 - 0.886] * 3, atol=1e-6)  # the release's BGR weights
    lay = PR.layout_boxes(np.array([[4, 2, 20, 12]]), 16, 24)[0, 0, 0]
    assert lay[0, 0] == 1 and lay[7, 12] == 1  # white background, white inside
    col = lay[:, 10].tolist()  # thickness 2 is OpenCV's: one pixel either side of the edge
    assert col == [1, -1, -1, -1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, 1, 1]
    assert lay[2, 3] == -1 and lay[1, 3] == 1  # rounded corner
    m = np.zeros((1, 1, 1, 16, 24), np.float32)
    m[..., 4:12, 6:18] = 1
    m[..., 7:9, 10:12] = 0  # a hole: not outlined (external contours)
    lm = PR.layout_masks(m)[0, 0, 0]
    assert lm[:, 12].tolist() == [1, 1] + [-1] * 5 + [1, 1] + [-1] * 5 + [1, 1]  # thickness 3: two pixels either side


def test_edges_find_a_step_and_nothing_on_flat():
    v = -np.ones((1, 3, 1, 16, 16), np.float32)
    v[..., 8:] = 1.0  # a vertical step between columns 7 and 8
    e = PR.edges(v)[0, 0, 0]
    cols = np.nonzero((e > 0).any(0))[0]
    assert set(cols) <= {7, 8} and (e[:, 7] > 0).sum() + (e[:, 8] > 0).sum() >= 14
    assert not (PR.edges(np.zeros((1, 3, 1, 16, 16), np.float32)) > 0).any()


# ----------------------------------------------------------------------------- vdot prepare, files


def test_prepare_inpaint_box_matches_known_mask(tmp_path, raw):
    out, row = prepare(tmp_path, "inpaint", "--src-video", raw["video"], "--box", "16,8,40,20", "--prompt", "a cat",
                       "--ref-images", raw["ref"])
    assert row == {"prompt": "a cat", "task": "mv2v", "src_video": "src_video.mp4", "src_mask": "src_mask.mp4",
                   "ref_images": ["ref_0.png"], "frames": 9, "height": H, "width": W}
    mask = video_io.read_video(out / "src_mask.mp4", normalize=False)[..., 0]
    want = np.zeros((H, W))
    want[8:20, 16:40] = 255
    assert np.abs(mask - want).max() < 40 and ((mask > 127) == (want > 0)).all()
    video = video_io.read_video(out / "src_video.mp4", normalize=False)
    region = video[:, 10:18, 20:36]  # grey 128 where generated (H.264 chroma moves a pixel by a few levels)
    assert abs(region.mean() - 128) < 1.5 and np.abs(region - 128).max() <= 10
    vcu = read_back(out, row)
    assert vcu.num_refs == 1 and np.array_equal(vcu.masks[0, 0, 0], want > 0)


def test_prepare_appends_batch_rows(tmp_path, raw, capsys):
    rows = tmp_path / "jobs" / "rows.jsonl"
    prepare(tmp_path, "gray", "--src-video", raw["video"], "--prompt", "one", "--rows", str(rows), name="a")
    prepare(tmp_path, "inpaint", "--src-video", raw["video"], "--box", "0,0,8,8", "--prompt", "two",
            "--ref-images", raw["ref"], "--rows", str(rows), name="b")
    lines = [json.loads(x) for x in rows.read_text().splitlines()]
    assert [x["prompt"] for x in lines] == ["one", "two"]
    assert lines[0]["src_video"] == "../a/src_video.mp4" and lines[0]["src_mask"] is None
    assert lines[1]["src_mask"] == "../b/src_mask.mp4" and lines[1]["ref_images"] == ["../b/ref_0.png"]
    for x in lines:  # the batch reader resolves them from the rows file's folder
        for p in [x["src_video"], x["src_mask"], *x["ref_images"]]:
            assert p is None or (rows.parent / p).is_file()
    argv = ["prepare", "gray", "--src-video", raw["video"], "--rows", str(rows), "--out", str(tmp_path / "c")]
    assert main(argv) == 2 and "needs --prompt" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_prepare_inpaint_track_moves_the_box(tmp_path, raw):
    out, row = prepare(tmp_path, "inpaint", "--src-video", raw["video"], "--track", "0:0,0,8,8;8:40,24,48,32")
    m = read_back(out, row).masks[0, 0]
    for t in range(T):  # 5 pixels a frame, every box inside the frame, end exclusive
        want = np.zeros((H, W), bool)
        want[3 * t:3 * t + 8, 5 * t:5 * t + 8] = True
        np.testing.assert_array_equal(m[t], want)


def test_prepare_inpaint_mask_is_the_generate_task_inpaint(tmp_path, raw):
    """One implementation: prepare's files read back give the VCU ``vdot generate --task inpaint`` builds."""
    out, row = prepare(tmp_path, "inpaint", "--src-video", raw["video"], "--mask", raw["mask"])
    direct = C.task_inputs("inpaint", src_video=raw["video"], src_mask=raw["mask"], frames=T, height=H, width=W)
    back = read_back(out, row)
    np.testing.assert_array_equal(back.masks, direct.masks)
    assert np.abs(back.frames - direct.frames).max() < 0.1  # H.264 round trip
    out, row = prepare(tmp_path, "inpaint", "--src-video", raw["video"], "--mask", raw["mask_video"], name="mv")
    np.testing.assert_array_equal(read_back(out, row).masks, direct.masks)  # a mask video: the same mask


def test_prepare_outpaint_and_extension_match_generate_task(tmp_path, raw):
    out, row = prepare(tmp_path, "outpaint", "--src-video", raw["video"], "--expand", "0,0,0.25,0.25")
    direct = C.task_inputs("outpaint", src_video=raw["video"], frames=T, height=H, width=W, expand="0,0,0.25,0.25")
    back = read_back(out, row)
    np.testing.assert_array_equal(back.masks, direct.masks)
    assert back.masks[0, 0, 0, :, :8].all() and not back.masks[0, 0, 0, :, 8:40].any()  # 32 wide in the middle
    assert np.abs(back.frames - direct.frames).max() < 0.1
    # the whole clip by default (the release's firstclip), two clips for first_last_clip
    out, row = prepare(tmp_path, "last_clip", "--src-video", raw["video"], "--frames", "13", name="whole")
    back = read_back(out, row)
    assert back.masks[0, 0, :, 0, 0].tolist() == [1] * 4 + [0] * 9
    assert np.abs(back.frames[:, :, 4:] - raw["video_arr"]).max() < 0.1 and np.abs(back.frames[:, :, :4]).max() < 0.02
    out, row = prepare(tmp_path, "first_last_clip", "--src-video", f"{raw['video']},{raw['video']}", "--clip-frames",
                       "3", "--frames", "17", name="two")
    back = read_back(out, row)
    assert back.masks[0, 0, :, 0, 0].tolist() == [0] * 3 + [1] * 11 + [0] * 3
    assert np.abs(back.frames[:, :, 14:] - raw["video_arr"][:, :, -3:]).max() < 0.1
    out, row = prepare(tmp_path, "first_clip", "--src-video", raw["video"], "--clip-frames", "2", "--frames", "13",
                       name="ext")
    back = read_back(out, row)
    direct = C.task_inputs("first_clip", src_video=raw["video"], frames=13, height=H, width=W, clip_frames=2)
    assert back.num_frames == 13 and back.masks[0, 0, :, 0, 0].tolist() == [0, 0] + [1] * 11
    np.testing.assert_array_equal(back.masks, direct.masks)
    assert np.abs(back.frames - direct.frames).max() < 0.1


def test_prepare_controls_and_layout_track(tmp_path, raw):
    out, row = prepare(tmp_path, "gray", "--src-video", raw["video"])
    assert row["task"] == "gray" and row["src_mask"] is None and not (out / "src_mask.mp4").exists()
    g = read_back(out, row).frames
    assert np.abs(g[:, 0] - g[:, 2]).max() < 0.05 and (g.mean() != 0)
    for task in ("plain", "edges"):
        extra = ["--edge-low", "5", "--edge-high", "10"] if task == "edges" else []  # a smooth ramp: weak edges
        out, row = prepare(tmp_path, task, "--src-video", raw["video"], *extra, name=task)
        assert row["task"] == "v2v" and row["src_mask"] is None
        back = read_back(out, row).frames
        if task == "plain":
            assert np.abs(back - raw["video_arr"]).max() < 0.1
        else:  # white edges on black
            assert (back > 0.5).any() and (np.abs(np.abs(back) - 1) < 0.3).mean() > 0.95  # (H.264 blurs a little)
    out, row = prepare(tmp_path, "layout", "--track", "0:4,4,20,20;8:24,4,40,20", "--frames", "9", name="lay")
    lay = read_back(out, row).frames[0, 0]
    assert lay[0, 4, 10] < -0.8 and lay[8, 4, 30] < -0.8 and lay[4, 4, 20] < -0.8  # outline's top edge moves
    assert lay[0, 28, 40] > 0.8  # white background
    # with a video: its frame count and size place the boxes; the same drawing as without one at the same size
    out, row = prepare(tmp_path, "layout", "--src-video", raw["video"], "--track", "0:4,4,20,20;8:24,4,40,20",
                       name="lay_video")
    np.testing.assert_allclose(read_back(out, row).frames[0, 0], lay, atol=0.1)
    out, row = prepare(tmp_path, "layout", "--src-video", raw["video"], "--mask", raw["mask"], name="lay_mask")
    col = read_back(out, row).frames[0, 0, 0, :, 28]  # mask rows 8..19: outline two pixels either side of its edge
    assert (col[6:11] < -0.5).all() and (col[17:22] < -0.5).all() and (col[12:16] > 0.5).all() and col[3] > 0.5


def test_prepare_refusals_write_nothing(tmp_path, raw, capsys):
    out = tmp_path / "never"
    cases = [
        (["inpaint", "--src-video", raw["video"], "--box", "0,0,60,10"], "not inside the 48x32 frame"),
        (["inpaint", "--src-video", raw["video"], "--mask", raw["small_mask"]], "must be the same size"),
        (["inpaint", "--src-video", raw["video"], "--box", "0,0,8,8", "--frames", "13"], "has 9 frames; task "
                                                                                          "inpaint needs 13"),
        (["gray", "--src-video", raw["video"], "--frames", "8"], "1 \\+ 4k"),
        (["gray", "--src-video", raw["bad"]], "bad.mp4"),
        (["gray", "--src-video", raw["video"], "--ref-images", raw["bad"]], "bad.mp4"),
        (["outpaint", "--src-video", raw["video"]], "--expand"),
        (["gray", "--src-video", raw["video"], "--mode", "random"], "--mode is for task frameref, not gray"),
        (["inpaint", "--src-video", raw["video"], "--clip-frames", "2"], "--clip-frames is for tasks first_clip"),
        (["inpaint", "--src-video", raw["video"], "--box", "0,0,8,8", "--mask", raw["mask"]], "give one of --mask"),
        (["inpaint", "--src-video", raw["video"]], "needs --mask, --box/--track, --label"),
        (["layout", "--track", "0:0,0,8,8;81:0,0,9,9"], "past the video's last frame 80"),
        (["first_last_frame", "--src-image", raw["ref"]], "takes 2 image"),
        (["first_clip", "--src-video", raw["video"], "--frames", "9"], "keeps 9 frames, so --frames 9 leaves none"),
        (["first_last_clip", "--src-video", raw["video"]], "one with --clip-frames"),
        (["last_clip", "--src-video", raw["video"], "--clip-frames", "10", "--frames", "13"], "has 9 frames"),
        (["first_frame", "--src-image", raw["ref"], "--src-video", raw["video"]], "not both"),
        (["layout", "--box", "0,0,8,8", "--mask-kind", "hull"], "layout from boxes draws the boxes"),
        (["edges", "--src-video", raw["video"], "--edge-low", "50", "--edge-high", "20"], "--edge-low"),
    ]
    for argv, msg in cases:
        assert main(["prepare", *argv, "--out", str(out), "--height", str(H), "--width", str(W)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and __import__("re").search(msg, err), (argv, err)
        assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_prepare_output_folder_rule(tmp_path, raw, capsys):
    out = tmp_path / "full"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    argv = ["prepare", "gray", "--src-video", raw["video"], "--out", str(out), "--height", str(H), "--width", str(W)]
    assert main(argv) == 2 and "not empty and was not made by vdot prepare" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    assert main(argv + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [".vdot-prepare", "mine.txt", "row.json", "src_video.mp4"]
    # a masked task, then a control task over it: the stale mask goes, so the folder matches its row
    inpaint = ["prepare", "inpaint", "--src-video", raw["video"], "--box", "0,0,8,8", "--out", str(out), "--height",
               str(H), "--width", str(W), "--overwrite"]
    assert main(inpaint) == 0 and (out / "src_mask.mp4").exists()
    assert main(argv + ["--overwrite"]) == 0 and not (out / "src_mask.mp4").exists()
    # never over an input, even with --overwrite
    src = out / "src_video.mp4"
    before = src.read_bytes()
    again = ["prepare", "gray", "--src-video", str(src), "--out", str(out), "--height", str(H), "--width", str(W),
             "--overwrite"]
    assert main(again) == 2 and "would replace the input" in capsys.readouterr().err
    assert src.read_bytes() == before


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # builds and converts a tiny random WanVACEPipeline (~20 s), then 3 generations
@pytest.mark.parametrize("argv", [["inpaint", "--box", "16,8,40,20", "--mask-kind", "bbox_expand"],
                                  ["frameref", "--mode", "firstlast"],
                                  ["layout", "--track", "0:4,4,20,20;8:24,4,40,20"]],
                         ids=["inpaint", "frameref", "layout"])
def test_prepared_folder_feeds_vdot_generate(argv, tmp_path, raw, tiny_model, capsys):
    pytest.importorskip("diffusers")
    src = ["--src-video", raw["video"]] if argv[0] != "layout" else ["--frames", "9"]
    out, row = prepare(tmp_path, *argv, *src, "--prompt", "a red cat")
    video = tmp_path / "gen.mp4"
    extra = ["--src-mask", str(out / row["src_mask"])] if row["src_mask"] else ["--task", row["task"]]
    assert main(["generate", "--model", str(tiny_model), "--prompt", row["prompt"], "--src-video",
                 str(out / row["src_video"]), *extra, "--frames", str(row["frames"]), "--height", str(row["height"]),
                 "--width", str(row["width"]), "--out", str(video), "--quiet"]) == 0
    assert video_io.read_video(video).shape == (T, H, W, 3)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    pytest.importorskip("diffusers")
    from oracles import tiny_vace_pipeline
    from test_generate import DIT, MEAN, STD, WORDS

    return tiny_vace_pipeline(tmp_path_factory.mktemp("model"), DIT, WORDS, latents_mean=MEAN, latents_std=STD)[2]


# ----------------------------------------------------------------------------- OpenCV, the release's own library


def test_drawing_gray_and_mask_growth_match_opencv():
    """The release draws and grows masks with OpenCV; these are its calls, on random inputs."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(3)
    h, w = 40, 60
    for _ in range(50):  # LayoutBboxAnnotator: xywh truncated, rectangle of thickness 2, boxes partly outside too
        x1, x2 = np.sort(rng.uniform(-3, 63, 2))
        y1, y2 = np.sort(rng.uniform(-3, 43, 2))
        ref = np.full((h, w, 3), 255, np.uint8)
        x, y, bw, bh = np.array([x1, y1, x2 - x1, y2 - y1]).astype(int)
        cv2.rectangle(ref, (int(x), int(y)), (int(x + bw), int(y + bh)), (0, 0, 0), 2)
        np.testing.assert_array_equal(PR.layout_boxes(np.array([[x1, y1, x2, y2]]), h, w)[0, 0, 0] < 0,
                                      ref[..., 0] == 0)
    differ = total = 0
    for k in range(20):  # LayoutMaskAnnotator: external contours drawn at thickness 3
        m = np.zeros((h, w), np.uint8)
        m[rng.integers(0, 18):rng.integers(22, 40), rng.integers(0, 28):rng.integers(32, 60)] = 255
        m[rng.integers(18, 21):22, 28:rng.integers(29, 32)] = 0  # a hole (ignored: external contours)
        m[rng.integers(0, 40), rng.integers(0, 60)] = 255  # a one-pixel blob
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        ref = cv2.drawContours(np.full((h, w, 3), 255, np.uint8), contours, -1, (0, 0, 0), thickness=3)[..., 0] == 0
        mine = PR.layout_masks((m > 0)[None, None, None].astype(np.float32))[0, 0, 0] < 0
        differ, total = differ + (ref != mine).sum(), total + ref.sum()
    assert differ <= 0.002 * total  # rectangles with holes and dots: equal but for diagonal steps
    # MaskAugAnnotator's growth: cv2.dilate with its asymmetric kernel, `iters` times
    m = np.zeros((1, 1, 1, h, w), np.float32)
    m[0, 0, 0, 12:25, 20:33] = 1
    m[0, 0, 0, 14, 40] = 1
    u = np.random.default_rng(5).random(4)
    grown = PR.mask_aug(m, "original_expand", np.random.default_rng(5), expand_ratio=0.4, expand_iters=3)[0, 0, 0]
    left, right, top, bottom = 20, 40, 12, 24
    bw, bh = (right - left + 1) * 0.4, (bottom - top + 1) * 0.4
    sides = [int(u[0] * min(bw, left / 2) / 3), int(u[1] * min(bw, (w - right) / 2) / 3),
             int(u[2] * min(bh, top / 2) / 3), int(u[3] * min(bh, (h - bottom) / 2) / 3)]
    k = max(sides)
    kernel = np.zeros((2 * k, 2 * k), np.uint8)
    kernel[k - sides[3]:k + sides[2] + 1, k - sides[1]:k + sides[0] + 1] = 1
    ref = cv2.dilate(m[0, 0, 0].astype(np.uint8), kernel, iterations=3)
    assert k > 0 and grown.sum() > m.sum() and max(sides[0], sides[2]) == k  # the kernel's cut side is exercised
    np.testing.assert_array_equal(grown, ref)
    # GrayAnnotator: cv2.COLOR_BGR2GRAY on RGB frames
    rgb = rng.integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    ref = cv2.cvtColor(rgb[0], cv2.COLOR_BGR2GRAY).astype(np.float32)
    mine = (PR.gray(C.video_from_frames(video_io.to_unit_range(rgb)))[0, 0, 0] + 1) * 127.5
    assert np.abs(mine - ref).max() <= 0.51
    # edges: OpenCV's Canny with the L2 gradient, on shapes, a thin line and noise
    img = np.zeros((64, 96), np.uint8)
    cv2.circle(img, (30, 30), 15, 200, -1)
    cv2.rectangle(img, (50, 10), (85, 50), 120, -1)
    cv2.line(img, (5, 60), (90, 40), 255, 2)
    img = (cv2.GaussianBlur(img, (5, 5), 1.0) + rng.normal(0, 3, img.shape)).clip(0, 255).astype(np.uint8)
    ref = cv2.Canny(img, 100, 200, L2gradient=True) > 0
    mine = PR.edges(C.video_from_frames(video_io.to_unit_range(np.repeat(img[None, ..., None], 3, 3))))[0, 0, 0] > 0
    assert ref.sum() > 300
    np.testing.assert_array_equal(mine, ref)
    # the hull mode: OpenCV's convex hull of the contours, filled with PIL (as the release does)
    from PIL import Image, ImageDraw
    blob = np.zeros((h, w), np.uint8)
    blob[5:9, 5:30] = blob[5:35, 5:9] = blob[30:33, 20:22] = 1
    contours, _ = cv2.findContours(blob, 2, 1)
    hull = cv2.convexHull(np.concatenate(contours))[:, 0].astype(np.float32).tolist()
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in hull], fill=255)
    got = PR.mask_aug(blob[None, None, None].astype(np.float32), "hull", rng)[0, 0, 0]
    np.testing.assert_array_equal(got, np.asarray(img) > 0)
    line = np.zeros((h, w), np.float32)
    line[np.arange(3, 11), np.arange(4, 12)] = 1  # collinear pixels: the hull is the line itself, as OpenCV's
    np.testing.assert_array_equal(PR.mask_aug(line[None, None, None], "hull", rng)[0, 0, 0], line)
    dot = np.zeros((1, 1, 1, h, w), np.float32)
    dot[..., 7, 9] = 1
    np.testing.assert_array_equal(PR.mask_aug(dot, "hull", rng), dot)
