"""Training data: manifests, the grain pipeline (toy / manifest / precomputed), host sharding, bad data, precompute.

No model is compiled here; everything is numpy and file I/O."""

import json

import numpy as np
import pytest
from absl import flags

from vdot_jax import conditions as C
from vdot_jax.data.manifest import ManifestError, read_manifest, write_manifest
from vdot_jax.data.pipeline import DataError, DataPipeline, Layout, NumpyToyVAE, StepPlan, make_encoder
from vdot_jax.data.video_io import read_video, write_image, write_video
from vdot_jax.train.config import base_config

flags.FLAGS.mark_as_parsed()  # grain reads absl flags


def toy_config(**data):
    c = base_config()
    c.optim.accumulation = 2
    c.data.toy.frames = 5
    c.data.toy.text_dim = 8
    for k, v in data.items():
        setattr(c.data, k, v)
    return c


def take(pipe, n):
    return [next(pipe) for _ in range(n)]


def test_toy_stream_is_deterministic_resumable_and_the_same_for_any_host_split():
    c = toy_config()
    full = Layout(2, 4, (0, 1, 2, 3))
    a = take(DataPipeline(c, full, with_context=True), 3)
    b = DataPipeline(c, full, with_context=True)
    b_first = take(b, 2)
    state = json.loads(json.dumps(b.get_state()))  # what a checkpoint stores
    for x, y in zip(a[:2], b_first):
        for k in x[0]:
            np.testing.assert_array_equal(x[0][k], y[0][k])
    resumed = next(DataPipeline(c, full, with_context=True, state=state))
    for k in a[2][0]:
        np.testing.assert_array_equal(a[2][0][k], resumed[0][k])
    # two hosts, each loading half of every micro-batch, see exactly the one-host batch
    halves = [DataPipeline(c, Layout(2, 4, rows), with_context=True, state=state) for rows in [(0, 1), (2, 3)]]
    parts = [next(h)[0] for h in halves]
    for k in a[2][0]:
        np.testing.assert_array_equal(np.concatenate([p[k] for p in parts], axis=1), a[2][0][k])
    arrays, info = a[0]
    assert arrays["latents"].shape == (2, 4, 12, 5, 16, 16) and arrays["context"].shape == (2, 4, 28, 5, 16, 16)
    assert arrays["text"].shape == (2, 4, 8, 8) and not arrays["neg_text"].any()  # "" encodes to zeros
    assert len(set(info["task"])) == 1  # one task per step: fixed shapes
    c2 = toy_config()
    c2.seed = 1
    assert not np.array_equal(next(DataPipeline(c2, full, with_context=True))[0]["latents"], arrays["latents"])


def test_toy_encoding_is_the_demo_encoding():
    """The numpy toy VAE equals ToyVAE, and a toy sample equals conditions.vace_context with ToyVAE."""
    import jax.numpy as jnp

    from vdot_jax.data.pipeline import ToySource
    from vdot_jax.data.toy_world import ToyTextEncoder, ToyWorld
    from vdot_jax.models.toy_vae import ToyVAE

    c = toy_config()
    c.data.toy.task_mix = {"r2v": 1.0}  # with a reference image: latents get a leading reference frame
    src = ToySource(c, make_encoder(c, with_context=True))
    s = src.sample(3, 1)
    tb = ToyWorld(frames=5).sample_batch(np.random.default_rng([0, 3, 1]), 1, "r2v")
    vae = ToyVAE()
    np.testing.assert_allclose(NumpyToyVAE().encode(tb.video), vae.encode(tb.video), atol=2e-6)
    ref = np.asarray(vae.normalize(vae.encode(tb.refs[:, 0][:, :, None])))[0]
    vid = np.asarray(vae.normalize(vae.encode(tb.video)))[0]
    np.testing.assert_allclose(s["latents"], np.concatenate([ref, vid], axis=1), atol=2e-5)
    ctx = C.vace_context(C.VCU(tb.frames, tb.mask, tb.refs, task="r2v", kind="reference"), vae)
    np.testing.assert_allclose(s["context"], np.asarray(ctx)[0], atol=2e-5)
    np.testing.assert_array_equal(s["text"], ToyTextEncoder(dim=8, text_len=8).encode(tb.caption)[0])
    assert jnp.asarray(s["latents"]).shape == (12, 6, 16, 16)


def test_step_plan_covers_every_row_once_per_epoch_in_groups_of_equal_reference_count():
    refs = [0] * 7 + [1] * 3
    plan = StepPlan(refs, slots=4, seed=0)
    assert plan.steps_per_epoch == 2 + 1
    seen = []
    for step in range(plan.steps_per_epoch):
        rows = [next(plan.candidates(step, j)) for j in range(4)]
        assert len({r for r, _ in rows}) == 1  # one reference count per step
        seen += [row for _, row in rows]
    assert set(seen) == set(range(10))
    epoch2 = [next(plan.candidates(plan.steps_per_epoch + s, j))[1] for s in range(3) for j in range(4)]
    assert epoch2 != seen and set(epoch2) == set(range(10))  # reshuffled
    assert [next(plan.candidates(s, 0)) for s in range(6)] == [next(StepPlan(refs, 4, 0).candidates(s, 0))
                                                                 for s in range(6)]


# ----------------------------------------------------------------------------- manifests and files


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small videos at the toy size (5 frames, 32x32): good ones, a corrupt one, a short one, a bad mask."""
    from vdot_jax.data.toy_world import ToyWorld

    d = tmp_path_factory.mktemp("videos")
    world = ToyWorld(frames=5)
    tb = world.sample_batch(0, 6, "inpaint")
    out = {}
    for i in range(6):
        out[f"v{i}"] = str(write_video(d / f"v{i}.mp4", tb.video[i].transpose(1, 2, 3, 0), fps=16))
        m = np.repeat(tb.mask[i].transpose(1, 2, 3, 0), 3, axis=3) * 2 - 1
        out[f"m{i}"] = str(write_video(d / f"m{i}.mp4", m, fps=16))
        out[f"s{i}"] = str(write_video(d / f"s{i}.mp4", tb.frames[i].transpose(1, 2, 3, 0), fps=16))
    out["ref"] = str(write_image(d / "ref.png", world.sample_batch(1, 1, "r2v").refs[0, 0].transpose(1, 2, 0)))
    (d / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    out["corrupt"] = str(d / "corrupt.mp4")
    out["missing"] = str(d / "missing.mp4")
    out["short"] = str(write_video(d / "short.mp4", tb.video[0, :, :3].transpose(1, 2, 3, 0), fps=16))
    out["smallmask"] = str(write_video(d / "smallmask.mp4", np.zeros((5, 16, 16, 3), np.uint8), fps=16))
    out["dir"] = d
    return out


def manifest_config(path):
    c = toy_config(source="manifest", manifest=str(path), num_frames=5, height=32, width=32, fps=0.0)
    c.optim.accumulation = 1
    return c


def test_manifest_csv_and_jsonl_with_aliases_relative_paths_and_clear_errors(tmp_path):
    (tmp_path / "a.csv").write_text("subtask,prompt,video,src_video,src_mask,src_ref_images\n"
                                    "inpaint,a red square,v.mp4,s.mp4,m.mp4,\n"
                                    "r2v,a shape moving up,v.mp4,,,\"r1.png,r2.png\"\n")
    rows = read_manifest(tmp_path / "a.csv")
    assert rows[0].task == "inpaint" and rows[0].caption == "a red square"
    assert rows[0].video == str(tmp_path / "v.mp4") and rows[0].src_mask == str(tmp_path / "m.mp4")
    assert rows[1].src_ref_images == [str(tmp_path / "r1.png"), str(tmp_path / "r2.png")] and rows[1].num_refs == 2
    write_manifest(rows, tmp_path / "b.jsonl")
    again = read_manifest(tmp_path / "b.jsonl")
    assert [r.to_dict() for r in again] == [r.to_dict() for r in rows]
    (tmp_path / "bad.csv").write_text("task,caption\nt2v,hello\n")
    with pytest.raises(ManifestError, match=r"bad.csv has no column video"):
        read_manifest(tmp_path / "bad.csv")
    (tmp_path / "bad.jsonl").write_text('{"caption": "x", "video": "v.mp4"}\n{"caption": ""}\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl row 2 has no caption"):
        read_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(tmp_path / "nope.csv")


def test_bad_samples_are_replaced_and_reported_by_name(files, tmp_path):
    good = [{"task": "inpaint", "caption": "a red square", "video": files[f"v{i}"], "src_video": files[f"s{i}"],
             "src_mask": files[f"m{i}"]} for i in range(3)]
    bad = [{"task": "t2v", "caption": "a red square", "video": files["corrupt"]},
           {"task": "t2v", "caption": "a blue circle", "video": files["missing"]},
           {"task": "t2v", "caption": "a blue circle", "video": files["short"]},
           {"task": "inpaint", "caption": "a blue circle", "video": files["v0"], "src_video": files["s0"],
            "src_mask": files["smallmask"]}]
    path = write_manifest(good + bad, tmp_path / "m.csv")
    c = manifest_config(path)
    c.data.shuffle = False
    pipe = DataPipeline(c, Layout(1, 7, tuple(range(7))), with_context=True)
    arrays, info = next(pipe)
    assert arrays["latents"].shape == (1, 7, 12, 5, 16, 16)
    assert sorted(set(info["row"])) == [0, 1, 2]  # every slot holds a readable row
    reported = dict(info["bad"])
    assert sorted(reported) == [3, 4, 5, 6]
    assert "corrupt.mp4" in reported[3] and "could not be read" in reported[3]
    assert "missing.mp4" in reported[4]
    assert "short.mp4" in reported[5] and "frames" in reported[5]
    assert "smallmask.mp4" in reported[6] and "same size" in reported[6]
    # the good rows decode to what conditions + the toy VAE give
    vcu = C.read_task_inputs(files["s0"], files["m0"], None, 5, 32, 32, fps=None, stride=(1, 2, 2))
    ctx = np.asarray(C.vace_context(vcu, NumpyToyVAE()))[0]
    np.testing.assert_allclose(arrays["context"][0, info["row"].index(0)], ctx, atol=1e-6)
    # nothing readable at all: a clear error
    only_bad = write_manifest(bad[:2], tmp_path / "bad.csv")
    with pytest.raises(DataError, match="unreadable"):
        next(DataPipeline(manifest_config(only_bad), Layout(1, 2, (0, 1)), with_context=True))


def test_precompute_writes_resumable_shards_that_read_back_as_the_raw_pipeline(files, tmp_path):
    from vdot_jax.data.precompute import precompute

    rows = [{"task": "inpaint", "caption": "a red square", "video": files[f"v{i}"], "src_video": files[f"s{i}"],
             "src_mask": files[f"m{i}"]} for i in range(5)]
    rows.insert(2, {"task": "t2v", "caption": "a red square", "video": files["corrupt"]})
    rows.append({"task": "r2v", "caption": "a shape moving up", "video": files["v1"], "src_ref_images": files["ref"]})
    path = write_manifest(rows, tmp_path / "m.jsonl")
    c = manifest_config(path)
    c.model.arch.update(vace_layers=(0,), num_layers=2)
    out = tmp_path / "pre"
    s1 = precompute(c, out, rows_per_shard=3, progress=False, log=lambda m: None)
    assert s1["records"] == 6 and s1["bad"] == 1 and s1["shards"] == 3
    index = json.loads((out / "precomputed.json").read_text())
    assert "corrupt.mp4" in index["bad"][0]["error"] and [r["num_refs"] for r in index["records"]][-1] == 1
    # resumable: finished shards are skipped, a shard without its marker is redone
    (out / "shard-00001-of-00003.array_record.json").unlink()
    s2 = precompute(c, out, rows_per_shard=3, progress=False, log=lambda m: None)
    assert s2["skipped_shards"] == 2 and s2["written_now"] == 3 and s2["records"] == 6
    # every record reads back as the raw pipeline's sample of its row; precomputed batches flow as usual
    from vdot_jax.data.pipeline import ManifestSource, PrecomputedSource

    cp = manifest_config(path)
    cp.data.source, cp.data.precomputed = "precomputed", str(out)
    pre, raw = PrecomputedSource(cp, with_context=True), ManifestSource(c, make_encoder(c, with_context=True))
    for i, rec in enumerate(index["records"]):
        a, b = pre.load(i), raw.load(rec["row"])
        for k in ("latents", "context", "text"):
            np.testing.assert_array_equal(a[k], b[k])
    layout = Layout(1, 2, (0, 1))
    arrays, info = next(DataPipeline(cp, layout, with_context=True))
    assert arrays["latents"].shape[:2] == (1, 2) and not info["bad"]
    cp.data.num_frames = 9
    with pytest.raises(DataError, match="num_frames 5 there, 9 in the config"):
        DataPipeline(cp, layout, with_context=True)


def test_wan_geometry_encoder_with_a_real_wan_vae(files, tmp_path):
    """The raw path with a (tiny, random) Wan VAE: temporal stride 4, 8x8 mask packing, reference frames first."""
    from flax import nnx

    from vdot_jax.data.pipeline import Encoder, ManifestSource
    from vdot_jax.models.vae import VAEConfig, WanVAE

    cfg = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), num_res_blocks=1,
                    temperal_downsample=(False, True, True), latents_mean=(0.3, -0.2, 0.1, 0.5),
                    latents_std=(1.5, 0.7, 2.0, 1.1))
    vae = WanVAE(cfg, rngs=nnx.Rngs(0))
    enc = Encoder(vae, lambda p: np.ones((len(p), 3, 5), np.float32), with_context=True)
    rows = [{"task": "r2v+inpaint", "caption": "x", "video": files["v0"], "src_video": files["s0"],
             "src_mask": files["m0"], "src_ref_images": files["ref"]}]
    c = manifest_config(write_manifest(rows, tmp_path / "m.csv"))
    s = ManifestSource(c, enc).load(0)
    assert s["latents"].shape == (4, 1 + 2, 4, 4) and s["context"].shape == (2 * 4 + 64, 3, 4, 4)
    vcu = C.read_task_inputs(files["s0"], files["m0"], files["ref"], 5, 32, 32, fps=None)
    np.testing.assert_allclose(s["context"], np.asarray(C.vace_context(vcu, vae))[0], atol=1e-5)
    video = C.video_from_frames(read_video(files["v0"], num_frames=5, size=(32, 32)))
    np.testing.assert_allclose(s["latents"][:, 1:], np.asarray(vae.normalize(vae.encode(video)))[0], atol=1e-5)


def test_worker_processes_give_the_same_stream():
    c = toy_config()
    layout = Layout(2, 2, (0, 1))
    threads = take(DataPipeline(c, layout, with_context=True), 3)
    c.data.workers = 2
    pipe = DataPipeline(c, layout, with_context=True)
    try:
        procs = take(pipe, 3)
    finally:
        pipe.close()
    for (a, _), (b, _) in zip(threads, procs):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
