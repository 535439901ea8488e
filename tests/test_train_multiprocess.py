"""Two CPU processes train together (jax.distributed on 127.0.0.1), each loading only its rows of the batch --
every other row, as a TPU torus can lay them out -- stop after one step, resume, and match one process."""

import json
import os
import sys
from pathlib import Path

import numpy as np
from absl import flags
from conftest import FAST_COMPILE, free_port, run_together

from vdot_jax.data.pipeline import DataPipeline, Layout
from vdot_jax.train.config import apply_overrides, load_config
from vdot_jax.train.loop import train
from vdot_jax.train.logging import read_metrics

flags.FLAGS.mark_as_parsed()
ROOT = Path(__file__).parents[1]
OVERRIDES = ["mesh.ici=data=2,fsdp=4", "data.batch_size=8", "train.steps=2", "train.progress=false"]


def test_two_processes_train_on_per_host_shards_of_the_one_process_batch(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}"
    script = ROOT / "tests/scripts/train_two_process.py"
    done = run_together([[sys.executable, str(script), str(port), str(i), str(tmp_path), str(ROOT / "configs/tiny.py"),
                          *OVERRIDES] for i in range(2)], [env] * 2, timeout=600, cwd=ROOT)
    for rc, out, err in done:
        assert rc == 0, (out + err)[-4000:]

    # each host loaded its own rows of the batch (every other one); together they are the one-process batch
    config = apply_overrides(load_config(str(ROOT / "configs/tiny.py") + ":flow"), OVERRIDES)
    hosts = [np.load(tmp_path / f"host{i}.npz") for i in range(2)]
    assert list(hosts[0]["rows"]) == [0, 2, 4, 6] and list(hosts[1]["rows"]) == [1, 3, 5, 7]
    one = DataPipeline(config, Layout(1, 8, tuple(range(8))), with_context=True)
    for step in range(2):
        full, _ = next(one)
        for k, v in full.items():
            for h in hosts:
                np.testing.assert_array_equal(h[f"{k}{step}"], v[:, h["rows"]])

    summaries = [json.loads((tmp_path / f"summary{i}.json").read_text()) for i in range(2)]
    assert all(s[0]["step"] == 1 and s[0]["stopped"] == "stop_after" for s in summaries)  # stopped after step 1
    assert all(s[1]["resumed"] and s[1]["start_step"] == 1 for s in summaries)  # ... and resumed there
    assert all(s[1]["step"] == 2 and s[1]["checkpoint_step"] == 2 for s in summaries)
    assert (tmp_path / "run/checkpoints/2/state").is_dir()
    # the same training, uninterrupted in one process over 8 devices in their own order, gives the same losses
    two = read_metrics(tmp_path / "run/metrics.jsonl")
    single = train(config, tmp_path / "single")
    assert single["step"] == 2
    one_proc = read_metrics(tmp_path / "single/metrics.jsonl")
    assert [r["step"] for r in two] == [r["step"] for r in one_proc] == [1, 2]  # zip would hide a missing row
    for a, b in zip(two, one_proc):
        np.testing.assert_allclose(a["flow_loss"], b["flow_loss"], rtol=1e-5)
        np.testing.assert_allclose(a["flow/grad_norm"], b["flow/grad_norm"], rtol=1e-4)
