"""The toy world (vdot_jax.data.toy_world), its exact metrics (vdot_jax.eval.toy_metrics) and latent space
(vdot_jax.models.toy_vae): determinism, exact conditions, metrics that score the truth perfectly and wrong clips
badly, a meaningful Sinkhorn ordering, an exactly invertible VAE."""

import math
import time

import jax
import numpy as np
import pytest

from vdot_jax.data.toy_world import (
    COVERAGE_PROMPTS, EDIT_TASKS, LUMA, PALETTE, TASKS, VOCAB, ToyTextEncoder, ToyWorld,
    chroma, fill_outline, make_caption, outline, parse_caption, sample_batch,
)
from vdot_jax.eval.toy_metrics import (
    FEATURE_DIM, PSNR_CAP, analyse, clip_features, count_components, evaluate, sharpness_error, sinkhorn_divergence,
    to_markdown,
)
from vdot_jax.models.toy_vae import MIX, TOY_LATENTS_MEAN, TOY_LATENTS_STD, ToyVAE, latent_stats

WORLD = ToyWorld()
T, H, W = WORLD.frames, WORLD.height, WORLD.width
# 6 of every task + 4 more t2v = 64 samples, one fixed batch for most tests
EVAL_TASKS = [t for t in TASKS for _ in range(6)] + ["t2v"] * 4


@pytest.fixture(scope="module")
def batch():
    return WORLD.sample_batch(1234, len(EVAL_TASKS), EVAL_TASKS)


@pytest.fixture(scope="module")
def per_task():
    return {t: WORLD.sample_batch([7, i], 12, t) for i, t in enumerate(TASKS)}


# ----------------------------------------------------------------------------- world


def test_deterministic_from_seed():
    a, b = sample_batch(5, 16), sample_batch(5, 16)
    for name in ("video", "frames", "mask", "refs", "centre", "fg_mask", "determined"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.caption == b.caption and a.task == b.task
    c = sample_batch(6, 16)
    assert not np.array_equal(a.video, c.video)
    # the iterator is resumable: step i depends only on (seed, i); one task per batch
    it = WORLD.batches(3, 8)
    steps = [next(it) for _ in range(4)]
    resumed = next(WORLD.batches(3, 8, start=3))
    np.testing.assert_array_equal(steps[3].video, resumed.video)
    assert steps[3].caption == resumed.caption
    assert all(len(set(s.task)) == 1 for s in steps)


def test_render_speed():
    WORLD.sample_batch(0, 64)
    best = min(_timed(lambda i=i: WORLD.sample_batch(i, 64)) for i in range(3))
    assert best < 1.0, f"rendering 64 clips (all tasks) took {best:.3f} s"


def _timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_known_shapes():
    """Pixel counts worked out by hand: radius 4 centred on a pixel corner (16, 16)."""
    c = np.full((1, 1), 16.0)
    counts = [int(WORLD._shape_mask(np.array([s]), np.array([4.0]), c, c, H, W).sum()) for s in range(3)]
    assert counts == [64, 52, 32]  # 8x8 square; circle 4 x 13; triangle rows 0,2,2,4,4,6,6,8
    sq = WORLD._shape_mask(np.array([0]), np.array([4.0]), c, c, H, W)
    assert outline(sq).sum() == 28 and np.array_equal(fill_outline(outline(sq)), sq)
    assert parse_caption("a red circle moving left") == {"colour": 0, "shape": 1, "motion": 0}
    assert parse_caption("a shape") == {"colour": None, "shape": None, "motion": None}
    assert make_caption(3, 2, 2, (True, False, True)) == "a yellow shape moving up"


@pytest.mark.parametrize("bad", ["a red", "red circle", "a circle moving", "a circle moving left now",
                                 "a purple circle", "a circle red", ""])
def test_caption_grammar_errors(bad):
    with pytest.raises(ValueError):
        parse_caption(bad)


def test_captions_round_trip():
    for c in range(4):
        for s in range(3):
            for m in range(4):
                for spec in np.ndindex(2, 2, 2):
                    p = parse_caption(make_caption(c, s, m, np.array(spec, bool)))
                    want = [c, s, m]
                    assert [p[k] for k in ("colour", "shape", "motion")] == [
                        w if f else None for w, f in zip(want, spec)]


def test_world_clips(batch):
    v, fg = batch.video, batch.fg_mask
    assert v.dtype == np.float32 and v.shape == (len(batch), 3, T, H, W)
    assert v.min() >= -1 and v.max() <= 1
    # object pixels are exactly the palette colour, background is near-grey
    col = PALETTE[batch.colour][:, :, None, None, None]
    assert np.all(np.where(fg[:, None], v == col, True))
    assert chroma(v, 1)[~fg].max() <= 0.22 and chroma(v, 1)[fg].min() == 2
    # the whole object stays inside the frame with a 1-pixel border, in every frame
    assert not fg[..., 0, :].any() and not fg[..., -1, :].any() and not fg[..., :, 0].any() and not fg[..., :, -1].any()
    assert (fg.sum((2, 3)) > 0).all()
    # centres move linearly in the captioned direction; captions name the true attributes where specified
    d = batch.centre[:, -1] - batch.centre[:, 0]
    dirs = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])[batch.motion]
    assert np.all((d * dirs).sum(1) >= 0.25 * min(H, W) - 1e-4) and np.all(np.abs(d * (1 - np.abs(dirs))) < 1e-4)
    for i in range(len(batch)):
        p = parse_caption(batch.caption[i])
        for j, k in enumerate(("colour", "shape", "motion")):
            assert (p[k] is not None) == batch.specified[i, j]
            assert p[k] is None or p[k] == getattr(batch, k)[i]


def test_conditions_exact(per_task):
    for task, b in per_task.items():
        v, F, M, fg = b.video, b.frames, b.mask, b.fg_mask
        assert set(np.unique(M)) <= {0.0, 1.0}, task
        assert M.shape == (12, 1, T, H, W) and F.shape == v.shape
        keep = M == 0
        if task in EDIT_TASKS:
            np.testing.assert_array_equal(np.where(keep, F, 0), np.where(keep, v, 0))  # kept region == clip
            assert np.all(F[np.broadcast_to(~keep, F.shape)] == 0)  # masked region is grey 0
        else:
            assert np.all(M == 1), task
        if task == "first_frame":
            assert np.all(keep[:, :, 0]) and not keep[:, :, 1:].any()
        if task == "last_frame":
            assert np.all(keep[:, :, -1]) and not keep[:, :, :-1].any()
        if task == "first_clip":
            assert np.all(keep[:, :, : (T + 1) // 2]) and not keep[:, :, (T + 1) // 2:].any()
        if task == "inpaint":  # one box, the same in every frame, covering the whole object path
            assert np.all(M == M[:, :, :1]) and not (fg & keep[:, 0]).any()
            box = M[:, 0, 0] > 0
            rows, cols = box.any(2), box.any(1)
            assert np.array_equal(box, rows[:, :, None] & cols[:, None, :])
        if task == "outpaint":  # the kept part is a centred rectangle, the border is generated
            kept = keep[:, 0, 0]
            assert np.all(~kept[:, 0, :]) and np.all(~kept[:, -1, :]) and kept.any((1, 2)).all()
            rows, cols = kept.any(2), kept.any(1)
            assert np.array_equal(kept, rows[:, :, None] & cols[:, None, :])
        if task in ("t2v", "r2v"):
            assert np.all(F == 0)
        if task == "depth":
            assert np.all(F == F[:, :1])
            np.testing.assert_array_equal(F[:, 0] > 0, fg)
            assert F[:, 0][fg].min() >= 0.4 and F[:, 0][~fg].max() <= -0.3
        if task == "edges":
            assert set(np.unique(F)) == {-1.0, 1.0} and np.all(F == F[:, :1])
            np.testing.assert_array_equal(F[:, 0] > 0, outline(fg))
            np.testing.assert_array_equal(fill_outline(F[:, 0] > 0), fg)
        if task == "grey":
            lum = np.einsum("c,bcthw->bthw", LUMA, v)
            np.testing.assert_allclose(F, np.repeat(lum[:, None], 3, 1), atol=1e-6)
        if task == "r2v":
            assert b.refs.shape == (12, 1, 3, H, W) and np.all(b.n_refs == 1)
            ref = b.refs[:, 0]
            obj = chroma(ref, 1) > 1
            col = PALETTE[b.colour][:, :, None, None]
            assert np.all(np.where(obj[:, None], ref == col, ref == 1.0))  # object in its colour, on white
            c = np.full((12, 1), W / 2.0), np.full((12, 1), H / 2.0)
            np.testing.assert_array_equal(obj, WORLD._shape_mask(b.shape, b.radius.astype(np.float64), *c, H, W)[:, 0])
            a = analyse(ref[:, :, None])
            assert np.array_equal(a.colour, b.colour) and np.array_equal(a.shape, b.shape)
            assert all(cap.split()[:2] == ["a", "shape"] for cap in b.caption)
        else:
            assert b.refs.shape[1] == 0 and np.all(b.n_refs == 0)
    # what each condition fixes (colour, shape, motion), beyond the caption
    fixed = {t: per_task[t].determined & ~per_task[t].specified for t in TASKS}
    assert not fixed["t2v"].any() and not fixed["inpaint"].any()
    assert per_task["r2v"].determined.all() and per_task["grey"].determined.all()
    for t in ("depth", "edges"):
        assert per_task[t].determined[:, 1:].all()
    assert per_task["first_clip"].determined.all() and per_task["first_frame"].determined[:, :2].all()


def test_mixed_batch_refs():
    b = WORLD.sample_batch(0, 6, ["t2v", "r2v", "depth", "r2v", "grey", "inpaint"])
    assert b.refs.shape == (6, 1, 3, H, W) and list(b.n_refs) == [0, 1, 0, 1, 0, 0]
    assert np.all(b.refs[[0, 2, 4, 5]] == 0)
    s = b[1]
    assert s.task == "r2v" and s.refs.shape == (1, 3, H, W) and s.video.shape == (3, T, H, W)
    assert b[0].refs.shape == (0, 3, H, W)
    assert b.select([0, 2]).refs.shape == (2, 0, 3, H, W)


def test_world_errors():
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        ToyWorld(frames=8)
    with pytest.raises(ValueError, match="even"):
        ToyWorld(height=33)
    with pytest.raises(ValueError, match="unknown toy task"):
        WORLD.sample_batch(0, 2, "colourise")
    with pytest.raises(ValueError, match="one name per sample"):
        WORLD.sample_batch(0, 3, ["t2v", "grey"])


# ----------------------------------------------------------------------------- text encoder


def test_text_encoder():
    enc = ToyTextEncoder(dim=32, text_len=8)
    e = enc.encode(["a red circle moving left", "a shape", ""])
    assert e.shape == (3, 8, 32) and e.dtype == np.float32
    assert np.all(e[0, 5:] == 0) and np.all(np.abs(e[0, :5]).sum(-1) > 0)
    assert np.all(e[1, 2:] == 0) and np.all(e[2] == 0)
    np.testing.assert_array_equal(e[0, 0], e[1, 0])  # "a" is the same vector wherever it appears
    np.testing.assert_allclose(np.linalg.norm(enc.table, axis=1), math.sqrt(32), rtol=1e-5)
    assert len(enc.table) == len(VOCAB) == 14
    np.testing.assert_array_equal(ToyTextEncoder(32, 8).encode("a blue square"), enc.encode(["a blue square"]))
    assert not np.array_equal(ToyTextEncoder(32, 8, seed=1).table, enc.table)
    assert enc.encode("A Red circle").shape == (1, 8, 32)
    with pytest.raises(ValueError, match="purple"):
        enc.encode(["a purple circle"])
    with pytest.raises(ValueError, match="text_len"):
        ToyTextEncoder(text_len=4).encode("a red circle moving left")


# ----------------------------------------------------------------------------- metrics


def test_analysis_exact_on_world_clips():
    for world, n in ((WORLD, 512), (ToyWorld(frames=5, height=64, width=64), 96), (ToyWorld(height=32, width=48), 96)):
        b = world.sample_batch(99, n, "t2v")
        a = analyse(b.video)
        np.testing.assert_array_equal(a.fg, b.fg_mask)
        assert np.array_equal(a.colour, b.colour) and np.array_equal(a.shape, b.shape)
        assert np.array_equal(a.motion, b.motion) and np.all(a.artifact == 0)


def test_metrics_score_truth_perfectly(batch):
    m = evaluate(batch.video, batch)
    for t in TASKS:
        assert m[f"{t}/attr_acc"] == 1.0 and m[f"{t}/detect"] == 1.0 and m[f"{t}/artifact"] == 0.0
        assert m[f"{t}/sinkhorn"] < 1e-4
    for t in EDIT_TASKS:
        assert m[f"{t}/kept_psnr"] == PSNR_CAP
    assert m["depth/control_iou"] == 1.0 and m["edges/control_iou"] == 1.0 and m["grey/grey_psnr"] == PSNR_CAP
    for t in ("first_clip", "depth", "edges", "grey"):
        assert m[f"{t}/path_err"] == 0.0
    assert m["all/colour_acc"] == m["all/shape_acc"] == m["all/motion_acc"] == 1.0
    assert m["all/n"] == 64 and m["all/sinkhorn"] < 1e-4
    # a function of the batch works the same; the table has every key
    assert evaluate(lambda b: b.video, batch, sinkhorn=False)["all/attr_acc"] == 1.0
    table = to_markdown({"real": m})
    assert table.count("\n") == len(m) + 2 and "| inpaint/kept_psnr | 100 |" in table


def _recolour(b, shift=1):
    """Clips with the object painted the next palette colour (wrong colour, everything else right)."""
    v = b.video.copy()
    new = PALETTE[(b.colour + shift) % 4][:, :, None, None, None]
    return np.where(b.fg_mask[:, None], new, v)


def test_metrics_score_wrong_clips_badly(batch):
    det = batch.determined
    m = evaluate(_recolour(batch), batch, sinkhorn=False)
    assert m["all/colour_acc"] == 0.0 and m["all/shape_acc"] == 1.0 and m["all/motion_acc"] == 1.0
    assert m["all/attr_acc"] == pytest.approx(1 - det[:, 0].sum() / det.sum())
    m = evaluate(batch.video[:, :, ::-1], batch, sinkhorn=False)  # time reversed: motion reversed
    assert m["all/motion_acc"] == 0.0 and m["all/colour_acc"] == 1.0
    assert m["first_frame/kept_psnr"] < 30 and m["first_clip/path_err"] > 3
    noise = np.random.default_rng(0).uniform(-1, 1, batch.video.shape).astype(np.float32)
    m = evaluate(noise, batch)
    assert m["all/attr_acc"] < 0.5 and m["all/artifact"] > 0.5
    assert m["all/kept_psnr"] < 12 and m["all/control_iou"] < 0.3 and m["grey/grey_psnr"] < 15
    assert m["all/sinkhorn"] > 1.0


def test_fragmentation_counts_split_frames():
    fg = np.zeros((2, 5, 32, 32), bool)
    fg[0, 0, 1:3, 1:3] = True  # one square
    fg[0, 1, 1:3, 1:3] = fg[0, 1, 5:7, 5:7] = True  # two squares
    fg[0, 2, 2, 2] = fg[0, 2, 3, 3] = True  # diagonal neighbours: one 8-connected component
    fg[1, 0, 0, :8:2] = True  # four isolated pixels; the other frames empty
    np.testing.assert_array_equal(count_components(fg), [[1, 2, 1, 0, 0], [4, 0, 0, 0, 0]])
    # as clips: red objects on a grey background; 4 frames show foreground, 2 of them split, empty frames ignored
    video = np.where(fg[:, None], PALETTE[0][None, :, None, None, None], 0.0).astype(np.float32)
    assert analyse(video).components.tolist() == [[1, 2, 1, 0, 0], [4, 0, 0, 0, 0]]
    assert _quality_of(video)["all/fragmented"] == 0.5


def _quality_of(clips):
    """evaluate()'s fragmentation and sharpness of clips [B,3,T,H,W] against the world's clips of the same shape."""
    B, _, t, h, w = clips.shape
    b = ToyWorld(frames=t, height=h, width=w).sample_batch(0, B, "t2v")
    return evaluate(clips, b, sinkhorn=False)


def test_fragmentation_zero_on_world_and_sharpness_one(batch):
    m = evaluate(batch.video, batch, sinkhorn=False)
    for t in TASKS:
        assert m[f"{t}/fragmented"] == 0.0 and m[f"{t}/sharpness"] == 1.0
    assert m["all/fragmented"] == 0.0 and m["all/sharpness"] == 1.0 and sharpness_error(1.0) == 0.0


def test_sharpness_known_value():
    # every row a hard step -1 | +1: one horizontal jump of 2; the same step spread over two pixels (-1, 0, +1):
    # two jumps of 1, half the squared-difference energy. Vertical differences are 0 in both.
    hard = np.full((1, 3, 5, 32, 32), -1.0, np.float32)
    hard[..., 16:] = 1.0
    soft = hard.copy()
    soft[..., 16] = 0.0
    a, s = analyse(hard), analyse(soft)
    assert float(s.edge_rms[0] ** 2 / a.edge_rms[0] ** 2) == pytest.approx(0.5, rel=1e-6)
    # evaluate: the ratio against the batch's own clips; 2x2 box blur of world clips lowers it, noise raises it
    b = WORLD.sample_batch(11, 16, "t2v")
    v = b.video
    blur = (v + np.roll(v, 1, -1) + np.roll(v, 1, -2) + np.roll(np.roll(v, 1, -1), 1, -2)) / 4
    noisy = v + np.random.default_rng(0).normal(0, 0.3, v.shape).astype(np.float32)
    r_blur = evaluate(blur, b, sinkhorn=False)["all/sharpness"]
    r_noise = evaluate(noisy, b, sinkhorn=False)["all/sharpness"]
    assert 0.3 < r_blur < 0.8 and r_noise > 1.5
    assert sharpness_error(0.5) == sharpness_error(2.0) == 1.0


def test_psnr_known_value():
    b = WORLD.sample_batch(3, 4, "first_frame")
    v = b.video.copy()
    v[:, :, 0] = np.where(b.video[:, :, 0] > 0.9, b.video[:, :, 0] - 0.1, b.video[:, :, 0] + 0.1)  # |error| 0.1
    m = evaluate(v, b, sinkhorn=False)
    assert m["first_frame/kept_psnr"] == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-3)  # 26.02 dB


def test_mode_coverage():
    cov = WORLD.coverage_batch(0, n_per_prompt=12)
    assert len(cov) == 12 * len(COVERAGE_PROMPTS) and cov.caption[:12] == [COVERAGE_PROMPTS[0]] * 12
    m = evaluate(cov.video, cov, sinkhorn=False)
    assert m["coverage/groups"] == 5  # colour; shape; motion; colour and shape of "a shape moving right"
    assert m["coverage/tv"] == 0.0 and m["coverage/hit"] == 1.0 and m["coverage/entropy"] == pytest.approx(1.0)
    assert m["all/attr_acc"] == 1.0
    # collapse every "a circle moving left" to red: tv = 1 - 1/4, one colour of four hit, entropy 0
    red = cov.select(np.arange(12))
    clips = np.where(red.fg_mask[:, None], PALETTE[0][:, None, None, None], red.video)
    m = evaluate(clips, red, sinkhorn=False)
    key = "coverage: a circle moving left [colour]"
    assert m[f"{key}/tv"] == pytest.approx(0.75) and m[f"{key}/hit"] == 0.25 and m[f"{key}/entropy"] == 0.0


def test_sinkhorn_divergence():
    x = np.zeros((1, 3), np.float32)
    y = np.array([[1.0, 2.0, 2.0]], np.float32)
    assert sinkhorn_divergence(x, y) == pytest.approx(9.0, rel=1e-4)  # one point each: |x - y|^2
    n = 64
    real = [clip_features(WORLD.sample_batch([s, 1], n).video) for s in range(2)]
    assert real[0].shape == (n, FEATURE_DIM) and sinkhorn_divergence(real[0], real[0]) < 1e-4
    same = sinkhorn_divergence(real[0], real[1])
    shifted = {k: sinkhorn_divergence(real[0], clip_features(
        WORLD.sample_batch([5, 1], n, attributes={k: np.zeros(n)}).video)) for k in ("colour", "motion", "shape")}
    assert 0 < same < 0.4 and all(v > 1.3 * same for v in shifted.values()), (same, shifted)


# ----------------------------------------------------------------------------- toy VAE


def test_toy_vae_exact():
    vae = ToyVAE()
    assert vae.z_dim == 12 and vae.stride == (1, 2, 2) and vae.config.spatial_factor == 2
    np.testing.assert_allclose(MIX @ MIX.T, np.eye(12), atol=1e-6)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 5, 8, 12)).astype(np.float32)
    z = vae.encode(x)
    assert z.shape == (2, 12, 5, 4, 6) == vae.latent_shape(x.shape)
    np.testing.assert_allclose(np.asarray(vae.decode(z)), x, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(lambda v: vae.decode(vae.encode(v)))(x)), x, atol=1e-6)
    np.testing.assert_allclose(float((np.asarray(z) ** 2).sum()), float((x ** 2).sum()), rtol=1e-5)  # orthonormal
    zn = vae.normalize(z)
    np.testing.assert_allclose(np.asarray(vae.denormalize(zn)), np.asarray(z), atol=1e-5)
    # a constant grey clip of value g: channel 0 = 2 sqrt(3) g, the rest 0
    g = np.full((1, 3, 1, 4, 4), 0.25, np.float32)
    zg = np.asarray(vae.encode(g))
    np.testing.assert_allclose(zg[:, 0], 2 * math.sqrt(3) * 0.25, rtol=1e-6)
    np.testing.assert_allclose(zg[:, 1:], 0, atol=1e-7)
    # a world clip round-trips, and decode clips to [-1, 1] like Wan's (clip=False is the exact inverse)
    b = WORLD.sample_batch(0, 4)
    np.testing.assert_allclose(np.asarray(vae.decode(vae.encode(b.video))), b.video, atol=1e-6)
    big = np.asarray(vae.decode(3 * z))
    assert big.max() <= 1 and np.abs(np.asarray(vae.decode(3 * z, clip=False)) - 3 * x).max() < 1e-5
    with pytest.raises(ValueError, match="even"):
        vae.encode(np.zeros((1, 3, 5, 7, 8)))


def test_toy_vae_statistics_match_the_world():
    mean, std = latent_stats(n=512, seed=1)
    np.testing.assert_allclose(mean, TOY_LATENTS_MEAN, atol=0.05)
    np.testing.assert_allclose(std, TOY_LATENTS_STD, rtol=0.1)
    z = ToyVAE().normalize(ToyVAE().encode(WORLD.sample_batch(2, 256).video))
    s = np.asarray(z).std((0, 2, 3, 4))
    assert np.all((s > 0.85) & (s < 1.15)), s
