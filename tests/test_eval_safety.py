"""``vdot eval`` never labels stale videos with new settings, names files within 255 bytes, and fails when no
row can be evaluated. The pipeline is a stand-in (no model), so these run in seconds."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest

from safety_helpers import refused
from vdot_jax.eval import benchmark as B

T, H, W = 5, 16, 16


class FakePipe:
    """Generates constant videos whose grey level is the seed (carried by the noise) plus the prompt's length (mod
    50), and counts its calls and their batch sizes."""

    def __init__(self):
        self.calls, self.sizes = 0, []

    def noise(self, vcu, seed):
        return np.full((1, 1), seed, np.float32)

    def generate(self, prompts, *, latents, **kw):
        self.calls += 1
        self.sizes.append(len(prompts))
        levels = [40 + 10 * int(n[0]) + len(p) % 50 for n, p in zip(latents, prompts)]
        return types.SimpleNamespace(frames=lambda i: np.full((T, H, W, 3), levels[i], np.uint8), timings={})


def _index(tmp_path, prompts):
    index = tmp_path / "index.jsonl"
    index.write_text("".join(json.dumps(dict(subtask="t2v", sample_id=f"s{i}", en_prompt=p)) + "\n"
                             for i, p in enumerate(prompts)))
    return index


def _run(tmp_path, index, pipe, batch_size=1, **settings):
    s = B.Settings(frames=T, height=H, width=W, **settings)
    return B.run_benchmark(index, tmp_path, tmp_path / "out", load_pipeline=lambda: pipe, settings=s,
                           metrics=["flicker"], batch_size=batch_size, log=lambda m: None)


def test_reuse_is_keyed_on_the_generation_settings(tmp_path):
    index = _index(tmp_path, ["a cat"])
    pipe = FakePipe()
    assert _run(tmp_path, index, pipe, seed=0)["subtasks"]["all"]["generated"] == 1
    assert _run(tmp_path, index, pipe, seed=0)["subtasks"]["all"]["reused"] == 1 and pipe.calls == 1
    for changed in (dict(seed=1), dict(seed=0, steps=8), dict(seed=0, guide_scale=5.0),
                    dict(seed=0, model="another model")):
        table = _run(tmp_path, index, pipe, **changed)
        assert table["subtasks"]["all"]["generated"] == 1, changed  # generated again, never relabelled
    from vdot_jax.data import video_io

    frames = video_io.read_video(tmp_path / "out" / "videos" / "t2v" / "s0.mp4", normalize=False)
    assert abs(float(np.mean(frames)) - 45) < 3  # the last run's video (seed 0), not the seed-1 one


def test_batched_generation_writes_each_row_its_own_video(tmp_path):
    from vdot_jax.data import video_io

    prompts = ["a", "a dog", "a cat on grass"]
    pipe = FakePipe()
    table = _run(tmp_path, _index(tmp_path, prompts), pipe, batch_size=2, seed=1)
    assert table["subtasks"]["all"]["generated"] == 3 and pipe.sizes == [2, 2]  # the last call padded to 2
    for i, p in enumerate(prompts):
        frames = video_io.read_video(tmp_path / "out" / "videos" / "t2v" / f"s{i}.mp4", normalize=False)
        assert abs(float(np.mean(frames)) - (50 + len(p))) < 1.5, p


def test_long_non_ascii_prompts_and_ids_make_short_unique_names(tmp_path):
    long = "猫が雪の上を走る、" * 40  # 360 characters, 1080 bytes
    index = tmp_path / "index.jsonl"
    index.write_text("".join(json.dumps(dict(subtask="t2v", sample_id=long + str(i), en_prompt=long + str(i)))
                             + "\n" for i in range(2)))
    table = _run(tmp_path, index, FakePipe())
    assert table["subtasks"]["all"]["generated"] == 2
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert all(len(p.name.encode()) <= 255 for p in files)
    assert len(list((tmp_path / "out" / "videos" / "t2v").glob("*.mp4"))) == 2
    assert len(list((tmp_path / "out" / "vbench" / "t2v").glob("*.mp4"))) == 2


def test_an_index_with_no_usable_row_is_an_error(tmp_path, capsys):
    index = tmp_path / "bad.jsonl"
    index.write_text("{not json\n[1, 2]\n")
    refused(capsys, ["eval", "--model", tmp_path, "--index", index, "--root", tmp_path, "--out", tmp_path / "o",
                     "--frames", T, "--height", H, "--width", W], "no usable rows", "line 1")
    # rows that are all skipped (missing inputs) are an error too, not "evaluated 0 rows"
    index.write_text(json.dumps(dict(subtask="depth", sample_id="d", en_prompt="x", src_video="gone.mp4")) + "\n")
    with pytest.raises(B.BenchmarkError, match="no row of .* could be evaluated .*gone.mp4"):
        _run(tmp_path, index, FakePipe())
