"""Training from raw videos: manifest rows with only ``video`` and ``caption`` (plus ``task`` / ``boxes`` / ``mask``)
get their task's inputs derived on the fly (``vdot_jax.conditions.derive``), the task drawn from
``data.raw_task_mix`` per (step, slot); rows that need an annotator model are refused before training."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from vdot_jax import conditions as C
from vdot_jax.cli import main
from vdot_jax.conditions import derive as D
from vdot_jax.conditions import prepare as PR
from vdot_jax.data import video_io
from vdot_jax.data.manifest import ManifestError, read_manifest, write_manifest
from vdot_jax.data.pipeline import ManifestSource, make_encoder
from vdot_jax.train.config import ConfigError, apply_overrides, check_data, load_config, validate
from vdot_jax.train.loop import train

flags.FLAGS.mark_as_parsed()
ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs/tiny.py")
ALL = [f"data.raw_task_mix.{t}=1" for t in D.RAW_TASKS]
SEED = 45  # with 4 slots x 6 steps, this seed's draws cover all 14 tasks (checked below, not assumed)
BOX = "8,8,40,32"  # source pixels of the 64x48 videos; 32x32 training frames: scale 2/3 to 43x32, crop 5 columns


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Three 9-frame 64x48 mp4s (decoded to 5 frames at 32x32), a mask image; rows with no condition files."""
    from vdot_jax.data.toy_world import ToyWorld

    d = tmp_path_factory.mktemp("raw")
    tb = ToyWorld(frames=9, height=48, width=64).sample_batch(0, 3, "t2v")
    for i in range(3):
        video_io.write_video(d / f"v{i}.mp4", tb.video[i].transpose(1, 2, 3, 0), fps=16)
    m = np.full((48, 64, 3), -1.0, np.float32)
    m[12:36, 16:48] = 1.0
    video_io.write_image(d / "mask.png", m)
    rows = [{"caption": "a red square", "video": "v0.mp4"},
            {"caption": "a blue circle moving left", "video": "v1.mp4", "boxes": BOX},
            {"caption": "a green shape", "video": "v2.mp4", "mask": "mask.png"}]
    return write_manifest(rows, d / "raw.jsonl")


def config(manifest, *overrides, mode="flow"):
    c = load_config(f"{TINY}:{mode}")
    apply_overrides(c, ["mesh.num_devices=1", "train.progress=false", "data.source=manifest",
                        f"data.manifest={manifest}", f"seed={SEED}", *overrides])
    return c


def source(manifest, *overrides) -> ManifestSource:
    c = config(manifest, *overrides)
    return ManifestSource(c, make_encoder(c, with_context=True))


def test_manifest_reads_raw_rows(raw):
    rows = read_manifest(raw)
    assert all(r.raw and not r.task_given and r.task == "t2v" for r in rows)
    assert rows[1].boxes == BOX and rows[2].mask.endswith("mask.png") and rows[0].boxes is rows[0].mask is None
    bad = raw.parent / "bad.jsonl"
    bad.write_text(json.dumps({"caption": "x", "video": "v0.mp4", "src_video": "v1.mp4", "boxes": BOX}) + "\n")
    with pytest.raises(ManifestError, match="row 1 has boxes/mask and condition files"):
        read_manifest(bad)


def test_each_model_free_task_is_what_conditions_builds_with_the_drawn_parameters(raw):
    """Known values: for (step 3, slot 1) each task's derived VCU equals the conditions builders called directly
    on the decoded ground truth with the parameters drawn from default_rng([seed, 3, 1]); plus fixed values (grey,
    masks, kept frames, the box mapped through the resize and crop)."""
    src = source(raw)
    plain, boxed, masked = src.rows
    video = C.video_from_frames(video_io.read_video(plain.video, num_frames=5, size=(32, 32)))
    box_video = C.video_from_frames(video_io.read_video(boxed.video, num_frames=5, size=(32, 32)))
    box = np.zeros((32, 32), np.float32)
    box[5:21, 0:21] = 1.0  # x 8..40 -> 0.375..21.875, y 8..32 -> 5.33..21.33 (PR.box_masks truncates)
    box_masks = np.broadcast_to(box, (1, 1, 5, 32, 32))
    mvcu = C.read_task_inputs(masked.video, masked.mask, None, 5, 32, 32)
    assert 0 < mvcu.masks.mean() < 1

    def derived(row, task):
        return src.derive(dataclasses.replace(row, task=task, task_given=True), 3, 1)

    def params(task, region=False):
        return D.draw_params(task, np.random.default_rng([SEED, 3, 1]), 5, 32, 32, region)

    def same(vcu, want: C.VCU):
        np.testing.assert_allclose(vcu.frames, want.frames, atol=1e-6)
        np.testing.assert_array_equal(vcu.masks, want.masks)
        assert vcu.kind == want.kind and vcu.num_refs == 0

    for task in D.RAW_TASKS:
        gt, vcu, name = derived(plain if task != "layout" else boxed, task)
        assert name == task
        np.testing.assert_array_equal(gt, video if task != "layout" else box_video)
        p = params(task, task == "layout")
        if task == "t2v":
            assert not vcu.frames.any() and vcu.masks.all()
        elif task == "plain":
            same(vcu, C.VCU(video, np.ones((1, 1, 5, 32, 32)), task="v2v", kind="control"))
        elif task == "gray":
            g = 0.114 * video[:, 0] + 0.587 * video[:, 1] + 0.299 * video[:, 2]
            np.testing.assert_allclose(vcu.frames, np.repeat(g[:, None], 3, 1), atol=1e-6)
            assert vcu.masks.all()
        elif task == "edges":
            assert 50 <= p["low"] <= 150 and p["high"] == 2 * p["low"]
            same(vcu, C.v2v(PR.edges(video, p["low"], p["high"]), "scribble"))
        elif task == "layout":
            same(vcu, C.v2v(PR.layout_boxes(np.array([[0.375, 16 / 3, 21.875, 64 / 3]] * 5), 32, 32), "layout"))
        elif task == "frameref":
            same(vcu, PR.frame_refs(video, p["mode"], p["ref_num"], np.random.default_rng(p["seed"])))
            kept = vcu.masks[0, 0, :, 0, 0] == 0
            assert kept.sum() == p["ref_num"] * (2 if p["mode"] == "firstlast" else 1)
            np.testing.assert_allclose(vcu.frames[:, :, kept], video[:, :, kept])
        elif task == "inpaint":
            m = PR.box_masks(np.array([p["box"]] * 5), 32, 32)
            assert 0.04 <= m.mean() <= 0.36 and m[0, 0, 0].any(0).sum() * m[0, 0, 0].any(1).sum() == m[0, 0, 0].sum()
            same(vcu, C.inpaint(video, m))
            assert not vcu.frames[vcu.masks.repeat(3, 1) > 0].any()
        elif task == "outpaint":
            t, b, l, r = (int(x * 32) for x in p["ratios"])
            same(vcu, PR.outpaint_inner(video, *p["ratios"]))
            assert vcu.masks[0, 0, 0, t:32 - b, l:32 - r].sum() == 0 and vcu.masks.sum() == 5 * (1024 - (32 - t - b)
                                                                                                  * (32 - l - r))
        else:  # the extension modes
            k = p.get("clip_frames", 1)
            assert 1 <= k <= 2
            same(vcu, C.extension_from_video(video, task, k))
            first, last = task.startswith("first"), task.startswith(("last", "first_last"))
            if first:
                np.testing.assert_allclose(vcu.frames[:, :, :k], video[:, :, :k])
            if last:
                np.testing.assert_allclose(vcu.frames[:, :, -k:], video[:, :, -k:])
            assert vcu.masks[0, 0, :, 0, 0].sum() == 5 - k * (first + last)

    # the row's region: boxes (mapped through resize + crop) and a mask file, through the mask augmentation
    _, vcu, _ = derived(boxed, "inpaint")
    p = params("inpaint", True)
    same(vcu, C.inpaint(box_video, PR.mask_aug(box_masks, p["mask_kind"], np.random.default_rng(p["seed"]))))
    if p["mask_kind"] in ("original", "bbox", "hull"):
        np.testing.assert_array_equal(vcu.masks, box_masks)
    _, vcu, _ = derived(masked, "layout")
    same(vcu, C.v2v(PR.layout_masks(mvcu.masks), "layout"))
    # a pure function of (step, slot): the same again, another slot draws other parameters
    again = derived(plain, "outpaint")[1]
    np.testing.assert_array_equal(again.masks, derived(plain, "outpaint")[1].masks)
    assert not np.array_equal(again.masks, src.derive(dataclasses.replace(plain, task="outpaint", task_given=True),
                                                       3, 2)[1].masks)


def test_tasks_are_drawn_per_slot_by_the_mix_weights(raw):
    """Deterministic frequencies: 3000 (step, slot) draws follow the weights within 3 %; a zero weight never, and
    layout only for a row with a region (then it takes its share)."""
    src = source(raw, "data.raw_task_mix.t2v=3", "data.raw_task_mix.inpaint=1", "data.raw_task_mix.gray=2",
                 "data.raw_task_mix.first_frame=0", "data.raw_task_mix.layout=2")
    plain, boxed, _ = src.rows
    for row, want in ((plain, {"t2v": 3 / 6, "inpaint": 1 / 6, "gray": 2 / 6}),
                      (boxed, {"t2v": 3 / 8, "inpaint": 1 / 8, "gray": 2 / 8, "layout": 2 / 8})):
        draws = [src.draw_task(row, step, slot)[1] for step in range(1000) for slot in range(3)]
        assert set(draws) == set(want)
        for t, p in want.items():
            assert abs(draws.count(t) / len(draws) - p) < 0.03, (t, draws.count(t))
    assert len({src.draw_task(plain, s, 0)[1] for s in range(10)}) > 1  # steps differ
    given = dataclasses.replace(plain, task="gray", task_given=True)
    assert {src.draw_task(given, s, 0)[1] for s in range(50)} == {"gray"}  # a row's own task is kept


def test_rows_needing_an_annotator_are_refused_in_one_line_before_training(raw, tmp_path, capsys):
    bad = raw.parent / "depth.jsonl"
    bad.write_text(json.dumps({"task": "depth", "caption": "a red square", "video": "v0.mp4"}) + "\n")
    with pytest.raises(ManifestError, match=r"row 1: task depth needs an annotator model .*`vdot precompute "
                                            r"--annotate depth=WEIGHTS` writes them"):
        check_data(config(bad))
    wd = tmp_path / "run"
    assert main(["train", "--config", TINY + ":flow", "--workdir", str(wd), "--config.data.source=manifest",
                 f"--config.data.manifest={bad}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "task depth needs an annotator model" in err[0] and not wd.exists()
    layout_only = config(raw, "data.raw_task_mix.layout=1")  # row 1 has no region for it
    with pytest.raises(ManifestError, match=r"row 1: no task of the raw task mix can be derived"):
        check_data(layout_only)
    with pytest.raises(ConfigError, match=r"raw_task_mix has task\(s\) \['depth'\] that cannot be derived"):
        validate(config(raw, "data.raw_task_mix.depth=1"))


def test_a_raw_manifest_trains_every_task_of_the_mix_and_resumes_with_identical_losses(raw, tmp_path):
    c = lambda steps: config(raw, *ALL, "data.batch_size=4", f"train.steps={steps}", "data.num_threads=2",  # noqa
                             f"train.compile_cache={tmp_path / 'xla'}")
    src = source(raw, *ALL, "data.batch_size=4")
    from vdot_jax.data.pipeline import StepPlan

    plan = StepPlan([0, 0, 0], 4, SEED)
    tasks = {src.draw_task(src.rows[next(plan.candidates(k, j))[1]], k, j)[1] for k in range(6) for j in range(4)}
    assert tasks == set(D.RAW_TASKS)  # the 24 samples of these 6 steps train every model-free task

    def losses(wd):
        return [(r["step"], r["flow_loss"]) for r in map(json.loads, (wd / "metrics.jsonl").read_text().splitlines())]

    whole = train(c(6), tmp_path / "whole")
    assert whole["step"] == 6 and whole["bad_samples"] == 0
    assert train(c(4), tmp_path / "cut")["step"] == 4  # stopped at step 4 (a checkpoint) ...
    assert train(c(6), tmp_path / "cut")["step"] == 6  # ... and resumed from it
    want = losses(tmp_path / "whole")
    assert [s for s, _ in want] == list(range(1, 7)) and all(np.isfinite(v) for _, v in want)
    assert losses(tmp_path / "cut") == want


def test_a_host_loading_some_rows_gets_the_same_samples_as_one_loading_all(raw):
    """The draw is keyed by the global slot (a * B + b), not by a host's local position."""
    from vdot_jax.data.pipeline import Layout, _LoadOne, make_source

    c = config(raw, *ALL, "data.batch_size=4")
    sampler, _ = make_source(c, make_encoder(c, with_context=True), True, 4)
    one, host = _LoadOne(sampler, Layout(1, 4, (0, 1, 2, 3))), _LoadOne(sampler, Layout(1, 4, (3, 1)))
    for k_host, k_all in ((2 * 2 + 0, 2 * 4 + 3), (2 * 2 + 1, 2 * 4 + 1)):  # step 2: rows 3 and 1
        a, b = host(k_host), one(k_all)
        assert a["task"] == b["task"] and a["row"] == b["row"]
        np.testing.assert_array_equal(a["context"], b["context"])
