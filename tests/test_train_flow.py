"""FlowTrainer: plain flow matching with the Distiller's interface (one compiled step, accumulation, skipping)."""

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from oracles import TINY_TRAIN as TINY
from vdot_jax.models.wan import WanModel
from vdot_jax.train.config import base_config
from vdot_jax.train.flow import FlowTrainer


def test_flow_trainer_learns_compiles_once_and_skips_non_finite_updates():
    c = base_config()
    c.flow.lr, c.flow.text_dropout, c.flow.ema_decay, c.flow.ema_start = 3e-3, 0.5, 0.9, 3
    model = WanModel(TINY, rngs=nnx.Rngs(0))
    trainer = FlowTrainer(model, c)
    state = trainer.init_state(model, seed=0)
    r = np.random.default_rng(0)
    batch = {"latents": r.normal(size=(2, 2, 4, 3, 4, 4)).astype(np.float32),
             "text": r.normal(size=(2, 2, 5, 8)).astype(np.float32), "neg_text": np.zeros((2, 2, 5, 8), np.float32),
             "context": r.normal(size=(2, 2, 12, 3, 4, 4)).astype(np.float32)}
    losses = []
    for i in range(40):
        ema_before = jax.tree.map(np.asarray, state.ema)
        state, m = trainer.train_step(state, batch)
        losses.append(float(m["flow_loss"]))
        if i < 5:  # the EMA's closed form: a copy of the new params before ema_start, then d e + (1 - d) p
            d = 0.9 if i >= c.flow.ema_start else 0.0
            for e0, e, p in zip(jax.tree.leaves(ema_before), jax.tree.leaves(state.ema), jax.tree.leaves(state.params)):
                np.testing.assert_allclose(np.asarray(e), d * e0 + (1 - d) * np.asarray(p), rtol=1e-6, atol=1e-7)
            ema_moved = any(not np.array_equal(np.asarray(e), np.asarray(p))
                            for e, p in zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.params)))
            assert ema_moved == (i >= c.flow.ema_start)
    assert trainer.trace_counts["flow"] == 1 and int(state.step) == 40
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:10])  # measured 0.81 (integer timestep draws)
    assert int(state.skipped) == 0 and state.ema is not None

    before = jax.tree.map(np.asarray, (state.params, state.opt))
    bad = {**batch, "latents": np.full_like(batch["latents"], np.nan)}
    state, m = trainer.train_step(state, bad)
    assert float(m["finite"]) == 0.0 and int(state.skipped) == 1 and trainer.trace_counts["flow"] == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((state.params, state.opt))):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert isinstance(trainer.model(state, ema=True), WanModel)


def test_phase_programs_are_keyed_on_their_shardings():
    """Catches a program cache keyed by the phase name alone: shardings passed after a first unsharded call were
    silently dropped (the unsharded program came back)."""
    model = WanModel(TINY, rngs=nnx.Rngs(0))
    trainer = FlowTrainer(model, base_config())
    state = jax.eval_shape(lambda: trainer.init_state(model))
    mesh = jax.make_mesh((jax.device_count(),), ("data",))

    def shardings():  # new (equal) objects on every call: the cache compares shardings, not identities
        rep = NamedSharding(mesh, P())
        batch = {k: NamedSharding(mesh, P(None, "data")) for k in ("latents", "text", "neg_text")}
        return jax.tree.map(lambda _: rep, state), batch

    plain = trainer.phase("flow")
    sharded = trainer.phase("flow", *shardings())
    assert sharded is not plain and trainer.phase("flow", *shardings()) is sharded and trainer.phase() is plain
    batch = {"latents": jax.ShapeDtypeStruct((1, 8, 4, 3, 4, 4), np.float32),
             "text": jax.ShapeDtypeStruct((1, 8, 5, 8), np.float32),
             "neg_text": jax.ShapeDtypeStruct((1, 8, 5, 8), np.float32)}
    assert '{"data"}' in sharded.lower(state, batch).as_text()  # the batch really is split over the mesh
