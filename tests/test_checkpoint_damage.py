"""A damaged latest checkpoint (state missing, or its data files unreadable): named in a warning, the newest
intact step is used instead, and the damaged one is never deleted (moved aside by a writer, left by a reader)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from safety_helpers import checksums
from vdot_jax.train import checkpoint as ckpt

# orbax leaves an event-loop callback behind after a failed restore; harmless here
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _abstract():
    return {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32), "step": jax.ShapeDtypeStruct((), jnp.int32)}


@pytest.fixture
def workdir(tmp_path):
    c = ckpt.Checkpointer(tmp_path, keep=3, async_save=False)
    for step in (1, 2):
        c.save(step, {"w": jnp.full((4, 4), float(step)), "step": jnp.array(step, jnp.int32)}, {"s": step},
               {"mode": "vdot"})
    c.close()
    return tmp_path


def test_missing_state_falls_back_with_a_warning(workdir):
    import shutil

    shutil.rmtree(workdir / "checkpoints" / "2" / "state")
    before = checksums(workdir / "checkpoints" / "2")
    warnings = []
    step, meta = ckpt.latest_meta(workdir, warn=warnings.append)
    assert step == 1 and meta["step"] == 1
    assert len(warnings) == 1 and "step 2" in warnings[0] and "state/ is missing" in warnings[0]
    assert checksums(workdir / "checkpoints" / "2") == before  # left in place


def _damage_data(workdir) -> dict:
    for f in (workdir / "checkpoints" / "2" / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"\x00garbage")
    return checksums(workdir / "checkpoints" / "2")


def test_unreadable_state_data_falls_back_and_is_kept(workdir):
    damaged = _damage_data(workdir)
    reader = ckpt.Checkpointer(workdir, read_only=True)
    warnings = []
    step, state, data, _ = reader.restore_intact(_abstract(), warn=warnings.append)
    reader.close()
    assert step == 1 and float(state["w"][0, 0]) == 1.0 and data == {"s": 1}
    assert "step 2" in warnings[0] and "left in place" in warnings[0]
    assert checksums(workdir / "checkpoints" / "2") == damaged

    writer = ckpt.Checkpointer(workdir, keep=3, async_save=False)
    warnings.clear()
    step, *_ = writer.restore_intact(_abstract(), warn=warnings.append)
    assert step == 1 and "moved to" in warnings[0]
    assert checksums(workdir / "unreadable_checkpoints" / "2") == damaged  # moved, not deleted
    # the run goes on and saves step 2 again without colliding with the damaged one
    assert writer.save(2, {"w": jnp.zeros((4, 4)), "step": jnp.array(2, jnp.int32)}, {"s": 2}, {"mode": "vdot"})
    writer.close()
    assert ckpt.latest_meta(workdir)[0] == 2
    ckpt.check_workdir(workdir)  # still a training workdir


def test_no_intact_checkpoint_is_one_sentence(workdir):
    import shutil

    for step in (1, 2):
        shutil.rmtree(workdir / "checkpoints" / str(step) / "state")
    reader = ckpt.Checkpointer(workdir, read_only=True)
    with pytest.raises(ckpt.CheckpointMismatch, match="no checkpoint that can be restored"):
        reader.restore_intact(_abstract(), warn=lambda m: None)
    reader.close()


def test_partial_restore_falls_back_too(workdir):
    damaged = _damage_data(workdir)
    warnings = []
    got = ckpt.restore_subtree_intact(workdir, {("w",): jax.ShapeDtypeStruct((4, 4), jnp.float32)},
                                      warn=warnings.append)
    assert float(got[("w",)][0, 0]) == 1.0 and "step 2" in warnings[0]
    assert checksums(workdir / "checkpoints" / "2") == damaged


def test_only_process_0_moves_a_damaged_checkpoint_the_others_wait(workdir, monkeypatch):
    """Multi-host: every process finds the damage, only process 0 moves it (16 hosts renaming one folder at once
    raced); the others wait at a barrier, then reload and resume from the step before. Seen from process 1."""
    damaged = _damage_data(workdir)
    seen = []

    def barrier(name):  # process 0's part, while process 1 waits here
        seen.append((name, (workdir / "checkpoints" / "2").exists()))
        (workdir / "unreadable_checkpoints").mkdir()
        (workdir / "checkpoints" / "2").rename(workdir / "unreadable_checkpoints" / "2")

    monkeypatch.setattr(ckpt, "_is_primary", lambda: False)
    monkeypatch.setattr(ckpt, "_barrier", barrier)
    writer = ckpt.Checkpointer(workdir, keep=3, async_save=False)
    step, state, *_ = writer.restore_intact(_abstract(), warn=lambda m: None)
    writer.close()
    assert seen == [("vdot_checkpoint_aside_2", True)]  # process 1 had not touched it before the barrier
    assert step == 1 and float(state["w"][0, 0]) == 1.0
    assert checksums(workdir / "unreadable_checkpoints" / "2") == damaged
