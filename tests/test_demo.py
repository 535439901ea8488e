"""`vdot demo --quick`: the whole path (shipped teacher -> three students -> evaluation -> report) on CPU; and the
pieces of `--seeds N` (mean ± sd, differences beyond the spread) on known values."""

import json
import math
import re

import numpy as np
import pytest

from vdot_jax.cli import main as vdot
from vdot_jax.demo import (START, SUMMARY, VARIANTS, DemoPlan, _teacher_name, aggregate, compare, difference_table,
                           goodness)
from vdot_jax.data.toy_world import TASKS


def test_quick_demo_writes_a_complete_report(tmp_path, capsys):
    from vdot_jax.demo import teacher_path

    out = tmp_path / "demo"
    # --teacher named explicitly (the shipped one, so that the run is the default's): the report says which
    assert vdot(["demo", "--quick", "--out", str(out), "--teacher", str(teacher_path())]) == 0
    text = (out / "report.md").read_text()
    assert f"from the toy VACE teacher at `{teacher_path()}`" in text
    assert json.loads((out / "plan.json").read_text())["teacher"] == str(teacher_path())
    plan = DemoPlan.quick()
    t50 = _teacher_name(plan.teacher_steps, plan.guidance)
    rows = [t50, _teacher_name(plan.student_steps, plan.guidance), START, *VARIANTS, "real clips (reference)"]
    summary = text.split("## Summary")[1].split("\n\n")[1]
    header = summary.splitlines()[0]
    for _, column, _ in SUMMARY:
        assert column in header, column
    for row in rows:
        line = next(line for line in summary.splitlines() if line.startswith(f"| {row} |"))
        assert len(line.strip("|").split("|")) == len(SUMMARY) + 1
        assert "±" not in line  # one seed: no spread
    assert re.search(r"Against the teacher at 4 steps .*: better on .*; worse on", text)
    assert re.search(r"Against its own starting point .*: better on .*; worse on", text)
    assert "single-seed" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(rows)
    assert metrics["student VDOT"]["nfe"] == 4
    assert (out / "student" / "config.json").exists()  # the VDOT student for vdot ui (tests/test_ui.py serves one)
    assert metrics[t50]["nfe"] == plan.teacher_steps * (2 if plan.guidance != 1 else 1)
    assert metrics["real clips (reference)"]["all/fragmented"] == 0.0
    for row in rows:  # every measured number is finite, and every summary column was measured
        assert all(metrics[row].get(key) is not None for key, _, _ in SUMMARY if row != "real clips (reference)")
        for key, value in metrics[row].items():
            assert not isinstance(value, float) or math.isfinite(value), (row, key, value)
    # distillation changed each student: its quality metrics differ from its starting point's
    quality = lambda row: {k: v for k, v in metrics[row].items() if k not in ("nfe", "sec_per_clip")}  # noqa: E731
    for student in VARIANTS:
        assert quality(student) != quality(START), student
    for task in TASKS:
        assert (out / f"grid_{task}.gif").stat().st_size > 0 and (out / f"grid_{task}.mp4").exists()
    import imageio.v2 as imageio

    grid = imageio.mimread(out / "grid_all.gif")
    # 7 labelled columns and one labelled row per task of 96-px frames (32 px x 3, nearest-neighbour)
    assert grid[0].shape[0] >= len(TASKS) * 96 and grid[0].shape[1] >= 7 * 96
    assert (out / "training_curves.png").exists() and (out / "metrics.png").exists()
    printed = capsys.readouterr().out
    assert "vdot demo: wrote" in printed and "single-seed" in printed


def test_seeds_mean_sd_and_differences_beyond_the_spread():
    runs = [{"a": {"all/attr_acc": 0.5, "all/artifact": 0.1}, "b": {"all/attr_acc": 0.4, "all/artifact": 0.1}},
            {"a": {"all/attr_acc": 0.7, "all/artifact": 0.3}, "b": {"all/attr_acc": 0.4, "all/artifact": 0.3}},
            {"a": {"all/attr_acc": 0.6, "all/artifact": 0.2}, "b": {"all/attr_acc": 0.4, "all/artifact": 0.2}}]
    means, sds = aggregate(runs)
    assert means["a"]["all/attr_acc"] == pytest.approx(0.6) and sds["a"]["all/attr_acc"] == pytest.approx(0.1)
    assert sds["b"]["all/attr_acc"] == pytest.approx(0.0, abs=1e-12) and sds["b"]["all/artifact"] == pytest.approx(0.1)
    better, worse = compare(means, "a", "b", sds)
    # accuracy: 0.6 vs 0.4, |diff| 0.2 > 0.1 + 0 -> marked; artifacts 0.2 vs 0.2: equal, in neither list
    assert better == ["caption acc*"] and worse == []
    table = difference_table(means, "a", ["b"], sds)  # the same verdicts, as signed differences
    assert "| a - b | +0.200 (better*) |" in table and "+0.000 (same)" in table
    means["b"]["all/attr_acc"] = 0.55  # 0.05 < 0.1: better, but within the spread
    assert compare(means, "a", "b", sds)[0] == ["caption acc"]
    one, none = aggregate(runs[:1])
    assert np.isnan(none["a"]["all/attr_acc"]) and compare(one, "a", "b", None) == (["caption acc"], [])


def test_goodness_directions():
    assert goodness("all/attr_acc", 0.7) > goodness("all/attr_acc", 0.6)
    assert goodness("all/fragmented", 0.1) > goodness("all/fragmented", 0.2)
    # sharpness: closeness to 1 on a log scale, so 0.5 and 2 tie and both lose to 0.9
    assert goodness("all/sharpness", 0.5) == goodness("all/sharpness", 2.0) < goodness("all/sharpness", 0.9)


def test_precompiled_programs_are_the_ones_the_run_meets():
    """``precompile`` compiles (phase, latent frames) from ``_programs``; they must be exactly what the training loop
    meets, or the run compiles again (a frame count missed, e.g. the reference frame of r2v steps) or compiles
    for nothing (a program the run never meets makes ``--quick`` slower)."""
    from vdot_jax.demo import _programs, _with_frames, make_batches
    from vdot_jax.distill.steps import phases_for

    plan = DemoPlan(steps=30, batch=2)
    batches = make_batches(plan)
    met = set()
    for step in range(plan.steps):
        batch = next(batches)
        met.update((name, batch["latents"].shape[-3]) for gan in (False, True)
                   for name in phases_for(step, plan.ttur, gan))
    assert len({f for _, f in met}) == 2  # this stretch has r2v steps (one reference frame) and others
    assert _programs(plan) == met
    longer = _with_frames(batch, 7)
    assert longer["latents"].shape[-3] == longer["context"].shape[-3] == 7
    assert longer["text"] is batch["text"] and _with_frames(longer, 5)["latents"].shape == (1, 2, 12, 5, 16, 16)


def test_demo_refuses_bad_seeds(capsys):
    assert vdot(["demo", "--seeds", "0", "--out", "/nonexistent/x"]) != 0
    assert "--seeds must be a positive integer" in capsys.readouterr().err


def test_demo_refuses_a_teacher_that_does_not_fit_the_toy_world(tmp_path, capsys):
    """--teacher / --probe-teacher: a missing folder, or a model whose text width is not the toy world's (a
    config without any weights: refused from the config alone), is one sentence before any output is made; the
    tracked wide teacher's workdir fits."""
    from pathlib import Path

    from vdot_jax.demo import check_toy_teacher, teacher_path

    out = tmp_path / "out"
    assert vdot(["demo", "--teacher", str(tmp_path / "none"), "--out", str(out)]) != 0
    assert "--teacher" in capsys.readouterr().err and not out.exists()
    big = tmp_path / "big"
    big.mkdir()
    config = json.loads((teacher_path() / "config.json").read_text())
    (big / "config.json").write_text(json.dumps({**config, "text_dim": 4096}))
    for flag in ("--teacher", "--probe-teacher"):
        assert vdot(["demo", flag, str(big), "--out", str(out)]) != 0
        err = capsys.readouterr().err
        assert "is not a toy teacher: its text_dim 4096 (the toy world's: 32)" in err, err
        assert not (out / "plan.json").exists()
    check_toy_teacher(Path(__file__).parents[1] / "teacher_wide_run")


def test_teacher_config_stages_match_the_shipped_teacher():
    import dataclasses

    from vdot_jax.demo import load_teacher
    from vdot_jax.train.config import ConfigError, load_config
    from vdot_jax.train.loop import model_arch

    scratch = load_config("configs/toy_teacher.py")
    cont = load_config("configs/toy_teacher.py:continue")
    shipped = load_teacher().cfg
    assert dataclasses.asdict(model_arch(scratch)) == dataclasses.asdict(shipped)  # stage 1 builds this architecture
    assert cont.model.teacher == "runs/toy_teacher" and cont.model.teacher_ema and cont.seed != scratch.seed
    assert cont.train.steps == 1500 and scratch.train.steps == 4000
    long = load_config("configs/toy_teacher.py:long")  # issue 26: the shipped weights trained on, exactly resumable
    assert long.model.teacher == "runs/toy_teacher_shipped" and not long.model.teacher_ema
    assert long.seed not in (scratch.seed, cont.seed) and long.train.steps == 30000 and long.train.keep == 1
    wide = load_config("configs/toy_teacher.py:wide")  # route (b): twice the width, from scratch, same world
    arch, base = model_arch(wide), model_arch(scratch)
    assert (arch.dim, arch.ffn_dim, arch.num_heads) == (2 * base.dim, 2 * base.ffn_dim, 2 * base.num_heads)
    assert arch.dim // arch.num_heads == base.dim // base.num_heads and arch.num_layers == base.num_layers
    assert not wide.model.teacher and wide.data.toy.to_dict() == scratch.data.toy.to_dict()
    assert wide.seed not in (scratch.seed, cont.seed, long.seed) and wide.train.keep == 1
    with pytest.raises((ValueError, ConfigError), match="scratch"):
        load_config("configs/toy_teacher.py:wider")


def test_teacher_probe_table_marks_where_50_steps_win(tmp_path):
    from vdot_jax.demo import PROBE_KEYS, PROBE_SETTINGS, _draw_probes

    fifty, four = (_teacher_name(n, g, s) for n, g, s in PROBE_SETTINGS)
    row = lambda acc, frag: {"all/attr_acc": acc, "all/detect": 0.5, "all/fragmented": frag,  # noqa: E731
                             "all/artifact": 0.1}
    # step 4,750: 50 steps more accurate but more fragmented; 9,750: better on both (fragmented: lower is better)
    sd = lambda acc, frag: {"all/attr_acc": acc, "all/detect": 0.0, "all/fragmented": frag,  # noqa: E731
                            "all/artifact": 0.0}
    # 9,750 over 3 seeds: the accuracy gap (0.1) exceeds the sds (0.02 + 0.03), the fragmentation gap (0.1) not
    probes = {"9750": {"seeds": 3, "rows": {fifty: row(0.6, 0.3), four: row(0.5, 0.4)},
                       "sd": {fifty: sd(0.02, 0.06), four: sd(0.03, 0.05)},
                       "per_seed": [{fifty: row(0.6, 0.3), four: row(0.5, 0.4)}] * 3},
              "4750": {"rows": {fifty: row(0.6, 0.7), four: row(0.5, 0.5)}}}
    _draw_probes(tmp_path, probes)
    lines = [ln for ln in (tmp_path / "teacher_probe.md").read_text().splitlines() if ln.startswith("| 4,750")
             or ln.startswith("| 9,750")]
    assert [ln.split(" | ")[:3] for ln in lines] == [["| 4,750", "1", fifty], ["| 4,750", "1", four],
                                                     ["| 9,750", "3", fifty], ["| 9,750", "3", four]]  # by step
    cells = [ln.strip("| ").split(" | ")[3:] for ln in lines]
    assert len(cells[0]) == len(PROBE_KEYS)
    assert cells[0][0] == "**0.600**" and cells[0][2] == "0.700"  # one seed: no spread, no star
    assert cells[2][0] == "**0.600*** ± 0.020" and cells[2][2] == "**0.300** ± 0.060"  # * only beyond the sds
    assert cells[3][0] == "0.500 ± 0.030"
    assert cells[0][1] == "0.500" and not any("**" in c for c in cells[1] + cells[3])  # a tie is not a win
    assert (tmp_path / "teacher_probe.png").stat().st_size > 0


@pytest.mark.slow  # ~2 min on the loaded 2-core CPU (evaluation set, metrics, 11 grids as mp4 + GIF)
def test_seeds_report_path_with_stub_training(tmp_path, monkeypatch):
    """run_demo(seeds=2) end to end with distillation and sampling stubbed (real evaluation set, metrics, report):
    the table shows mean ± sd, and the per-seed rows are the ones the stubs produced."""
    import vdot_jax.demo as demo
    from vdot_jax.eval.toy_metrics import evaluate

    seen = []

    def fake_distill(plan, teacher, log=None, distiller=None):
        seen.append((plan.seed, distiller))
        hist = {"generator_loss": [1.0, 0.5 + plan.seed], "critic_loss": [2.0, 1.0]}
        return {n: None for n in VARIANTS}, {n: dict(hist) for n in VARIANTS}, "compiled"

    def fake_methods(plan, graphdef, methods, ev, log=None):
        rows, clips = {}, {}
        for i, name in enumerate(methods):
            m = demo.summarise(evaluate(ev.batch.video, ev.batch, sinkhorn=False, min_group=2))
            m["all/attr_acc"] = 0.5 + 0.1 * plan.seed + 0.01 * i  # seeds 0, 1 -> sd 0.0707 on every row
            m["nfe"], m["sec_per_clip"] = 4.0, 0.1
            rows[name], clips[name] = m, ev.batch.video
        return rows, clips

    monkeypatch.setattr(demo, "distill", fake_distill)
    monkeypatch.setattr(demo, "evaluate_methods", fake_methods)
    monkeypatch.setattr(demo, "precompile", lambda *a, **k: 0)
    plan = DemoPlan.quick()
    means = demo.run_demo(tmp_path, plan=plan, seeds=2, log=lambda s: None, keep_clips=True)
    assert [s for s, _ in seen] == [0, 1] and seen[1][1] == "compiled"  # the second seed reuses the programs
    assert means["student VDOT"]["all/attr_acc"] == pytest.approx(0.55 + 0.01 * 5)
    text = (tmp_path / "report.md").read_text()
    assert "Means ± sample sd over 2 seeds" in text and "single-seed" not in text
    assert f"| student VDOT | 4 ± 0 | 0.100 ± 0.000 | {0.6:.3f} ± {0.0707:.3f} |" in text
    per_seed = json.loads((tmp_path / "metrics_per_seed.json").read_text())
    assert [r["student VDOT"]["all/attr_acc"] for r in per_seed] == pytest.approx([0.55, 0.65])
    assert (tmp_path / "metrics_sd.json").exists() and (tmp_path / "grid_all.gif").exists()
    # --rescore: the saved clips (here the real ones) scored again with the metrics -- not the stubs' numbers
    rescored = demo.rescore(tmp_path, log=lambda s: None)
    assert rescored["student VDOT"]["all/attr_acc"] == 1.0 and rescored["student VDOT"]["nfe"] == 4
    assert "| student VDOT | 4 ± 0 | 0.100 ± 0.000 | 1.000 ± 0.000 |" in (tmp_path / "report.md").read_text()
    assert len(json.loads((tmp_path / "metrics_per_seed.json").read_text())) == 2


def test_distill_runs_only_the_named_variants_and_reports_every_step():
    """The loop bench/demo_student_curve.py drives: ``variants`` picks the students (a loop that ignored it would
    train three), ``after_step`` sees each student's state after every step with the count of steps done (an
    off-by-one or a call per phase would show), and the returned students are the final states' generators, or
    their EMAs where the state keeps one. A stand-in distiller keeps it free of compiles; the teacher, critic and
    data pipeline are the real ones."""
    import dataclasses

    from vdot_jax.demo import distill, load_teacher

    class State:
        def __init__(self, n, ema=False):
            self.generator, self.n, self.ema, self.keeps_ema = f"gen{n}", n, f"ema{n}" if ema else None, ema

    class Stub:
        def __init__(self, ema=False):
            self.keep_ema = ema

        def init_state(self, *a, **k):
            return State(0, self.keep_ema)

        def train_step(self, state, batch, use_gan):
            assert batch["latents"].shape[1] == 2  # the plan's batch, from the real pipeline
            return State(state.n + 1, state.keeps_ema), {"critic_flow_loss": float(state.n)}

    seen = []
    plan = dataclasses.replace(DemoPlan.quick(), steps=3)
    students, hist, _ = distill(plan, load_teacher(), log=lambda s: None, distiller=Stub(),
                                variants={"student OT only"}, after_step=lambda *a: seen.append((a[0], a[1], a[2].n)))
    assert list(students) == ["student OT only"] and students["student OT only"] == "gen3"
    assert seen == [("student OT only", k, k) for k in (1, 2, 3)]
    assert hist["student OT only"]["critic_flow_loss"] == [0.0, 1.0, 2.0]
    students, _, _ = distill(plan, load_teacher(), log=lambda s: None, distiller=Stub(ema=True),
                             variants={"student VDOT"})
    assert students == {"student VDOT": "ema3"}


def test_plan_overrides_set_distillation_settings_and_refuse_unknown_keys():
    """DemoPlan.overrides (bench/demo_student_curve.py --set) reach the distillation config with the setting's
    own type (ema.start stays an int), and a misspelt key is refused rather than silently ignored."""
    import dataclasses

    from vdot_jax.demo import distill_settings

    c = distill_settings(dataclasses.replace(DemoPlan(), overrides=(("ema.decay", 0.9), ("ema.start", 10.0),
                                                                    ("loss.gan_generator_weight", 0.3))), 4)
    assert (c.ema.decay, c.ema.start, c.loss.gan_generator_weight) == (0.9, 10, 0.3)
    assert isinstance(c.ema.start, int)
    assert distill_settings(DemoPlan(), 4).ema.decay == 0.0  # the default plan changes nothing
    with pytest.raises(KeyError, match="ema.decy"):
        distill_settings(dataclasses.replace(DemoPlan(), overrides=(("ema.decy", 0.9),)), 4)
