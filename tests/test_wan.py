"""The Wan/VACE DiT against diffusers, its checkpoint conversion, and its run-time options."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from oracles import TINY_T2V, TINY_VACE, diffusers_transformer, run_diffusers, state_numpy, stream_stored_in_bf16
from vdot_jax.models.attention import attention
from vdot_jax.models.config import PRESETS, WanConfig
from vdot_jax.weights.checkpoint_io import save_safetensors
from vdot_jax.weights.convert import load_transformer


def inputs(cfg: WanConfig, shape, batch=2, text_len=7, seed=0):
    r = np.random.default_rng(seed)
    f, h, w = shape
    x = r.normal(size=(batch, cfg.in_channels, f, h, w)).astype(np.float32)
    t = np.array([999.0, 20.0, 500.0][:batch], np.float32)
    text = r.normal(size=(batch, text_len, cfg.text_dim)).astype(np.float32)
    ctx = r.normal(size=(batch, cfg.vace_in_channels, f, h, w)).astype(np.float32) if cfg.is_vace else None
    return x, t, text, ctx


def _pair(cfg, tmp_path_factory):
    ref = diffusers_transformer(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "diffusion_pytorch_model.safetensors"
    save_safetensors(path, state_numpy(ref))
    return cfg, ref, load_transformer(path, config=cfg)


@pytest.fixture(scope="module")
def vace_pair(tmp_path_factory):
    return _pair(TINY_VACE, tmp_path_factory)


@pytest.fixture(scope="module")
def t2v_pair(tmp_path_factory):
    return _pair(TINY_T2V, tmp_path_factory)


@pytest.fixture(params=["t2v", "vace"])
def pair(request):
    return request.getfixturevalue(f"{request.param}_pair")


# Odd frame counts and non-square latents: token grids 3x3x5 and 5x2x4.
@pytest.mark.parametrize("shape", [(3, 6, 10), (5, 4, 8)])
def test_forward_equals_diffusers(pair, shape):
    cfg, ref, model = pair
    x, t, text, ctx = inputs(cfg, shape)
    scale = [1.0, 0.5, 2.0] if cfg.is_vace else None
    expected = run_diffusers(ref, x, t, text, ctx, scale)
    out = np.asarray(jax.jit(lambda *a: model(*a))(x, t, text, ctx, np.asarray(scale or 1.0, np.float32)))
    assert np.abs(expected).mean() > 0.1  # outputs of order one, so the bound below is meaningful
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=0)


def test_vace_scale_zero_equals_no_hints(vace_pair):
    cfg, ref, model = vace_pair
    x, t, text, ctx = inputs(cfg, (3, 6, 10))
    off = np.asarray(model(x, t, text, ctx, 0.0))
    plain = np.asarray(model(x, t, text))  # no context: the VACE branch is skipped
    np.testing.assert_allclose(off, plain, atol=1e-6)
    on = np.asarray(model(x, t, text, ctx, 1.0))
    assert np.abs(on - plain).max() > 1e-3


def test_fewer_context_frames_are_zero_padded(vace_pair):
    """The reference pads missing context tokens with zeros after patch embedding; so must we."""
    cfg, ref, model = vace_pair
    x, t, text, ctx = inputs(cfg, (3, 6, 10))
    short = ctx[:, :, :2]
    expected = run_diffusers(ref, x, t, text, short)
    np.testing.assert_allclose(np.asarray(model(x, t, text, short)), expected, atol=1e-4)


def test_tap_features_and_their_gradient_equal_diffusers(pair):
    """The GAN head's features: the residual stream after each tapped block, hint included -- what diffusers'
    model holds when the next block (or the output norm) starts. Values, and the gradient w.r.t. the latents of a
    loss that reads the output and every feature (the backward through the buffer the scan writes them into)."""
    cfg, ref, model = pair
    x, t, text, ctx = inputs(cfg, (3, 4, 4), batch=1)
    taps = (0, 2, cfg.num_layers - 1)
    seen = {}

    def grab(k):
        return lambda module, args: seen.__setitem__(k, args[0])

    hooks = [ref.blocks[k + 1].register_forward_pre_hook(grab(k)) for k in taps[:-1]]
    hooks.append(ref.norm_out.register_forward_pre_hook(grab(taps[-1])))
    xt = torch.tensor(x, requires_grad=True)
    kw = {"control_hidden_states": torch.tensor(ctx)} if cfg.is_vace else {}
    try:
        out = ref(xt, torch.tensor(t), torch.tensor(text), return_dict=False, **kw)[0]
    finally:
        for h in hooks:
            h.remove()
    (out.square().sum() + sum(seen[k].square().sum() for k in taps)).backward()

    def loss(x):
        out, feats, _ = model(x, t, text, ctx, taps=taps)
        return jnp.sum(out ** 2) + sum(jnp.sum(f ** 2) for f in feats), feats

    (_, feats), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
    for k, f in zip(taps, feats):
        np.testing.assert_allclose(np.asarray(f), seen[k].detach().numpy(), atol=1e-4, rtol=0)
    _, twice, _ = model(x, t, text, ctx, taps=(taps[1], taps[0], taps[1]))  # sorted; a repeated tap reads twice
    for k, f in zip((taps[0], taps[1], taps[1]), twice):
        np.testing.assert_allclose(np.asarray(f), seen[k].detach().numpy(), atol=1e-4, rtol=0)
    expected = xt.grad.numpy()
    assert np.abs(expected).mean() > 0.01
    np.testing.assert_allclose(np.asarray(grad), expected, atol=2e-4 * np.abs(expected).max(), rtol=0)


def test_main_and_vace_blocks_are_scanned(pair):
    """Layers run as lax.scan: two scans for VACE (context then main), one for T2V, whatever the depth."""
    cfg, _, model = pair
    x, t, text, ctx = inputs(cfg, (3, 6, 10), batch=1)
    jaxpr = jax.make_jaxpr(lambda *a: model(*a))(x, t, text, ctx)
    scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    assert len(scans) == (2 if cfg.is_vace else 1)
    assert scans[-1].params["length"] == cfg.num_layers


def test_bf16_compute_close_to_fp32(pair):
    """bf16 matmuls/attention with fp32 norms and residuals: relative RMS error below 2%."""
    cfg, _, model = pair
    x, t, text, ctx = inputs(cfg, (3, 6, 10))
    ref = np.asarray(model(x, t, text, ctx))
    model.set_runtime(dtype="bfloat16")
    try:
        out = np.asarray(model(x, t, text, ctx))
    finally:
        model.set_runtime(dtype="float32")
    rel = np.sqrt(np.mean((out - ref) ** 2) / np.mean(ref**2))
    assert rel < 0.02, rel
    assert rel > 1e-5  # it really ran in bf16


def test_bf16_residual_stream_equals_diffusers_rounded_between_blocks(pair):
    """``residual_dtype="bfloat16"`` (the release's stored precision) against diffusers with its streams rounded to
    bf16 at each block's input: equal up to float32 noise (2e-7 here), the float32 stream 3e-3 away (so a stream
    kept in float32 somewhere, or rounded inside a block too, fails)."""
    cfg, ref, model = pair
    x, t, text, ctx = inputs(cfg, (3, 6, 10))
    scale = [1.0, 0.5, 2.0] if cfg.is_vace else None
    expected = run_diffusers(stream_stored_in_bf16(ref), x, t, text, ctx, scale)
    run = lambda: np.asarray(model(x, t, text, ctx, np.asarray(scale or 1.0, np.float32)))  # noqa: E731
    plain = run()
    model.set_runtime(residual_dtype="bfloat16")
    try:
        out = run()
    finally:
        model.set_runtime(residual_dtype="float32")
    rel = lambda a: float(np.sqrt(np.mean((a - expected) ** 2) / np.mean(expected**2)))  # noqa: E731
    assert rel(out) < 1e-5 < 1e-3 < rel(plain), (rel(out), rel(plain))


@pytest.mark.parametrize("remat", ["full", "dots", "offload"])
def test_remat_keeps_values_and_gradients(pair, remat):
    cfg, _, model = pair
    x, t, text, ctx = inputs(cfg, (3, 4, 4), batch=1)
    from flax import nnx

    def loss(m):
        return jnp.mean(m(x, t, text, ctx) ** 2)

    g0 = nnx.grad(loss)(model)
    model.set_runtime(remat=remat)
    try:
        g1 = nnx.grad(loss)(model)
    finally:
        model.set_runtime(remat="none")
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_splash_attention_equals_xla_in_interpret_mode():
    r = np.random.default_rng(1)
    q = jnp.asarray(r.normal(size=(2, 150, 2, 16)), jnp.float32)  # 150 tokens: padding to 256 is masked
    k = jnp.asarray(r.normal(size=(2, 40, 2, 16)), jnp.float32)
    v = jnp.asarray(r.normal(size=(2, 40, 2, 16)), jnp.float32)
    np.testing.assert_allclose(attention(q, k, v, "splash_interpret"), attention(q, k, v, "xla"), atol=2e-6)


def test_model_runs_with_splash_attention(pair):
    cfg, _, model = pair
    x, t, text, ctx = inputs(cfg, (3, 6, 10), batch=1)
    ref = np.asarray(model(x, t, text, ctx))
    model.set_runtime(attention="splash_interpret")
    try:
        out = np.asarray(model(x, t, text, ctx))
    finally:
        model.set_runtime(attention="xla")
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_bad_inputs_and_options_are_explained(pair):
    cfg, _, model = pair
    x, t, text, ctx = inputs(cfg, (3, 6, 10), batch=1)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        model(x[..., :5], t, text)
    with pytest.raises(ValueError, match="unknown attention implementation"):
        model.set_runtime(attention="flash9")
        model(x, t, text)
    model.set_runtime(attention="xla")
    if cfg.is_vace:
        with pytest.raises(ValueError, match="vace_context of shape"):
            model(x, t, text, ctx[..., :4])
    else:
        with pytest.raises(ValueError, match="without VACE blocks"):
            model(x, t, text, np.zeros((1, 96, 3, 6, 10), np.float32))


def test_presets_match_method():
    p = PRESETS
    assert p["wan2.1-vace-1.3b"].vace_layers == tuple(range(0, 30, 2))
    assert p["wan2.1-vace-14b"].vace_layers == (0, 5, 10, 15, 20, 25, 30, 35)
    assert (p["wan2.1-t2v-14b"].dim, p["wan2.1-t2v-14b"].num_heads, p["wan2.1-t2v-14b"].head_dim) == (5120, 40, 128)
    from vdot_jax.models.rope import split_dims

    assert split_dims(128) == (44, 42, 42)


def test_config_rejects_inconsistent_vace_layers():
    with pytest.raises(ValueError, match="start at 0"):
        dataclasses.replace(TINY_VACE, vace_layers=(1, 3))
    with pytest.raises(ValueError, match="strictly increasing"):
        dataclasses.replace(TINY_VACE, vace_layers=(0, 3, 3))


def test_rope_matches_diffusers_for_any_head_size():
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    from vdot_jax.models.rope import rope_angles

    for head_dim in (16, 20, 34, 128):
        rope = WanRotaryPosEmbed(head_dim, (1, 2, 2), 64)
        cos, sin = rope(torch.zeros(1, 1, 3, 10, 6))  # grid 3x5x3
        a = rope_angles((3, 5, 3), head_dim)
        np.testing.assert_allclose(np.cos(a), cos[0, :, 0, 0::2].double().numpy(), atol=1e-6)
        np.testing.assert_allclose(np.sin(a), sin[0, :, 0, 1::2].double().numpy(), atol=1e-6)
