"""`vdot demo --quick`: the whole path (shipped teacher -> three students -> evaluation -> report) on CPU."""

import json
import math
import re

from vdot_jax.cli import main as vdot
from vdot_jax.demo import START, SUMMARY, VARIANTS, DemoPlan
from vdot_jax.data.toy_world import TASKS


def test_quick_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert vdot(["demo", "--quick", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    plan = DemoPlan.quick()
    rows = [f"teacher {plan.teacher_steps} steps + CFG", f"teacher {plan.student_steps} steps + CFG", START, *VARIANTS,
            "real clips (reference)"]
    summary = text.split("## Summary")[1].split("\n\n")[1]
    header = summary.splitlines()[0]
    for _, column, _ in SUMMARY:
        assert column in header, column
    for row in rows:
        line = next(line for line in summary.splitlines() if line.startswith(f"| {row} |"))
        assert len(line.strip("|").split("|")) == len(SUMMARY) + 1
    assert re.search(r"Against the teacher at 4 steps .*: better on .*; worse on", text)
    assert re.search(r"Against its own starting point .*: better on .*; worse on", text)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == set(rows)
    assert metrics["student VDOT"]["nfe"] == 4 and metrics[rows[0]]["nfe"] == 2 * plan.teacher_steps
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
    assert (out / "training_curves.png").exists() and (out / "metrics.png").exists()
    assert "vdot demo: wrote" in capsys.readouterr().out
