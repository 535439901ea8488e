"""The train state's footprint: split over every device of a model replica (fsdp x context), and the sharded
update equal to the one-device update. On 8 fake CPU devices."""

import jax
import numpy as np
import optax
import pytest
from absl import flags

from vdot_jax.parallel.mesh import make_mesh
from vdot_jax.train.config import apply_overrides, load_config
from vdot_jax.train.loop import build, init_state
from vdot_jax.train.plan import latent_grid

flags.FLAGS.mark_as_parsed()


def state_bytes(run) -> tuple[int, int]:
    """(total bytes of the train state, bytes on the fullest device)."""
    total, per_device = 0, {}
    for leaf, sh in zip(jax.tree.leaves(run.abstract_state), jax.tree.leaves(run.state_sharding)):
        item = leaf.dtype.itemsize
        total += int(np.prod(leaf.shape)) * item
        for d, idx in sh.devices_indices_map(leaf.shape).items():
            n = int(np.prod([len(range(*s.indices(dim))) for s, dim in zip(idx, leaf.shape)])) * item
            per_device[d] = per_device.get(d, 0) + n
    return total, max(per_device.values())


@pytest.mark.parametrize("mesh_spec", ["fsdp=2,context=2", "fsdp=4,context=2", "data=2,fsdp=2,context=2"])
def test_state_per_device_is_the_total_over_the_replica(mesh_spec):
    """VACE-1.3B's distillation state (fp32 generator, critic, their AdamW moments and EMA, the teacher), built
    abstractly: each device of a data replica holds 1/(fsdp x context) of it. Replicated over context (the old
    rule) it would be 2x that."""
    c = load_config("configs/wan1_3b_stage2_vace.py")
    apply_overrides(c, ["model.preset=wan2.1-vace-1.3b", "model.teacher=", "model.generator="])
    mesh = make_mesh(mesh_spec, devices=jax.devices()[: 8 if "data" in mesh_spec or "fsdp=4" in mesh_spec else 4])
    run = build(c, mesh=mesh)
    total, fullest = state_bytes(run)
    replica = mesh.shape["fsdp"] * mesh.shape["context"]
    assert total / replica <= fullest < 1.01 * total / replica, (total / fullest, replica)


def flow_config(**overrides):
    c = load_config("configs/tiny.py:flow")
    c.data.batch_size = 4
    c.optim.accumulation = 2
    c.flow.ema_decay = 0.5
    apply_overrides(c, [f"{k}={v}" for k, v in overrides.items()])
    return c


def batch_for(run, seed=0):
    c, a = run.config, run.arch
    f, h, w = latent_grid(c, int(c.data.toy.frames), int(c.data.toy.height), int(c.data.toy.width))
    acc, b, tl = int(c.optim.accumulation), run.batch_size, int(c.data.toy.text_len)
    r = np.random.default_rng(seed)
    shapes = {"latents": (acc, b, a.in_channels, f, h, w), "text": (acc, b, tl, a.text_dim),
              "neg_text": (acc, b, tl, a.text_dim), "context": (acc, b, a.vace_in_channels, f, h, w)}
    return run.global_batch({k: r.normal(size=s).astype(np.float32) for k, s in shapes.items()})


def steps(mesh_spec: str | None, n: int = 3, **overrides):
    """The tiny flow run's state after ``n`` updates (2 micro-batches each) on this mesh (None: one device)."""
    c = flow_config(**({"mesh.num_devices": 1} if mesh_spec is None else {"mesh.ici": mesh_spec}), **overrides)
    run = build(c)
    state = init_state(run)
    batches = [batch_for(run, seed=i) for i in range(n)]
    phase = run.trainer.phase("flow", run.state_sharding, {k: v.sharding for k, v in batches[0].items()})
    from vdot_jax.parallel.logical import activate

    with activate(run.mesh, run.rules):
        for b in batches:
            state, m = phase(state, b)
            assert float(m["finite"]) == 1.0
    return run, state


@pytest.fixture(scope="module")
def one_device():
    return steps(None)


def assert_same_state(got, want):
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6, err_msg=str(path))


@pytest.mark.parametrize("mesh_spec", ["fsdp=4,context=2"])
def test_sharded_updates_equal_the_one_device_updates(one_device, mesh_spec):
    """Three flow-matching updates with AdamW on fsdp x context equal those on one device: parameters, moments
    and EMA. The state really is split over context (a kernel's embed dimension over both axes)."""
    _, want = one_device
    run, got = steps(mesh_spec)
    kernel = got.params["blocks"]["attn1"]["to_q"]["kernel"].value
    assert kernel.sharding.spec[1] == ("fsdp", "context"), kernel.sharding.spec
    assert np.prod(kernel.sharding.shard_shape(kernel.shape)) * 8 == np.prod(kernel.shape)
    assert_same_state(got, want)
    moved = 0.0
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(init_state(run).params)):
        moved = max(moved, float(np.abs(np.asarray(a) - np.asarray(b)).max()))
    assert moved > 1e-4  # the updates did something


def test_optimizer_state_ema_and_gradients_in_host_memory_give_the_same_updates(one_device):
    """``mesh.opt_state_memory=host`` and ``mesh.grad_memory=host`` (as the small-slice configs): between steps
    the AdamW moments and the EMA sit in pinned host memory (the compiled step's inputs and outputs say so),
    parameters on the device, and the layer stacks' gradient accumulator lives in host memory inside the step;
    three updates of 2 micro-batches on fsdp=2 x context=2 equal the one-device updates with everything on the
    device. Fake CPU devices refuse arithmetic between host and device operands, so a layer the update did not
    bring in fails."""
    _, want = one_device
    run, got = steps("fsdp=2,context=2", **{"mesh.num_devices": 4, "mesh.opt_state_memory": "host",
                                            "mesh.grad_memory": "host"})
    kinds = lambda tree: {a.sharding.memory_kind for a in jax.tree.leaves(tree)}  # noqa: E731
    assert kinds(got.opt) == kinds(got.ema) == {"pinned_host"}
    assert kinds(got.params) == {"device"}
    assert_same_state(got, want)


def _v5p_stack_update(layers=8, d=1024, f=4096):
    """What the update compile tests share: for v5p:2x2x1 (libtpu, no TPU), one layer stack of square and
    rectangular float32 kernels split over the 4 chips, bf16 AdamW moments in host memory (as the v5p-8 config),
    3 micro-batches of 16 rows. Returns (kernel elements per chip, params, their shardings, tx, opt, its
    shardings, batch)."""
    pytest.importorskip("libtpu", reason="TPU compile tests need libtpu (pip install '.[tpu]')")
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from vdot_jax.parallel.mesh import make_mesh, topology_devices
    from vdot_jax.train.update import clipped_adamw

    mesh = make_mesh("fsdp=1,context=4", devices=topology_devices("v5p:2x2x1"))
    split = NamedSharding(mesh, P(None, ("fsdp", "context"), None))
    shapes = {"q": (d, d), "up": (d, f), "down": (f, d)}
    params = {"blocks": {k: {"kernel": jax.ShapeDtypeStruct((layers, *s), jnp.float32, sharding=split)}
                         for k, s in shapes.items()}}  # a layer stack's kernels: streamed and kept in host
    psh = jax.tree.map(lambda a: a.sharding, params)
    tx = clipped_adamw(1e-3, 1.0, 0.0, 0.999, 0.0, "bfloat16")
    opt = jax.eval_shape(tx.init, params)
    osh = jax.tree.map(lambda a: (split if a.ndim == 3 else NamedSharding(mesh, P())).with_memory_kind(
        "pinned_host"), opt)
    opt = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), opt, osh)
    batch = jax.ShapeDtypeStruct((3, 16, d), jnp.float32, sharding=NamedSharding(mesh, P(None, ("fsdp", "context"))))
    return layers * sum(a * b for a, b in shapes.values()) // 4, params, psh, tx, opt, osh, batch


def test_gradient_accumulator_in_host_memory_compiles_for_tpu_once_and_off_the_device():
    """Compiled for v5p:2x2x1 (libtpu, no TPU), a 3-micro-batch update of a layer stack with square and
    rectangular kernels: with ``grads_in_host`` the float32 accumulator is one host temporary of exactly its size
    (laid out as the parameters: without their sharding XLA kept three host copies) and the device temporaries
    drop by about that much."""
    per_chip, params, psh, tx, opt, osh, batch = _v5p_stack_update()
    import jax.numpy as jnp

    from vdot_jax.train.update import update

    def loss(p, b, k):
        def layer(x, w):
            h = jnp.tanh(x @ w["q"]["kernel"])
            return h + jax.nn.gelu(h @ w["up"]["kernel"]) @ w["down"]["kernel"], None

        return jnp.mean(jax.lax.scan(layer, b, p["blocks"])[0] ** 2), {}

    def compiled(in_host):
        def step(p, o, b):
            return update(loss, tx, p, o, b, jax.random.key(0), in_host=True, grad_dtype=jnp.bfloat16,
                          grads_in_host=in_host, sharding=psh)[:2]

        return jax.jit(step, in_shardings=(psh, osh, batch.sharding), out_shardings=(psh, osh),
                       donate_argnums=(0, 1)).lower(params, opt, batch).compile().memory_analysis()

    device, host = compiled(False), compiled(True)
    acc = per_chip * 4  # float32
    assert device.host_temp_size_in_bytes == 0
    assert host.host_temp_size_in_bytes == acc
    assert host.temp_size_in_bytes <= device.temp_size_in_bytes - 0.9 * acc


def test_samples_drawn_before_the_gradient_loop_free_the_frozen_networks_bf16_copy_for_tpu():
    """Compiled for v5p:2x2x1 (libtpu, no TPU): a critic-like update whose loss reads a sample of a frozen float32
    network (cast to bf16 layer by layer). Drawn inside the loss, XLA hoists the frozen network's bf16 cast out of
    the micro-batch loop and keeps it through every backward; drawn by ``prepare`` before the loop, the device
    temporaries drop by at least that copy (measured: 180 -> 130 MiB, the copy 36 MiB)."""
    per_chip, net_shape, psh, tx, opt, osh, batch = _v5p_stack_update()
    import jax.numpy as jnp

    from vdot_jax.train.update import update

    def net(w, x):
        def layer(x, w):
            bf = lambda k: w[k]["kernel"].astype(jnp.bfloat16)  # noqa: E731
            h = jnp.tanh(x @ bf("q"))
            return (h + jax.nn.gelu(h @ bf("up")) @ bf("down")).astype(jnp.float32), None

        return jax.lax.scan(jax.checkpoint(layer), x, w["blocks"])[0]

    def temporaries(drawn_first):
        def step(p, o, g, b):
            sample = lambda x, k: jax.lax.stop_gradient(net(g, x + jax.random.normal(k, x.shape)))  # noqa: E731
            if drawn_first:
                loss = lambda p, b, k: (jnp.mean(net(p, b["x"]) ** 2), {})  # noqa: E731
                prepare = lambda b, k: {"x": sample(b["b"], k)}  # noqa: E731
                b = {"b": b}
            else:
                loss, prepare = (lambda p, b, k: (jnp.mean(net(p, sample(b, k)) ** 2), {})), None
            return update(loss, tx, p, o, b, jax.random.key(0), in_host=True, grad_dtype=jnp.bfloat16,
                          grads_in_host=True, sharding=psh, prepare=prepare)[:2]

        return jax.jit(step, in_shardings=(psh, osh, psh, batch.sharding), out_shardings=(psh, osh),
                       donate_argnums=(0, 1)).lower(net_shape, opt, net_shape, batch).compile() \
            .memory_analysis().temp_size_in_bytes

    assert temporaries(True) <= temporaries(False) - per_chip * 2  # the frozen network in bf16


def test_update_with_host_state_compiles_for_tpu_with_the_moments_in_host_memory():
    """Compiled for a real TPU topology (libtpu, no TPU): with ``in_host`` the AdamW moments are host arguments
    and host outputs of the program (memory_analysis), the parameters device ones; the device arguments hold
    the parameters and the batch only."""
    pytest.importorskip("libtpu", reason="TPU compile tests need libtpu (pip install '.[tpu]')")
    import jax.numpy as jnp
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from vdot_jax.parallel.mesh import make_mesh, topology_devices
    from vdot_jax.train.update import update

    mesh = make_mesh("fsdp=2,context=2", devices=topology_devices("v5e:2x2"))
    w = NamedSharding(mesh, P(("fsdp", "context"), None))
    host = w.with_memory_kind("pinned_host")
    tx = optax.adamw(1e-3)
    params = {"w": jax.ShapeDtypeStruct((1024, 256), jnp.float32, sharding=w)}
    opt = jax.eval_shape(tx.init, params)
    opt_sh = jax.tree.map(lambda a: host if a.ndim else NamedSharding(mesh, P()).with_memory_kind("pinned_host"),
                          opt)
    batch = jax.ShapeDtypeStruct((2, 4, 1024), jnp.float32, sharding=NamedSharding(mesh, P(None, "fsdp")))
    loss = lambda p, b, k: (jnp.mean((b @ p["w"]) ** 2), {})  # noqa: E731

    def step(p, o, b):
        new_p, new_o, _, _ = update(loss, tx, p, o, b, jax.random.key(0), in_host=True)
        return new_p, new_o

    c = jax.jit(step, in_shardings=(w, opt_sh, batch.sharding), out_shardings=(w, opt_sh),
                donate_argnums=(0, 1)).lower(params, opt, batch).compile()
    mem = c.memory_analysis()
    moments = 2 * 1024 * 256 * 4 // 4  # mu and nu, fp32, a quarter per chip
    assert moments <= mem.host_argument_size_in_bytes < moments + 1024
    assert moments <= mem.host_output_size_in_bytes < moments + 1024
    assert mem.argument_size_in_bytes < moments  # the parameters (256 KiB per chip) and the batch
    assert {s.memory_kind for s in jax.tree.leaves(c.output_shardings[1])} == {"pinned_host"}


@pytest.mark.parametrize("name,preset_name,devices", [("wan14b_stage2_vace_v5p8", "wan2.1-vace-14b", 4),
                                                      ("wan1_3b_stage2_vace_v5e8", "wan2.1-vace-1.3b", 8)])
def test_small_slice_configs_split_the_state_over_every_chip_and_keep_moments_in_host(name, preset_name, devices):
    """The small-slice configs at full size, abstractly: every parameter-sized leaf split over all chips, the
    AdamW moments (and EMA, if kept) in host memory, the parameters on the device; the v5p-8 config keeps the
    teacher in host memory too and its moments in bf16."""
    c = load_config(f"configs/{name}.py")
    apply_overrides(c, [f"model.preset={preset_name}", "model.teacher=", "model.generator="])
    run = build(c, mesh=make_mesh(c.mesh.ici, devices=jax.devices()[:devices]))
    assert run.mesh.size == devices and run.mesh.shape["context"] == 4
    host_fields = {"generator_opt", "critic_opt", "ema"}
    if name == "wan14b_stage2_vace_v5p8":  # one fp32 gradient buffer (tests/test_update.py checks its values)
        assert c.mesh.grad_dtype == "compute"
        host_fields.add("teacher")  # and bf16 moments
        assert {a.dtype for a in jax.tree.leaves(run.abstract_state.generator_opt) if a.ndim} == {np.dtype("bfloat16")}
    total, fullest = state_bytes(run)
    assert fullest < 1.01 * total / devices
    for field in ("generator", "generator_opt", "critic", "critic_opt", "teacher", "ema"):
        want = "pinned_host" if field in host_fields else "device"
        leaves = jax.tree.leaves(getattr(run.state_sharding, field))
        assert {s.memory_kind for s in leaves} <= {want}, field


def test_plan_refuses_a_program_above_the_host_budget():
    """``vdot plan``'s host column sums what a program keeps in host memory (state and offloaded temporaries);
    above the budget per chip (75 % of the TPU VM's RAM per chip) the program does not fit."""
    from types import SimpleNamespace

    from vdot_jax.parallel.sharding import CompileReport
    from vdot_jax.train.plan import Plan, host_budget_bytes, table

    gib = 2**30
    r = CompileReport("critic_gan", True, measured=True, argument_bytes=3 * gib, temp_bytes=10 * gib,
                      host_argument_bytes=20 * gib, host_output_bytes=20 * gib, host_alias_bytes=20 * gib,
                      host_temp_bytes=15 * gib)
    assert r.host_bytes == 35 * gib and r.peak_bytes == 13 * gib
    v5e, v5p = SimpleNamespace(device_kind="TPU v5 lite"), SimpleNamespace(device_kind="TPU v5")
    assert host_budget_bytes(v5e) == int(0.75 * 384e9 / 8) and host_budget_bytes(v5p) == int(0.75 * 448e9 / 4)
    assert host_budget_bytes(SimpleNamespace(device_kind="TPU v4")) is None
    over = Plan([r], hbm_bytes=16 * gib, host_budget=host_budget_bytes(v5e))  # 33.5 GiB per chip
    assert over.failures() == ["program critic_gan keeps 35.00 GiB per chip in host memory but the host budget "
                               "is 33.5 GiB per chip"]
    assert "NO (host)" in table(over)
    assert Plan([r], hbm_bytes=16 * gib, host_budget=host_budget_bytes(v5p)).failures() == []


def test_teacher_in_host_memory_gives_the_same_teacher_outputs():
    """``mesh.teacher_memory=host`` (tiny VACE run on fsdp=2 x context=2): the frozen teacher sits in pinned host
    memory, every other field where it was; its CFG velocity (what generator_dmd_ot reads) and the teacher's CFG
    denoise (teacher_denoise_cfg) from the host copy equal those from the same weights on the device. Fake CPU
    devices refuse a matmul between host and device operands, so a leaf the forward did not bring in fails."""
    import jax.numpy as jnp

    from vdot_jax.sampling.model_sampler import model_sampler

    c = load_config("configs/tiny.py")
    apply_overrides(c, ["mesh.ici=fsdp=2,context=2", "mesh.num_devices=4", "mesh.teacher_memory=host"])
    run = build(c)
    kinds = lambda tree: {s.memory_kind for s in jax.tree.leaves(tree)}  # noqa: E731
    assert kinds(run.state_sharding.teacher) == {"pinned_host"}
    assert kinds(run.state_sharding.generator) == kinds(run.state_sharding.generator_opt) == {"device"}
    from flax import nnx

    from vdot_jax.models.wan import WanModel
    from vdot_jax.parallel.sharding import init_sharded

    device = nnx.state(init_sharded(lambda: WanModel(run.arch, rngs=nnx.Rngs(0)), run.mesh, run.rules))
    host = jax.device_put(device, run.state_sharding.teacher)  # where init_state puts it
    assert kinds(jax.tree.map(lambda a: a.sharding, host)) == {"pinned_host"}

    a, r = run.arch, np.random.default_rng(0)
    f, h, w = latent_grid(c, int(c.data.toy.frames), int(c.data.toy.height), int(c.data.toy.width))
    x = jnp.asarray(r.normal(size=(2, a.in_channels, f, h, w)), jnp.float32)
    batch = {"text": jnp.asarray(r.normal(size=(2, 8, a.text_dim)), jnp.float32),
             "neg_text": jnp.asarray(r.normal(size=(2, 8, a.text_dim)), jnp.float32),
             "context": jnp.asarray(r.normal(size=(2, a.vace_in_channels, f, h, w)), jnp.float32)}
    from vdot_jax.parallel.logical import activate

    with activate(run.mesh, run.rules):
        v = jax.jit(lambda p: run.trainer._teacher_v(p, x, jnp.array([300.0, 800.0]), batch))
        np.testing.assert_allclose(np.asarray(v(host)), np.asarray(v(device)), rtol=1e-6, atol=1e-6)
        sampler = model_sampler(run.trainer.teacher_def, steps=2, shift=16.0, guidance=5.0)
        args = (x[:1], batch["text"][:1], batch["neg_text"][:1], batch["context"][:1])
        np.testing.assert_allclose(np.asarray(sampler(host, *args)), np.asarray(sampler(device, *args)),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("override,message", [
    ("mesh.teacher_memory=hbm", "config.mesh.teacher_memory must be 'device' or 'host', got 'hbm'."),
    ("optim.moment_dtype=float16", "config.optim.moment_dtype must be one of ('float32', 'bfloat16'), got 'float16'."),
    ("mesh.grad_memory=hbm", "config.mesh.grad_memory must be 'device' or 'host', got 'hbm'."),
    ("model.residual_dtype=float16", "config.model.residual_dtype must be 'float32' or 'bfloat16', got 'float16'."),
])
def test_memory_switches_refuse_bad_values_in_one_sentence(override, message):
    from vdot_jax.train.config import ConfigError, validate

    c = load_config("configs/tiny.py")
    apply_overrides(c, [override])
    with pytest.raises(ConfigError) as e:
        validate(c)
    assert str(e.value) == message
    flow = flow_config(**{"mesh.teacher_memory": "host"})
    with pytest.raises(ConfigError, match="teacher_memory=host needs mode 'vdot'; a 'flow' run has no teacher"):
        validate(flow)


@pytest.mark.slow
def test_generator_dmd_ot_with_the_teacher_in_host_memory_equals_the_device_teacher():
    """The one phase that reads the teacher, on fsdp=2 x context=2: one generator_dmd_ot update (its teacher
    forward inside the differentiated loss, under remat) from a host-kept teacher gives the same generator,
    moments and loss as with the teacher on the device (about a CPU-minute of compiling)."""
    from vdot_jax.parallel.logical import activate

    def one_update(memory):
        c = load_config("configs/tiny.py")
        apply_overrides(c, ["mesh.ici=fsdp=2,context=2", "mesh.num_devices=4", f"mesh.teacher_memory={memory}"])
        run = build(c)
        state, batch = init_state(run), batch_for(run)
        assert {a.sharding.memory_kind for a in jax.tree.leaves(state.teacher)} == {
            "pinned_host" if memory == "host" else "device"}
        phase = run.trainer.phase("generator_dmd_ot", run.state_sharding, {k: v.sharding for k, v in batch.items()})
        with activate(run.mesh, run.rules):
            state, m = phase(state, batch)
        return state, m

    got, m_host = one_update("host")
    want, m_device = one_update("device")
    assert float(m_host["finite"]) == 1.0
    np.testing.assert_allclose(float(m_host["surrogate/generator"]), float(m_device["surrogate/generator"]),
                               rtol=1e-6)
    assert_same_state((got.generator, got.generator_opt), (want.generator, want.generator_opt))


def test_teacher_in_host_memory_compiles_for_tpu_one_layer_at_a_time():
    """Compiled for a real TPU topology (libtpu, no TPU): a 48-layer bf16 DiT's forward from host-kept weights
    keeps them as host arguments (device arguments: the small unstacked leaves' shardings only) and its
    temporaries stay well under the stack's bytes -- a forward that brought the whole stack to the device (or
    let XLA hoist the per-layer copies out of the scan) would need them all."""
    pytest.importorskip("libtpu", reason="TPU compile tests need libtpu (pip install '.[tpu]')")
    import math

    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from vdot_jax.models.config import WanConfig
    from vdot_jax.models.layers import to_device
    from vdot_jax.models.wan import WanModel
    from vdot_jax.parallel.logical import DEFAULT_RULES, activate
    from vdot_jax.parallel.mesh import topology_devices
    from vdot_jax.parallel.sharding import in_host_memory, model_shardings
    from vdot_jax.weights.params import flat_state

    cfg = WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=48, in_channels=4, out_channels=4, text_dim=8,
                    freq_dim=16, vace_layers=(), vace_in_channels=12)
    mesh = make_mesh("fsdp=2,context=2", devices=topology_devices("v5e:2x2"))
    model = nnx.eval_shape(lambda: WanModel(cfg, rngs=nnx.Rngs(0)))
    graphdef = nnx.graphdef(model)
    shardings = model_shardings(model, mesh, DEFAULT_RULES)
    host = in_host_memory({"teacher": shardings}, ("teacher",))["teacher"]  # as the run's state shardings
    flat = {p: jax.ShapeDtypeStruct(a.shape, jnp.bfloat16, sharding=host[p]) for p, a in flat_state(model).items()}
    params = nnx.State.from_flat_path(flat)
    rep = NamedSharding(mesh, P())
    x = jax.ShapeDtypeStruct((1, 4, 2, 16, 16), jnp.float32, sharding=rep)
    text = jax.ShapeDtypeStruct((1, 8, 8), jnp.float32, sharding=rep)
    forward = jax.jit(lambda p, x, t: nnx.merge(graphdef, to_device(p, keep_stacks=True))(x, jnp.ones((1,)), t))
    with activate(mesh, DEFAULT_RULES):
        mem = forward.lower(params, x, text).compile().memory_analysis()
    stack = sum(math.prod(a.shape) * 2 for p, a in flat.items() if "blocks" in p) // 4  # per chip
    assert stack <= mem.host_argument_size_in_bytes
    assert mem.argument_size_in_bytes < stack / 100
    assert mem.temp_size_in_bytes < stack / 2, (mem.temp_size_in_bytes, stack)
