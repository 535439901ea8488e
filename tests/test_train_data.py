"""Training on imperfect inputs: bad samples (train on, report), too many bad samples (stop), an incompatible
workdir (refused, untouched), non-finite losses (stop), and `--config.KEY=VALUE` overrides."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from absl import flags

from vdot_jax.cli import main
from vdot_jax.data.manifest import write_manifest
from vdot_jax.data.pipeline import DataError
from vdot_jax.train import checkpoint as ckpt
from vdot_jax.train.config import ConfigError, apply_overrides, base_config, load_config, parse_override_args
from vdot_jax.train.loop import TrainingError, build, init_state, train

flags.FLAGS.mark_as_parsed()
ROOT = Path(__file__).parents[1]
TINY = str(ROOT / "configs/tiny.py")


def flow_config(*overrides):
    c = load_config(TINY + ":flow")
    apply_overrides(c, ["mesh.num_devices=1", "train.progress=false", *overrides])
    return c


# ----------------------------------------------------------------------------- overrides


def test_overrides_are_typed_by_the_field_and_errors_name_the_key():
    c = base_config()
    apply_overrides(c, parse_override_args(["--config.optim.critic_lr=1e-6", "--config.train.steps", "12",
                                            "--config.loss.use_gan=false", "--config.mesh.ici=fsdp=4,context=2",
                                            "--config.gan.taps=13,21,29", "--config.model.arch.dim=64",
                                            "--config.train.checkpoint_every=1e3"]))
    assert c.optim.critic_lr == 1e-6 and isinstance(c.optim.critic_lr, float)
    assert c.train.steps == 12 and c.loss.use_gan is False and c.mesh.ici == "fsdp=4,context=2"
    assert tuple(c.gan.taps) == (13, 21, 29) and c.model.arch.dim == 64 and c.train.checkpoint_every == 1000
    with pytest.raises(ConfigError, match=r"--config.optim.critic_lr: 'fast' is not a number \(the field is float"):
        apply_overrides(c, ["optim.critic_lr=fast"])
    with pytest.raises(ConfigError, match=r"--config.train.steps: '1.5' is not an integer"):
        apply_overrides(c, ["train.steps=1.5"])
    with pytest.raises(ConfigError, match=r"'maybe' is not a boolean"):
        apply_overrides(c, ["loss.use_gan=maybe"])
    with pytest.raises(ConfigError, match=r"no such key; did you mean --config.optim.critic_lr"):
        apply_overrides(c, ["optim.critc_lr=1"])
    with pytest.raises(ConfigError, match="is a group"):
        apply_overrides(c, ["optim=1"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override_args(["--steps=3"])
    with pytest.raises(ConfigError, match="needs a value"):
        parse_override_args(["--config.train.steps"])


def test_cli_reports_a_bad_override_in_one_line(capsys, tmp_path):
    assert main(["train", "--config", TINY, "--workdir", str(tmp_path), "--config.optim.critic_lr=1e-6x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vdot train: error: --config.optim.critic_lr: '1e-6x' is not a number (the field is float, "
                   "currently 0.001)."]
    assert not any(tmp_path.iterdir())
    assert main(["train", "--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- incompatible workdirs


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_workdir_from_an_incompatible_config_is_refused_and_left_untouched(tmp_path, capsys):
    wd = tmp_path / "run"
    config = load_config(TINY)
    config.mesh.num_devices = 1
    run = build(config)
    cp = ckpt.Checkpointer(wd, async_save=False)
    cp.save(2, init_state(run), {"step": 2}, {"mode": "vdot", "signature": run.signature()})
    cp.close()
    (wd / "metrics.jsonl").write_text('{"step": 1, "flow_loss": 1.0}\n')
    before = snapshot(wd)

    wider = load_config(TINY)
    apply_overrides(wider, ["model.arch.dim=32", "mesh.num_devices=1"])
    with pytest.raises(ckpt.CheckpointMismatch, match=r"incompatible config .*generator/blocks/.* is "
                                                       r"float32\(2, 16\) in the checkpoint, float32\(2, 32\) here"):
        train(wider, wd)
    assert snapshot(wd) == before
    with pytest.raises(ckpt.CheckpointMismatch, match=r"holds a 'vdot' run but this config trains in mode 'flow'"):
        train(flow_config(), wd)
    bf16 = load_config(TINY)  # the moments' dtype is refused, not silently rounded
    apply_overrides(bf16, ["optim.moment_dtype=bfloat16", "mesh.num_devices=1"])
    with pytest.raises(ckpt.CheckpointMismatch, match=r"_opt/.* is float32\(.* in the checkpoint, bfloat16\(.* here.*"
                                                       r"moments are float32 there: set config.optim.moment_dtype"):
        train(bf16, wd)
    ema = load_config(TINY)
    apply_overrides(ema, ["ema.decay=0.99", "mesh.num_devices=1"])
    with pytest.raises(ckpt.CheckpointMismatch, match=r"ema/.* is new"):
        train(ema, wd)
    assert main(["train", "--config", TINY, "--workdir", str(wd), "--config.model.arch.ffn_dim=64",
                 "--config.mesh.num_devices=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was written by an incompatible config" in err[0] and "Nothing in it was changed" in err[0]
    assert snapshot(wd) == before


# ----------------------------------------------------------------------------- bad data, non-finite losses


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from vdot_jax.data.toy_world import ToyWorld
    from vdot_jax.data.video_io import write_video

    d = tmp_path_factory.mktemp("data")
    tb = ToyWorld(frames=5).sample_batch(0, 4, "first_frame")
    rows = []
    for i in range(4):
        v = write_video(d / f"v{i}.mp4", tb.video[i].transpose(1, 2, 3, 0), fps=16)
        s = write_video(d / f"s{i}.mp4", tb.frames[i].transpose(1, 2, 3, 0), fps=16)
        m = write_video(d / f"m{i}.mp4", (np.repeat(tb.mask[i], 3, 0) * 2 - 1).transpose(1, 2, 3, 0), fps=16)
        rows.append({"task": "first_frame", "caption": tb.caption[i], "video": v.name, "src_video": s.name,
                     "src_mask": m.name})
    (d / "corrupt.mp4").write_bytes(b"not a video at all" * 100)
    rows.insert(1, {"task": "t2v", "caption": "a red square", "video": "corrupt.mp4"})
    rows.insert(3, {"task": "t2v", "caption": "a blue circle", "video": "gone/missing.mp4"})
    return write_manifest(rows, d / "train.csv")


def test_a_manifest_with_a_corrupt_and_a_missing_video_trains_on_and_reports_both(manifest, tmp_path):
    c = flow_config("data.source=manifest", f"data.manifest={manifest}", "data.batch_size=3", "train.steps=2",
                    "data.shuffle=false")
    s = train(c, tmp_path / "run")
    assert s["step"] == 2 and s["bad_samples"] == 2
    bad = " ".join(s["bad_files"])
    assert "corrupt.mp4" in bad and "missing.mp4" in bad
    log = (tmp_path / "run/train.log").read_text()
    assert "skipped an unreadable sample (1 so far)" in log and "corrupt.mp4" in log and "missing.mp4" in log
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["bad_samples"] for r in rows] == [1, 2] and all(np.isfinite(r["flow_loss"]) for r in rows)

    strict = flow_config("data.source=manifest", f"data.manifest={manifest}", "data.batch_size=3",
                         "data.shuffle=false", "data.max_bad=1")
    with pytest.raises(DataError, match=r"more than config.data.max_bad=1 training samples were unreadable"):
        train(strict, tmp_path / "strict")


def test_precompute_command_then_a_run_that_reads_the_shards(manifest, tmp_path, capsys):
    """`vdot precompute` end to end: manifest -> ArrayRecord shards (unreadable rows listed) -> training on them."""
    out = tmp_path / "pre"
    assert main(["precompute", "--config", TINY + ":flow", "--manifest", str(manifest), "--out", str(out),
                 "--rows-per-shard", "2"]) == 0
    index = json.loads((out / "precomputed.json").read_text())
    assert len(index["records"]) == 4 and len(index["bad"]) == 2
    assert len(list(out.glob("shard-*.array_record"))) == 3  # 6 manifest rows, 2 a shard
    c = flow_config("data.source=precomputed", f"data.precomputed={out}", "data.batch_size=2", "train.steps=2")
    s = train(c, tmp_path / "run")
    assert s["step"] == 2 and s["bad_samples"] == 0  # the bad rows were left out when encoding
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(np.isfinite(r["flow_loss"]) for r in rows)
    (out / "precomputed.json").unlink()  # the run reads from there: without the index it stops
    with pytest.raises(DataError, match="holds no finished precomputed data"):
        train(c, tmp_path / "run_without_index")


def test_non_finite_updates_in_a_row_stop_the_run(tmp_path):
    c = flow_config("flow.lr=1e38", "flow.clip_norm=1e38", "train.max_nonfinite=2", "train.steps=20",
                    "train.checkpoint_every=100")
    with pytest.raises(TrainingError, match=r"2 steps in a row had a non-finite loss or gradient"):
        train(c, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["flow/finite"] == 0.0 and rows[-2]["flow/finite"] == 0.0 and len(rows) < 20
