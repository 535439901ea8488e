"""Kernels per shard and backend defaults: splash (interpret mode) inside shard_map on 8 fake CPU devices,
programs compiled for a real TPU topology with libtpu (no TPU needed), cuDNN lowered for cuda, and the
defaults of each backend shown by patching the backend query."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdot_jax.models import attention as A
from vdot_jax.models.config import Runtime
from vdot_jax.parallel.aot import cuda_lowering, kernel_calls, kernels_outside_shard_map
from vdot_jax.parallel.logical import activate
from vdot_jax.parallel.mesh import make_mesh
from vdot_jax.parallel.sharding import mesh_compiler_options

if os.environ.get("CI"):  # CI installs the test extra, which has libtpu: a missing one must fail, not skip
    import libtpu  # noqa: F401
else:
    libtpu = pytest.importorskip("libtpu", reason="TPU compile tests need libtpu (pip install '.[tpu]')")


def _xla(q, k, v):
    return np.asarray(jax.jit(lambda q, k, v: A.attention(q, k, v, "xla"))(q, k, v))


def _qkv(b, sq, skv, h=4, d=128, seed=0):
    r = np.random.default_rng(seed)
    return [r.normal(size=s).astype(np.float32) for s in ((b, sq, h, d), (b, skv, h, d), (b, skv, h, d))]


# (mesh, attention, sq, skv): self-attention with padding, cross-attention (q sequence-sharded over context,
# text whole), Ulysses, and the GAN head's pattern (one query token per example, video keys batch-sharded)
SPLASH_CASES = [
    ("data=2,tensor=4", "splash_interpret", 200, 200),
    ("fsdp=4,context=2", "splash_interpret", 200, 24),
    ("data=2,context=2,tensor=2", "ulysses:splash_interpret", 200, 200),
    ("fsdp=8", "splash_interpret", 1, 200),
]


@pytest.mark.parametrize("mesh_spec,impl,sq,skv", SPLASH_CASES)
def test_splash_in_shard_map_equals_one_device(mesh_spec, impl, sq, skv):
    q, k, v = _qkv(8, sq, skv)
    ref = _xla(q, k, v)
    one = np.asarray(jax.jit(lambda q, k, v: A.attention(q, k, v, impl))(q, k, v))
    np.testing.assert_allclose(one, ref, atol=2e-5, rtol=2e-5)
    mesh = make_mesh(mesh_spec)
    with activate(mesh):
        fn = jax.jit(lambda q, k, v: A.attention(q, k, v, impl))
        text = fn.lower(q, k, v).as_text()
        out = np.asarray(fn(q, k, v))
    assert "sdy.manual_computation" in text  # it really ran per shard
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)


def test_splash_blocks_follow_the_shape_and_options():
    assert A.splash_block(32760, (512, 256, 128)) == 512  # 81x480x832: 32,760 tokens pad to 32,768 either way
    assert A.splash_block(200, (512, 256, 128)) == 256  # 512 would pad 200 tokens to 512
    assert A.splash_block(512, (1024, 512, 256, 128)) == 512
    fn = A.kernel("splash_interpret:block_q=256,block_kv=256")
    assert (fn.keywords["block_q"], fn.keywords["block_kv"]) == (256, 256)
    q, k, v = _qkv(1, 130, 130, h=2)
    np.testing.assert_allclose(np.asarray(jax.jit(fn)(q, k, v)), _xla(q, k, v), atol=2e-5)
    with pytest.raises(ValueError, match="block_q=N or block_kv=N"):
        A.kernel("splash:block_q=100")
    with pytest.raises(ValueError, match="only for splash"):
        A.kernel("cudnn:block_q=256")


@pytest.mark.parametrize("platform,attention,dtype", [("tpu", "splash", "bfloat16"), ("gpu", "cudnn", "bfloat16"),
                                                      ("cpu", "xla", "float32")])
def test_defaults_follow_the_backend(monkeypatch, platform, attention, dtype):
    monkeypatch.setattr(A, "backend", lambda: platform)
    rt = Runtime()
    assert (rt.dtype, rt.attention) == ("auto", "auto")
    assert rt.compute_dtype == jnp.dtype(dtype)
    assert rt.resolved() == Runtime(dtype=dtype, attention=attention)
    assert A.resolve("auto", context=2) == f"ulysses:{attention}"
    assert A.resolve("ulysses:auto") == f"ulysses:{attention}"
    assert A.resolve("xla", context=2) == "xla"  # an explicit choice is kept
    from vdot_jax.commands.generate import register as gen_register
    from vdot_jax.train.config import base_config, release_config

    for c in (base_config(), release_config(teacher="t", generator="", manifest="m", precomputed="p", steps=1,
                                            mesh="fsdp=-1")):
        assert (c.model.attention, c.model.dtype) == ("auto", "auto")
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    gen_register(sub)
    args = sub.choices["generate"].parse_args(["--prompt", "x"])
    assert (args.attention, args.dtype) == ("auto", "auto")


def test_kernel_check_finds_a_bare_kernel():
    """A bare Pallas call under a sharded jit is refused by JAX; the checker flags one outside any shard_map and
    passes the dispatch's, which the real TPU compiler accepts."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from vdot_jax.parallel.mesh import topology_devices

    devices = topology_devices("v5e:2x2")
    mesh = make_mesh("data=2,tensor=2", devices=devices)
    sd = jax.ShapeDtypeStruct((4, 256, 4, 128), jnp.bfloat16)
    sh = NamedSharding(mesh, P("data", None, "tensor", None))
    with pytest.raises(NotImplementedError, match="cannot be automatically partitioned"):
        jax.jit(A.kernel("splash"), in_shardings=(sh,) * 3, out_shardings=sh).lower(sd, sd, sd)
    one = NamedSharding(make_mesh("data=1", devices=devices[:1]), P())
    single = jax.jit(A.kernel("splash"), in_shardings=(one,) * 3).lower(sd, sd, sd).as_text()
    assert [k.inside_shard_map for k in kernel_calls(single)] == [False]
    with activate(mesh):
        wrapped = jax.jit(lambda q, k, v: A.attention(q, k, v, "splash")).lower(sd, sd, sd)
    assert [k.inside_shard_map for k in kernel_calls(wrapped.as_text())] == [True]
    wrapped.compile()


def test_bf16_splash_gradient_compiles_at_highest_default_precision():
    """The suite's default matmul precision is "highest" (conftest). Splash's backward kernels are traced when the
    gradient is taken; a precision context around the forward call alone let "highest" reach them and Mosaic
    refused the bf16 matmul ("Bad lhs type"), failing every TPU phase compile. The gradient through the
    dispatch's wrapper equals XLA's (interpret mode) and compiles for TPU."""
    from vdot_jax.parallel.mesh import topology_devices

    assert jax.config.jax_default_matmul_precision == "highest"
    q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in _qkv(1, 130, 130, h=2))

    def grads(impl):
        loss = lambda q, k, v: jnp.sum(A.attention(q, k, v, impl).astype(jnp.float32) ** 2)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))

    for got, want in zip(grads("splash_interpret")(q, k, v), grads("xla")(q, k, v)):
        np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=0.1, rtol=0.05)
    one = make_mesh("data=1", devices=topology_devices("v5e:2x2")[:1])
    sd = jax.ShapeDtypeStruct(q.shape, jnp.bfloat16, sharding=jax.sharding.NamedSharding(one, jax.P()))
    grads("splash").lower(sd, sd, sd).compile()


def test_cudnn_lowers_for_cuda_inside_shard_map():
    """cuDNN flash attention lowers for cuda on this host, per shard, with the per-device shapes."""
    q = jax.ShapeDtypeStruct((8, 256, 4, 128), jnp.float32)
    kv = jax.ShapeDtypeStruct((8, 64, 4, 128), jnp.float32)
    for spec, local in [("data=2,context=2,tensor=2", "4x128x2x128"), ("fsdp=8", "1x256x4x128")]:
        with activate(make_mesh(spec)), cuda_lowering():
            text = jax.jit(lambda q, k, v: A.attention(q, k, v, "cudnn")).trace(q, kv, kv).lower(
                lowering_platforms=("cuda",)).as_text()
        calls = kernel_calls(text)
        assert calls and not kernels_outside_shard_map(text), calls
        assert all(c.target.startswith("__cudnn$") for c in calls)
        assert f"tensor<{local}xbf16>" in text  # queries as each GPU sees them, cast to bf16 for cuDNN
    with activate(make_mesh("data=2,context=2,tensor=2")), cuda_lowering():
        bare = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(
            q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), implementation="cudnn"))
        text = bare.trace(q, kv, kv).lower(lowering_platforms=("cuda",)).as_text()
    assert kernels_outside_shard_map(text)  # without the dispatch the check fails


def test_cudnn_training_lowers_for_the_shapes_cudnn_refuses():
    """The GAN head's one-token query and odd key lengths (cuDNN's backward refuses odd lengths: padded and masked
    by length) keep cuDNN; a head dim cuDNN refuses (the tiny models' 4) runs in XLA. Without the dispatch the
    gradient's lowering raises NotImplementedError for each of these shapes."""
    for sq, skv, d, kernels in [(1, 256, 64, True), (3, 255, 64, True), (4, 256, 4, False)]:
        q = jax.ShapeDtypeStruct((2, sq, 8, d), jnp.float32)
        kv = jax.ShapeDtypeStruct((2, skv, 8, d), jnp.float32)
        grad = jax.grad(lambda q, k, v: A.attention(q, k, v, "cudnn").sum(), argnums=(0, 1, 2))
        with activate(make_mesh("data=1", devices=jax.devices()[:1])), cuda_lowering():
            text = jax.jit(grad).trace(q, kv, kv).lower(lowering_platforms=("cuda",)).as_text()
        assert bool(kernel_calls(text)) == kernels, (sq, skv, d)


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="runs cuDNN attention; needs a GPU")
def test_cudnn_on_gpu_equals_xla():
    for sq, skv in [(300, 77), (1, 300), (1, 77)]:  # odd lengths go through the padded, length-masked call
        q, k, v = _qkv(2, sq, skv)
        out = np.asarray(jax.jit(lambda q, k, v: A.attention(q, k, v, "cudnn"))(q, k, v))
        np.testing.assert_allclose(out, _xla(q, k, v), atol=2e-2)


def test_train_checks_every_phase_fits_before_its_first_step(monkeypatch):
    """``vdot train`` compiles each phase of the run before the first step (``compile_program``, as ``vdot plan``)
    and refuses one that needs more than a device has; the backend's memory query is patched (CPU says nothing,
    so there phases compile when first run) and so is the compiler (its figures are the plan tests' concern)."""
    from vdot_jax.parallel.sharding import CompileReport
    from vdot_jax.train import loop as L
    from vdot_jax.train.config import load_config

    run = L.build(load_config("configs/tiny.py"), make_mesh("data=1", devices=jax.devices()[:1]))
    compiled = []

    def fake_compile(jitted, state, batch, name, **kw):
        compiled.append(name)
        return object(), CompileReport(name, True, measured=True, argument_bytes=2**30, temp_bytes=2**30)

    monkeypatch.setattr(L, "compile_program", fake_compile)
    phases = L.Phases(run, log=lambda *a, **k: None)
    batch = {"latents": np.zeros((1, 2, 12, 5, 16, 16), np.float32)}
    monkeypatch.setattr(L, "device_memory_limit", lambda: None)
    phases.check_fit(None, batch)
    assert not compiled  # no limit known: nothing compiled ahead
    monkeypatch.setattr(L, "device_memory_limit", lambda: 3 * 2**30)
    phases.check_fit(None, batch)  # fits: every phase compiled once, kept for the steps
    assert compiled == ["phase critic_flow", "phase critic_gan", "phase generator_dmd_ot", "phase generator_gan"]
    phases.compiled.clear()
    monkeypatch.setattr(L, "device_memory_limit", lambda: 2**30)
    with pytest.raises(L.TrainingError, match="phase critic_flow needs 2.00 GiB per device but a device has 1.00"):
        phases.check_fit(None, batch)


# ----------------------------------------------------------------------------- whole programs for TPU


def _tiny_config(**model):
    from vdot_jax.train.config import load_config

    c = load_config("configs/tiny.py")
    c.model.attention = "splash"
    c.model.arch.update(num_heads=4, dim=32, **model)  # 4 heads: tensor=2 x context=2 splits them
    c.data.batch_size = 4
    return c


TPU_MESHES = ["data=2,tensor=2", "fsdp=2,context=2"]


def _denoise_compiles(topology, mesh_spec, only):
    run, plan = _plan(_tiny_config(), topology, mesh_spec, only=only)
    assert [r.name for r in plan.reports] == list(only)
    assert not plan.failures(), plan.failures()
    assert all(r.ok and r.measured and r.peak_bytes > 0 for r in plan.reports)
    for name, text in plan.texts.items():
        calls = kernel_calls(text)
        assert calls and not [c for c in calls if not c.inside_shard_map], (name, calls)


@pytest.mark.slow  # ~55 s on 2 busy cores
def test_tiny_student_denoise_compiles_for_tpu():
    """The 4-step student denoise of a tiny VACE model compiles for v5e:2x4 with splash on a mesh with fsdp,
    context (Ulysses self-attention, sequence-sharded cross-attention) and tensor > 1, every kernel inside a
    shard_map."""
    _denoise_compiles("v5e:2x4", "fsdp=2,context=2,tensor=2", ("student_denoise_4",))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_spec", TPU_MESHES)
def test_tiny_denoise_compiles_for_tpu(mesh_spec):
    """Student and CFG teacher denoise on v5e:2x2 meshes with data and tensor, or fsdp and context, > 1."""
    _denoise_compiles("v5e:2x2", mesh_spec, ("student_denoise_4", "teacher_denoise_cfg"))


def _plan(config, topology, mesh_spec, only=None, frames=5, height=32, width=32, model=None):
    from vdot_jax.commands import plan as P

    return P.plan_config(config, topology, mesh_spec, frames=frames, height=height, width=width, log=None,
                         keep_text=True, model=model, only=tuple(only or ()))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_spec", TPU_MESHES)
def test_tiny_phases_compile_for_tpu(mesh_spec):
    """All four distillation phases and the denoise programs of a tiny model compile for v5e:2x2 (minutes)."""
    run, plan = _plan(_tiny_config(), "v5e:2x2", mesh_spec)
    assert [r.name for r in plan.reports] == ["critic_flow", "critic_gan", "generator_dmd_ot", "generator_gan",
                                               "student_denoise_4", "student_denoise_batch", "teacher_denoise_cfg"]
    assert not plan.failures(), plan.failures()


@pytest.mark.slow
def test_vace_1_3b_compiles_for_an_8_chip_topology():
    """Real-size VACE-1.3B, every program, at 17x128x128 on v5e:2x4 with fsdp=8: the state (fp32 generator and
    critic with their AdamW moments, bf16 teacher) is 13.5 GiB per chip at fsdp=4, so fsdp=4,context=2 cannot fit
    a 16 GiB chip whatever the temporaries (it asked for 18.7 GiB of them); context is covered by the tiny tests."""
    from vdot_jax.train.config import load_config

    c = load_config("configs/wan1_3b_stage2_vace.py")
    # the config's teacher directory does not exist here: plan the architecture (vdot plan --model)
    run, plan = _plan(c, "v5e:2x4", "fsdp=8", frames=17, height=128, width=128, model="wan2.1-vace-1.3b")
    assert not plan.failures(), plan.failures()
    assert run.arch.dim == 1536 and run.arch.num_layers == 30


def test_tapped_scan_copies_no_weights_and_matches_the_plain_scan():
    """The GAN phases read the trunk's features at the taps: one scan over the whole stack writes them into a
    buffer. Forward and gradient compile to the plain scan's temporaries plus that buffer -- no copy of the block
    weights (cutting the scan at the taps sliced the differentiated stack: + one copy of every block) -- and the
    output equals the plain scan's. (The features' values and gradient: tests/test_wan.py, against diffusers.)"""
    from flax import nnx

    from vdot_jax.models.config import WanConfig
    from vdot_jax.models.wan import WanModel

    cfg = WanConfig(dim=64, ffn_dim=64, num_heads=2, num_layers=4, text_dim=16, freq_dim=16)
    model = WanModel(cfg, rngs=nnx.Rngs(0))
    model.set_runtime(remat="full")  # as the phases train (without remat the gradient keeps every layer anyway)
    g, s = nnx.split(model)
    r = np.random.default_rng(0)
    x = r.normal(size=(1, 16, 1, 4, 4)).astype(np.float32)
    t = np.array([500.0], np.float32)
    txt = r.normal(size=(1, 4, 16)).astype(np.float32)

    def plain(s):
        return nnx.merge(g, s)(x, t, txt)

    def tapped(s):
        return nnx.merge(g, s)(x, t, txt, taps=(1,))

    def plain_loss(s):
        return jnp.sum(plain(s) ** 2)

    def tapped_loss(s):
        out, (feature,), _ = tapped(s)
        return jnp.sum(out ** 2) + jnp.sum(feature ** 2)

    block_bytes = sum(a.nbytes for a in jax.tree.leaves(s["blocks"]))
    plain_c, tapped_c, plain_g, tapped_g = (jax.jit(f).lower(s).compile() for f in (
        plain, tapped, jax.grad(plain_loss), jax.grad(tapped_loss)))
    temp = lambda c: c.memory_analysis().temp_size_in_bytes  # noqa: E731
    assert temp(tapped_c) < temp(plain_c) + block_bytes / 4
    assert temp(tapped_g) < temp(plain_g) + block_bytes / 4
    out, feats, _ = tapped_c(s)
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain_c(s)), atol=1e-5)
    assert len(feats) == 1


@pytest.mark.slow  # two TPU compiles, ~1.5 min on 2 cores
def test_offload_policy_keeps_layer_inputs_in_host_memory_on_tpu():
    """``remat="offload"``: each scanned layer's input (the residual stream the backward restarts from) is saved
    in the host's memory instead of HBM. Compiled for one TPU chip, the device temporaries shrink by about the
    saved inputs and as much appears as host temporaries; with ``residual_dtype="bfloat16"`` the saved inputs are
    half that. (Values and gradients: tests/test_wan.py.)"""
    from flax import nnx

    from vdot_jax.models.config import WanConfig
    from vdot_jax.models.wan import WanModel
    from vdot_jax.parallel.mesh import topology_devices

    cfg = WanConfig(dim=128, ffn_dim=128, num_heads=2, num_layers=6, text_dim=16, freq_dim=16)
    model = WanModel(cfg, rngs=nnx.Rngs(0))
    g, s = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, 16, 8, 64, 64), jnp.float32)  # 8,192 tokens: the saved inputs dominate
    t, txt = jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1, 4, 16), jnp.float32)
    chip = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(topology_devices("v5e:2x2")[:1]), ("d",)),
                                     jax.sharding.PartitionSpec())

    def compiled(remat, residual_dtype="float32"):
        m = nnx.merge(g, s)
        m.set_runtime(remat=remat, attention="splash", residual_dtype=residual_dtype)
        gd, st = nnx.split(m)
        grad = jax.jit(jax.grad(lambda p, *a: jnp.mean(nnx.merge(gd, p)(*a) ** 2)), in_shardings=chip)
        return grad.lower(st, x, t, txt).compile().memory_analysis()

    full, offload = compiled("full"), compiled("offload")
    saved = cfg.num_layers * 8192 * cfg.dim * 4  # one fp32 [tokens, dim] input per layer
    assert full.host_temp_size_in_bytes == 0
    assert offload.host_temp_size_in_bytes >= saved
    assert offload.temp_size_in_bytes <= full.temp_size_in_bytes - saved / 2
    bf16 = compiled("offload", "bfloat16").host_temp_size_in_bytes
    assert saved / 2 <= bf16 < saved * 0.6, (bf16, saved)


def _entry_stack_casts(hlo: str, layers: int) -> int:
    """Instructions of the compiled program's top level (outside every loop) that make a bf16 array with a
    leading axis of ``layers``: whole weight stacks cast before the layer scan."""
    import re

    entry = hlo[hlo.index("\nENTRY"):]
    entry = entry[: entry.index("\n}\n")]
    return sum(1 for line in entry.splitlines()
               if re.search(rf"= bf16\[{layers},[\d,]*\]\S* (convert|fusion)\(", line))


@pytest.mark.slow  # two TPU compiles, ~1 min on 2 cores
def test_cast_per_layer_keeps_weight_casts_inside_the_scan():
    """``mesh.cast_per_layer``: the float32 block stacks are cast to bf16 one layer at a time inside the scan,
    not as whole-stack copies before it (what libtpu's bf16 propagation does by default: those copies held
    memory at the peak of the real-size programs, docs/scaling.md). Gradient of a 5-layer model compiled for
    one TPU chip through the project's one compile path."""
    from flax import nnx

    from vdot_jax.models.config import WanConfig
    from vdot_jax.models.wan import WanModel
    from vdot_jax.parallel.mesh import topology_devices
    from vdot_jax.parallel.sharding import compile_program, mesh_compiler_options

    cfg = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=5, text_dim=16, freq_dim=16)
    model = WanModel(cfg, rngs=nnx.Rngs(0))
    model.set_runtime(remat="full", dtype="bfloat16", attention="xla")
    g, s = nnx.split(model)
    x = jax.ShapeDtypeStruct((1, 16, 2, 16, 16), jnp.float32)
    t, txt = jax.ShapeDtypeStruct((1,), jnp.float32), jax.ShapeDtypeStruct((1, 4, 16), jnp.float32)
    mesh = jax.sharding.Mesh(np.array(topology_devices("v5e:2x2")[:1]), ("d",))
    grad = jax.jit(jax.grad(lambda p, *a: jnp.mean(nnx.merge(g, p)(*a) ** 2)),
                   in_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

    def casts(per_layer):
        options = mesh_compiler_options({"cast_per_layer": per_layer}, mesh)
        compiled, _ = compile_program(grad, s, x, t, txt, mesh=mesh, log=None, compiler_options=options)
        return _entry_stack_casts(compiled.as_text(), cfg.num_layers)

    assert casts(False) > 0  # the default hoists them (else this test shows nothing)
    assert casts(True) == 0


def test_compiler_options_only_for_tpu_and_when_asked():
    cpu = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("d",))
    assert mesh_compiler_options({"cast_per_layer": True}, cpu) is None  # the CPU compiler rejects libtpu's options
    from vdot_jax.parallel.mesh import topology_devices

    tpu = jax.sharding.Mesh(np.array(topology_devices("v5e:2x2")[:1]), ("d",))
    assert mesh_compiler_options({"cast_per_layer": False}, tpu) is None
    assert mesh_compiler_options({"cast_per_layer": True}, tpu) == {"xla_jf_bf16_propagation": False}
    assert mesh_compiler_options({"memory_space_assignment": False}, cpu) is None
    assert mesh_compiler_options({"memory_space_assignment": False}, tpu) == {"xla_msa_enable": False}
