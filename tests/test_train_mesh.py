"""A checkpoint written on 8 (fake) devices restores onto 1 device and onto another mesh, and training continues."""

import jax
import numpy as np
from absl import flags
from flax import nnx

from vdot_jax.parallel.mesh import make_mesh
from vdot_jax.train.config import load_config
from vdot_jax.train.loop import restore_state, train

flags.FLAGS.mark_as_parsed()


def tiny(**overrides):
    c = load_config("configs/tiny.py")
    c.loss.use_gan = False
    c.ttur = 100  # the generator updates at step 0 only: later steps need just the critic phase
    c.train.progress = False
    c.train.checkpoint_every = 1
    c.ema.decay, c.ema.start = 0.5, 0  # the generator's one update (step 0) moves the EMA half way
    for k, v in overrides.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


def test_checkpoint_from_8_devices_restores_onto_1_device_and_another_mesh_and_training_continues(tmp_path):
    assert jax.device_count() == 8
    wd = tmp_path / "run"
    s8 = train(tiny(**{"mesh.ici": "data=2,fsdp=4", "train.steps": 2}), wd)
    assert s8["step"] == 2 and s8["mesh"].startswith("data=2, fsdp=4")

    mesh8 = make_mesh("data=2,fsdp=4")
    run8, state8 = restore_state(wd, mesh=mesh8)
    run1, state1 = restore_state(wd)  # one device
    kernel = lambda s: s.critic["model"]["blocks"]["attn1"]["to_q"]["kernel"].value  # noqa: E731
    assert "fsdp" in str(kernel(state8).sharding.spec)  # really sharded on the 8-device mesh
    assert len(kernel(state1).sharding.device_set) == 1
    for a, b in zip(jax.tree.leaves(state8), jax.tree.leaves(state1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # continue on one device, then on a 4-device fsdp x tensor mesh
    s1 = train(tiny(**{"mesh.num_devices": 1, "train.steps": 3}), wd)
    assert s1["resumed"] and s1["start_step"] == 2 and s1["step"] == 3 and s1["mesh"].endswith("(1 devices)")
    s4 = train(tiny(**{"mesh.num_devices": 4, "mesh.ici": "fsdp=2,tensor=2", "train.steps": 4}), wd)
    assert s4["resumed"] and s4["start_step"] == 3 and s4["step"] == 4 and "tensor=2" in s4["mesh"]
    for s in (s8, s1, s4):
        assert np.isfinite(s["last_metrics"]["critic_flow_loss"])
    _, final = restore_state(wd)
    assert int(final.step) == 4
    # the teacher never changes; the critic keeps training on every mesh
    np.testing.assert_array_equal(np.asarray(final.teacher["proj_out"]["kernel"].value),
                                  np.asarray(state1.teacher["proj_out"]["kernel"].value))
    assert not np.array_equal(np.asarray(kernel(final)), np.asarray(kernel(state1)))
    _restored_models_are_the_trained_ones(wd, final, tmp_path)


def _leaves(module):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.split(module)[1])]


def _same(module, tree):
    got, want = _leaves(module), [np.asarray(x) for x in jax.tree.leaves(tree)]
    return len(got) == len(want) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(got, want))


def _restored_models_are_the_trained_ones(wd, final, tmp_path):
    """restore_model and `vdot export` of a distillation workdir: the generator, its EMA and the critic, each
    equal to its tree in the final state (the EMA differs from the generator, so a swap shows)."""
    from vdot_jax.cli import main as vdot
    from vdot_jax.train.loop import restore_model
    from vdot_jax.weights.convert import load_transformer

    assert not _same(restore_model(wd), final.ema)
    assert _same(restore_model(wd), final.generator) and _same(restore_model(wd, ema=True), final.ema)
    assert _same(restore_model(wd, which="critic"), final.critic)
    for extra, tree in (([], final.generator), (["--ema"], final.ema)):
        out = tmp_path / f"export{'_'.join(extra)}"
        assert vdot(["export", "--ckpt", str(wd), "--format", "jax", "--out", str(out), "--quiet", *extra]) == 0
        assert _same(load_transformer(out), tree), extra


def test_restore_model_gives_the_trained_generator(tmp_path):
    """The demo's entry point: the trained network as a module, from any workdir."""
    from vdot_jax.models.wan import WanModel
    from vdot_jax.train.loop import restore_model

    wd = tmp_path / "flow"
    train(tiny(**{"mode": "flow", "mesh.num_devices": 1, "train.steps": 1, "flow.ema_decay": 0.5}), wd)
    _, state = restore_state(wd)
    model = restore_model(wd)
    assert isinstance(model, WanModel) and model.cfg.dim == 16
    assert _same(model, state.params) and _same(restore_model(wd, ema=True), state.ema)
    assert not _same(model, state.ema)
