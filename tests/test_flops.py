"""FLOPs of a step counted from the traced program (``parallel.flops``), checked against closed forms: XLA's cost
model counts each loop body once, and a counter that did the same would fail every test here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vdot_jax.parallel.flops import matmul_flops

D = 8


def _mm(n=4, d=D):
    return 2.0 * n * d * d  # one [n, d] @ [d, d]


def _scan(ws, x, remat=False):
    def body(h, w):
        return jnp.tanh(h @ w), None

    return jax.lax.scan(jax.checkpoint(body) if remat else body, x, ws)[0].sum()


def test_scan_is_counted_once_per_iteration():
    ws, x = jnp.ones((10, D, D)), jnp.ones((4, D))
    assert matmul_flops(jax.jit(_scan).trace(ws, x).jaxpr).global_ == 10 * _mm()


def test_gradient_counts_the_recomputation_and_the_backward():
    ws, x = jnp.ones((10, D, D)), jnp.ones((4, D))
    grad = lambda remat: jax.jit(jax.grad(lambda w, x: _scan(w, x, remat))).trace(ws, x).jaxpr  # noqa: E731
    # forward + two backward matmuls (input and weight cotangents); remat adds the forward again
    assert matmul_flops(grad(False)).global_ == 3 * 10 * _mm()
    assert matmul_flops(grad(True)).global_ == 4 * 10 * _mm()


def test_while_loops_count_at_the_given_trip_count_and_cond_at_its_dearest_branch():
    def loop(x, n):
        return jax.lax.fori_loop(0, n, lambda i, h: h @ h, x)  # n traced: a while loop

    jaxpr = jax.jit(loop).trace(jnp.ones((D, D)), 3).jaxpr
    assert matmul_flops(jaxpr, while_trips=1.5).global_ == 1.5 * _mm(D)
    branchy = jax.jit(lambda p, x: jax.lax.cond(p, lambda a: a @ a @ a, lambda a: a, x)).trace(True, jnp.ones((D, D)))
    assert matmul_flops(branchy.jaxpr).global_ == 2 * _mm(D)


def test_shard_map_bodies_are_per_device_and_the_rest_is_shared():
    mesh = jax.make_mesh((1,), ("d",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = jax.ShapeDtypeStruct((8, D), jnp.float32, sharding=NamedSharding(mesh, P("d")))
    w = jax.ShapeDtypeStruct((D, D), jnp.float32, sharding=NamedSharding(mesh, P()))

    def f(x, w):
        y = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(P("d"), P()), out_specs=P("d"))(x, w)
        return y @ w

    counted = matmul_flops(jax.jit(f).trace(x, w).jaxpr)
    assert (counted.local, counted.global_) == (_mm(8), _mm(8))
    # on 4 devices the shared matmul splits 4 ways, the per-device body does not
    assert counted.per_device(4) == _mm(8) / 4 + _mm(8)


def test_convolution():
    c, k = jnp.ones((2, 3, 9, 9)), jnp.ones((5, 3, 3, 3))
    jaxpr = jax.jit(lambda a, b: jax.lax.conv(a, b, (1, 1), "VALID")).trace(c, k).jaxpr
    assert matmul_flops(jaxpr).global_ == 2 * (2 * 5 * 7 * 7) * (3 * 3 * 3)


@pytest.fixture(scope="module")
def tiny_run():
    from vdot_jax.parallel.mesh import make_mesh
    from vdot_jax.train.config import load_config
    from vdot_jax.train.loop import build

    c = load_config("configs/tiny.py")
    c.model.attention = "xla"
    return build(c, make_mesh("data=1", None, jax.devices()[:1]))


def test_denoise_programs_are_steps_times_one_forward(tiny_run):
    """The 4-step student is 4 forwards, the 50-step CFG teacher 50 forwards of a doubled batch; one forward
    holds at least the matmuls of the closed form every benchmark uses (bench/dit_forward.py), within 10 %
    (embeddings, VACE projections and the head come on top)."""
    from vdot_jax.train.plan import latent_grid, step_flops

    run = tiny_run
    counts = step_flops(run, 5, 32, 32, only=("student_denoise_4", "teacher_denoise_cfg"))
    a = run.arch
    f, h, w = latent_grid(run.config, 5, 32, 32)
    text_len = int(run.config.data.toy.text_len)
    args = (jnp.zeros((1, a.in_channels, f, h, w)), jnp.full((1,), 500.0), jnp.zeros((1, text_len, a.text_dim)),
            jnp.zeros((1, a.vace_in_channels, f, h, w)))
    gdef = run.trainer.gen_def
    forward = jax.jit(lambda p, *x: nnx.merge(gdef, p)(*x)).trace(run.abstract_state.generator, *args).jaxpr
    one = matmul_flops(forward).global_
    assert counts["student_denoise_4"] == pytest.approx(4 * one)
    assert counts["teacher_denoise_cfg"] == pytest.approx(50 * 2 * one)

    n = (f // a.patch_size[0]) * (h // a.patch_size[1]) * (w // a.patch_size[2])
    d, blocks = a.dim, a.num_layers + len(a.vace_layers)
    closed = blocks * (2 * n * (6 * d * d + 2 * d * a.ffn_dim) + 4 * text_len * d * d + 4 * n * n * d
                       + 4 * n * text_len * d)
    assert closed <= one <= 1.1 * closed, (one, closed)
    assert np.isfinite(one)
