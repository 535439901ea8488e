"""Where a run's networks come from, and the release configs at full size (abstractly: nothing is compiled)."""

import dataclasses

import jax
import numpy as np
import pytest
from absl import flags

from vdot_jax.models.config import preset
from vdot_jax.train import checkpoint as ckpt
from vdot_jax.train.config import apply_overrides, load_config
from vdot_jax.train.loop import build, init_state, source_arch

flags.FLAGS.mark_as_parsed()


@pytest.mark.parametrize("name,preset_name", [("wan1_3b_stage1_t2v", "wan2.1-t2v-1.3b"),
                                              ("wan1_3b_stage2_vace", "wan2.1-vace-1.3b"),
                                              ("wan14b_stage1_t2v", "wan2.1-t2v-14b"),
                                              ("wan14b_stage2_vace", "wan2.1-vace-14b")])
def test_release_configs_build_at_full_size_on_an_fsdp_mesh(name, preset_name):
    c = load_config(f"configs/{name}.py")
    assert c.optim.accumulation == 3 and (c.data.num_frames, c.data.height, c.data.width) == (81, 480, 832)
    assert c.train.steps == (1500 if "stage1" in name else 1200) and c.optim.generator_lr == 2e-6
    if "stage2" in name:  # the TPU slice docs/scaling.md compiled them for (64 chips); built here on 8 devices
        assert (c.mesh.ici, c.model.remat) == ("fsdp=16,context=4", "offload")
    apply_overrides(c, [f"model.preset={preset_name}", "model.teacher=", "model.generator=", "mesh.ici=fsdp=-1"])
    run = build(c)  # abstract: shapes and shardings only
    assert run.arch == preset(preset_name) and run.batch_size == 8 and run.layout().local_batch == 8
    total = sharded = 0
    for leaf, sh in zip(jax.tree.leaves(run.abstract_state), jax.tree.leaves(run.state_sharding)):
        nbytes = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
        total += nbytes
        sharded += nbytes * (np.prod(sh.shard_shape(leaf.shape)) < np.prod(leaf.shape))
    assert sharded / total > 0.99  # ZeRO-3: parameters, optimizer moments and teacher all split over fsdp
    assert run.with_context == ("vace" in name)


def tiny_flow(tmp, arch_overrides=()):
    c = load_config("configs/tiny.py:flow")
    apply_overrides(c, ["mesh.num_devices=1", "flow.ema_decay=0.5", *arch_overrides])
    run = build(c)
    state = init_state(run)
    # right after init the EMA equals the params: move it, so that reading the EMA and reading the params differ
    noise = lambda i, p: p + 0.01 * jax.random.normal(jax.random.key(i), p.shape, p.dtype)  # noqa: E731
    leaves, treedef = jax.tree.flatten(state.params)
    state = state.replace(ema=jax.tree.unflatten(treedef, [noise(i, p) for i, p in enumerate(leaves)]))
    cp = ckpt.Checkpointer(tmp, async_save=False)
    meta = {"mode": "flow", "signature": run.signature(), "models": run.models_meta(), "has_ema": True}
    cp.save(1, state, {"step": 1}, meta)
    cp.close()
    return run, state


def test_teacher_from_a_flow_workdir_and_a_text_to_video_generator_into_a_vace_student(tmp_path):
    """The demo's toy teacher is a flow run's workdir; release stage 2 puts a T2V stage-1 generator's main blocks
    into the VACE student (VACE blocks from the teacher)."""
    _, vace = tiny_flow(tmp_path / "teacher", ["model.init_seed=1"])
    _, t2v = tiny_flow(tmp_path / "t2v", ["model.init_seed=2", "model.arch.vace_layers=()"])
    assert source_arch(tmp_path / "t2v").vace_layers == ()
    c = load_config("configs/tiny.py")
    apply_overrides(c, ["mesh.num_devices=1", f"model.teacher={tmp_path / 'teacher'}", "model.teacher_ema=true",
                        f"model.generator={tmp_path / 't2v'}"])
    run = build(c)
    assert run.arch == source_arch(tmp_path / "teacher")
    state = init_state(run)
    get = lambda tree, *p: np.asarray(tree[p[0]] if len(p) == 1 else get(tree[p[0]], *p[1:]))  # noqa: E731
    k = ("blocks", "attn1", "to_q", "kernel")
    np.testing.assert_array_equal(get(state.teacher, *k), get(vace.ema, *k))  # the teacher's EMA
    np.testing.assert_array_equal(get(state.critic["model"], *k), get(vace.ema, *k))
    np.testing.assert_array_equal(get(state.generator, *k), get(t2v.params, *k))  # main blocks: the T2V model
    v = ("vace_blocks", "attn1", "to_q", "kernel")
    np.testing.assert_array_equal(get(state.generator, *v), get(vace.ema, *v))  # VACE blocks: the teacher
    assert not np.array_equal(get(vace.ema, *k), get(t2v.params, *k))
    for p in (k, v):  # the EMA really is another tree than the params
        assert not np.array_equal(get(vace.ema, *p), get(vace.params, *p))
    assert not np.array_equal(get(state.teacher, *k), get(vace.params, *k))

    c2 = load_config("configs/tiny.py")
    apply_overrides(c2, ["mesh.num_devices=1", f"model.teacher={tmp_path / 't2v'}",
                         f"model.generator={tmp_path / 'teacher'}"])
    with pytest.raises(ValueError, match="must be the teacher's architecture"):
        init_state(build(c2))
    assert dataclasses.asdict(run.arch)["dim"] == 16


def test_random_init_may_draw_the_vace_projections_that_vace_zero_initialises():
    def vace_kernels(*overrides):
        c = load_config("configs/tiny.py:flow")
        apply_overrides(c, ["mesh.num_devices=1", *overrides])
        p = init_state(build(c)).params
        return np.asarray(p["vace_proj_in"]["kernel"].value), np.asarray(p["vace_blocks"]["proj_out"]["kernel"].value)

    assert all(not k.any() for k in vace_kernels())  # VACE's (release) init: zeros
    drawn = vace_kernels("model.vace_zero_init=false")
    assert all(k.std() > 0.05 for k in drawn)
    np.testing.assert_array_equal(drawn[0], vace_kernels("model.vace_zero_init=false")[0])  # seeded
