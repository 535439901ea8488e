"""Meshes, logical sharding rules, Ulysses attention and multi-process runs, on 8 fake CPU devices."""

import dataclasses
import os
import re
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from conftest import FAST_COMPILE, free_port, run_together
from oracles import TINY_VACE
from vdot_jax.models.config import PRESETS
from vdot_jax.models.wan import WanModel
from vdot_jax.parallel.logical import activate
from vdot_jax.parallel.mesh import make_mesh, parse_axes, resolve_shape
from vdot_jax.parallel.sharding import check_replication, init_sharded, model_shardings, sharding_stats, sharding_table
from vdot_jax.weights.params import abstract_model, flat_state

# 4 heads so that tensor=2 x context=2 leaves one head per device for Ulysses.
CFG_VACE = dataclasses.replace(TINY_VACE, dim=64, num_heads=4)
CFG_T2V = dataclasses.replace(CFG_VACE, vace_layers=())
MESHES = ["data=8", "data=2,fsdp=4", "data=2,context=2,tensor=2"]


def inputs(cfg, batch=8, seed=0):
    r = np.random.default_rng(seed)
    x = r.normal(size=(batch, 4, 3, 4, 6)).astype(np.float32)  # 3*2*3 = 18 tokens
    t = np.linspace(10, 990, batch).astype(np.float32)
    text = r.normal(size=(batch, 5, cfg.text_dim)).astype(np.float32)
    ctx = r.normal(size=(batch, 12, 3, 4, 6)).astype(np.float32) if cfg.is_vace else None
    return x, t, text, ctx


@pytest.fixture(scope="module", params=["t2v", "vace"])
def setup(request):
    cfg = CFG_VACE if request.param == "vace" else CFG_T2V
    model = WanModel(cfg, rngs=nnx.Rngs(3))
    # VACE projections start at zero; perturb them so the hints matter in the comparison.
    state = {p: v + 0.02 * np.random.default_rng(len(p)).normal(size=v.shape).astype(np.float32)
             for p, v in flat_state(model).items()}
    from vdot_jax.weights.params import assign

    assign(model, state)
    args = inputs(cfg)
    ref = np.asarray(jax.jit(lambda m, *a: m(*a))(model, *args))
    return cfg, model, args, ref


@pytest.mark.parametrize("mesh_spec", MESHES)
def test_sharded_forward_equals_single_device(setup, mesh_spec):
    cfg, model, args, ref = setup
    mesh = make_mesh(mesh_spec)
    assert mesh.devices.size == 8
    from vdot_jax.parallel.sharding import shard_model

    sharded = shard_model(nnx.clone(model), mesh)
    if "context" in mesh_spec:
        sharded.set_runtime(attention="ulysses:xla")
    with activate(mesh):
        fwd = jax.jit(lambda m, *a: m(*a))
        out = fwd(sharded, *args)
        hlo = fwd.lower(sharded, *args).compile().as_text()
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    if "context" in mesh_spec:
        assert "all-to-all" in hlo  # Ulysses really ran
    if mesh_spec == "data=2,fsdp=4":
        # every token matmul runs on this device's own video (1 of 8: 18 tokens). Left to propagation, the VACE
        # patch embedding kept its kernel's fsdp split and ran on the 4 videos of the fsdp group (rows of 72).
        rows = {int(r) for r in re.findall(r"= f32\[(\d+),\d+\]\{[^}]*\} dot\(", hlo)}
        assert rows and max(rows) <= 18, rows
    kernel = sharded.blocks.attn1.to_q.kernel[...]  # [layers, embed, heads]
    P = jax.sharding.PartitionSpec
    expected = {"data=8": P(None, None, None), "data=2,fsdp=4": P(None, "fsdp", None),
                "data=2,context=2,tensor=2": P(None, "context", "tensor")}[mesh_spec]
    assert kernel.sharding.spec == expected


def test_sharded_init_equals_plain_init():
    mesh = make_mesh("fsdp=4,tensor=2")
    a = init_sharded(lambda: WanModel(CFG_VACE, rngs=nnx.Rngs(0)), mesh)
    b = WanModel(CFG_VACE, rngs=nnx.Rngs(0))
    for (p, x), y in zip(flat_state(a).items(), flat_state(b).values()):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(p))
    assert len(a.blocks.ffn.net[0].proj.kernel[...].sharding.device_set) == 8


def test_ulysses_refuses_heads_that_do_not_divide():
    cfg = dataclasses.replace(CFG_T2V, dim=48, num_heads=3)
    mesh = make_mesh("context=2,data=4")
    model = WanModel(cfg, rngs=nnx.Rngs(0)).set_runtime(attention="ulysses:xla")
    x, t, text, _ = inputs(cfg, batch=4)
    with activate(mesh), pytest.raises(ValueError, match=r"heads per device \(3\) divisible by the context axis size 2"):
        model(x, t, text)


def test_14b_vace_initialises_abstractly_on_fsdp8_with_an_eighth_per_device():
    mesh = make_mesh("fsdp=8")
    model = abstract_model(lambda: WanModel(PRESETS["wan2.1-vace-14b"], rngs=nnx.Rngs(0)))
    flat = flat_state(model)
    stats = sharding_stats(flat, model_shardings(model, mesh))
    assert 17e9 < stats.total_bytes / 4 < 18e9  # ~17.3B parameters with the VACE blocks
    assert stats.per_device_bytes / (stats.total_bytes / 8) < 1.01
    check_replication(stats, max_fraction=0.01)
    assert "GiB per device" in sharding_table(stats)
    unsharded = sharding_stats(flat, model_shardings(model, mesh, rules={}))
    with pytest.raises(ValueError, match=r"100.0% of parameter bytes are replicated"):
        check_replication(unsharded, max_fraction=0.01)


def test_nested_models_shard_like_top_level_ones():
    """The critic holds the trunk as ``model.blocks``: its layer axis must be recognised too."""
    from vdot_jax.distill.critic import Critic

    mesh = make_mesh("fsdp=8")
    critic = abstract_model(lambda: Critic(PRESETS["wan2.1-vace-14b"], rngs=nnx.Rngs(0)))
    stats = sharding_stats(flat_state(critic), model_shardings(critic, mesh))
    assert stats.per_device_bytes / (stats.total_bytes / 8) < 1.01
    check_replication(stats, max_fraction=0.01)


def test_mesh_specs():
    assert parse_axes("fsdp=4,context=2") == {"fsdp": 4, "context": 2}
    assert resolve_shape({"fsdp": 4}, 8) == (2, 4, 1, 1)
    assert resolve_shape({"fsdp": -1, "data": 2}, 8) == (2, 4, 1, 1)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        parse_axes("pipeline=2")
    with pytest.raises(ValueError, match="uses 4 devices but there are 8"):
        resolve_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="not of the form"):
        parse_axes("fsdp4")


def test_two_processes_match_one(tmp_path):
    """Two CPU processes x 4 devices, coordinator on 127.0.0.1, run the sharded forward of one model."""
    np.savez(tmp_path / "inputs.npz", *inputs(CFG_VACE))
    port = free_port()
    script = Path(__file__).parent / "scripts" / "multiprocess_forward.py"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {FAST_COMPILE}"
    done = run_together([[sys.executable, str(script), str(port), str(i), str(tmp_path)] for i in range(2)],
                        [env] * 2, timeout=300)
    assert all(rc == 0 for rc, _, _ in done), "\n".join(o + e for _, o, e in done)
    single = np.load(tmp_path / "single.npy")
    # the VACE hints change the output, so their sharding is part of what is compared
    assert np.abs(single - np.load(tmp_path / "nohints.npy")).max() > 0.1 * np.abs(single).max()
    for i in range(2):
        out = np.load(tmp_path / f"out{i}.npy")
        np.testing.assert_allclose(out, single, atol=1e-5)
