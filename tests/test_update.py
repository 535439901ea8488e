"""The one update step's optimizer: clip by global norm + AdamW streamed over the stacked layer axis equals
optax's chain applied to the whole tree at once (the oracle), over several steps, with the moments on the device
or in host memory, and a non-finite gradient leaves everything unchanged."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdot_jax.train.update import _streamed_update, clipped_adamw, init_in_place


def tree(seed):
    """A parameter-like tree: two layer stacks (8 and 3 layers) beside unstacked leaves, as the Wan models."""
    r = np.random.default_rng(seed)
    n = lambda *s: jnp.asarray(r.normal(size=s), jnp.float32)  # noqa: E731
    return {"blocks": {"attn": {"kernel": n(8, 4, 6), "bias": n(8, 6)}, "ffn": {"kernel": n(8, 6, 5)}},
            "vace_blocks": {"proj": {"kernel": n(3, 4, 4)}},
            "head": {"kernel": n(4, 2), "scale": n(2)}}


def oracle(tx, params, opt, grads):
    updates, opt = tx.chain.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt


@pytest.mark.parametrize("clip_norm", [1e3, 0.5])  # clip off, clip on (grad norm ~ 10)
def test_streamed_update_equals_optax_chain_over_several_steps(clip_norm):
    """Three AdamW steps with a learning-rate schedule (bias correction and schedule both read the count): every
    parameter and moment equal to optax's. A streamed update that skipped a layer, mixed two layers, clipped per
    layer or let the count advance per layer would differ (each is a different number here)."""
    tx = clipped_adamw(lambda count: 1e-2 * (count + 1), clip_norm, 0.9, 0.99, 0.1)
    params = want = tree(0)
    opt = want_opt = tx.init(params)
    step = jax.jit(lambda p, o, g: _streamed_update(tx, g, o, p, jnp.bool_(True), optax.global_norm(g), False))
    for s in range(3):
        grads = jax.tree.map(lambda a: 3 * a, tree(s + 1))
        params, opt = step(params, opt, grads)
        want, want_opt = oracle(tx, want, want_opt, grads)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path((params, opt))[0], jax.tree.leaves((want, want_opt))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    assert int(opt[1][0].count) == 3


def test_bfloat16_moments_are_float32_adamw_rounded_when_stored():
    """``optim.moment_dtype=bfloat16``: mu and nu are bf16 in the state, and three streamed steps equal optax's
    float32 chain whose moments are rounded to bf16 after each step (the oracle of "computed in float32, rounded
    on store"): parameters to rtol 1e-6, moments exactly. Using the rounded moments in the step that made them
    (or computing in bf16) moves the parameters by ~lr x 2^-9, 1e3 times the tolerance. Against optax's
    ``adamw(mu_dtype=bfloat16)`` (bf16 mu only, nu float32, b1 x mu rounded in bf16): mu within 2^-7 of the
    leaf's largest value, parameters within 1 % of the total step lr x 3."""
    lr = 1e-2
    tx = clipped_adamw(lr, 1e3, 0.9, 0.99, 0.1, moment_dtype="bfloat16")
    params = want = tree(0)
    opt = tx.init(params)
    mu_nu = lambda o: (o[1][0].mu, o[1][0].nu)  # noqa: E731
    assert {a.dtype for a in jax.tree.leaves(mu_nu(opt))} == {jnp.dtype(jnp.bfloat16)}
    want_opt = tx.chain.init(params)
    ref = optax.chain(optax.clip_by_global_norm(1e3), optax.adamw(lr, 0.9, 0.99, weight_decay=0.1,
                                                                   mu_dtype=jnp.bfloat16))
    ref_p, ref_opt = params, ref.init(params)
    rnd = lambda t: jax.tree.map(  # noqa: E731
        lambda a: a.astype(jnp.bfloat16).astype(a.dtype) if a.dtype == jnp.float32 else a, t)
    step = jax.jit(lambda p, o, g: _streamed_update(tx, g, o, p, jnp.bool_(True), optax.global_norm(g), False))
    for s in range(3):
        grads = jax.tree.map(lambda a: 3 * a, tree(s + 1))
        params, opt = step(params, opt, grads)
        want, want_opt = oracle(tx, want, want_opt, grads)
        want_opt = rnd(want_opt)
        updates, ref_opt = ref.update(grads, ref_opt, ref_p)
        ref_p = optax.apply_updates(ref_p, updates)
    assert {a.dtype for a in jax.tree.leaves(mu_nu(opt))} == {jnp.dtype(jnp.bfloat16)}
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))
    for a, b in zip(jax.tree.leaves(mu_nu(opt)), jax.tree.leaves(mu_nu(want_opt))):
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b))
    for a, b in zip(jax.tree.leaves(opt[1][0].mu), jax.tree.leaves(ref_opt[1][0].mu)):
        b = np.asarray(b, np.float32)  # a few bf16 roundings of terms of the leaf's magnitude apart
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=0, atol=2**-7 * np.abs(b).max())
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_p)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0.01 * 3 * lr)
    whole = tx.update(tree(1), tx.init(tree(0)), tree(0))[1]  # the whole-tree update stores them rounded too
    assert {a.dtype for a in jax.tree.leaves(mu_nu(whole))} == {jnp.dtype(jnp.bfloat16)}


def test_non_finite_gradient_changes_nothing():
    tx = clipped_adamw(1e-2, 1.0, 0.9, 0.99, 0.1)
    params, grads = tree(0), tree(1)
    opt = tx.init(params)
    new_p, new_o = _streamed_update(tx, grads, opt, params, jnp.bool_(False), optax.global_norm(grads), False)
    for a, b in zip(jax.tree.leaves((new_p, new_o)), jax.tree.leaves((params, opt))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_micro_batch_gradients_in_the_compute_dtype_equal_float32_ones():
    """``grad_dtype=bfloat16`` (mesh.grad_dtype=compute) on a bf16-compute VACE model, one device: the layer
    kernels' copy is bf16 and everything else (norms, modulation, embeddings) stays float32; the loss and the
    accumulated gradient over 3 micro-batches equal those of the float32 gradient (a matmul's kernel gradient
    is bf16 already before its conversion). Casting a norm scale (the forward changes) or accumulating in bf16
    would break the equality."""
    from flax import nnx
    from oracles import TINY_TRAIN

    from vdot_jax.models.wan import WanModel
    from vdot_jax.train.update import accumulate_gradients, compute_copy

    model = WanModel(TINY_TRAIN, rngs=nnx.Rngs(0))
    model.set_runtime(dtype="bfloat16")
    graphdef, params = nnx.split(model)
    params = jax.tree.map(lambda a: a + 0.02, params)  # no zero-initialised leaf left
    r = np.random.default_rng(0)
    c = TINY_TRAIN
    batch = {"x": jnp.asarray(r.normal(size=(3, 1, c.in_channels, 2, 4, 4)), jnp.float32),
             "text": jnp.asarray(r.normal(size=(3, 1, 5, c.text_dim)), jnp.float32),
             "ctx": jnp.asarray(r.normal(size=(3, 1, c.vace_in_channels, 2, 4, 4)), jnp.float32)}

    def loss_fn(p, b, k):
        out = nnx.merge(graphdef, p)(b["x"], jnp.full((1,), 500.0), b["text"], b["ctx"])
        return jnp.mean(jnp.square(out.astype(jnp.float32) - 0.3)), {}

    copy = compute_copy(params, jnp.bfloat16)
    dtypes = {jax.tree_util.keystr(p): a.dtype for p, a in jax.tree_util.tree_flatten_with_path(copy)[0]}
    low = {k for k, d in dtypes.items() if d == jnp.bfloat16}
    assert low and all("blocks" in k and "kernel" in k for k in low), low
    assert any("blocks" in k and "kernel" not in k for k in dtypes.keys() - low)  # norms, biases stay float32

    run = jax.jit(lambda p, b, d: accumulate_gradients(loss_fn, p, b, jax.random.key(0), d), static_argnums=2)
    loss32, _, g32 = run(params, batch, None)
    loss16, _, g16 = run(params, batch, jnp.bfloat16)
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(g16)[0], jax.tree.leaves(g32)):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))


def test_optimizer_state_is_created_in_its_memory():
    """``init_in_place`` (the trainers' init_state with the run's shardings): the AdamW moments are born in
    pinned host memory when their sharding says so -- never on the device first -- and equal optax's init."""
    from jax.sharding import SingleDeviceSharding

    tx = clipped_adamw(1e-2, 1.0, 0.9, 0.99, 0.1)
    params = tree(0)
    host = SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
    shardings = jax.tree.map(lambda _: host, jax.eval_shape(tx.init, params))
    opt = init_in_place(tx.init, params, shardings)
    assert {a.sharding.memory_kind for a in jax.tree.leaves(opt)} == {"pinned_host"}
    for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(tx.init(params))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prepare_draws_each_micro_batch_with_the_key_its_loss_gets():
    """``prepare`` runs before the gradient loop, yet a loss reading what it drew equals a loss drawing it itself:
    same loss, metrics and gradient over 3 micro-batches (a prepare given another micro-batch's key, or the
    batch unsplit, fails it)."""
    from vdot_jax.train.update import accumulate_gradients

    r = np.random.default_rng(0)
    w = {"w": jnp.asarray(r.normal(size=(4, 4)), jnp.float32)}
    frozen = jnp.asarray(r.normal(size=(4, 4)), jnp.float32)
    batch = {"x": jnp.asarray(r.normal(size=(3, 2, 4)), jnp.float32)}
    draw = lambda b, k: jnp.tanh((b["x"] + jax.random.normal(k, b["x"].shape)) @ frozen)  # noqa: E731

    def loss(p, x, k):
        v = jnp.mean((x @ p["w"] - jax.random.normal(jax.random.fold_in(k, 1), x.shape)) ** 2)
        return v, {"v": v}

    want = accumulate_gradients(lambda p, b, k: loss(p, draw(b, k), k), w, batch, jax.random.key(3))
    got = accumulate_gradients(lambda p, b, k: loss(p, b["drawn"], k), w, batch, jax.random.key(3),
                               prepare=lambda b, k: {**b, "drawn": draw(b, k)})
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-6)
