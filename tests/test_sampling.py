"""Sampling: schedules and solvers against diffusers' schedulers (the oracle), in fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

from vdot_jax.sampling import (
    classifier_free_guidance,
    euler_flow_schedule,
    guidance_context,
    sample,
    sample_with_sigmas,
    shift_sigma,
    student_schedule,
    unipc_flow_schedule,
    warp_timesteps,
)

LATENT_SHAPE = (2, 16, 3, 4, 6)  # [B, C, F, H, W], like a (tiny) video latent


def _diffusers_scheduler(solver, shift, **unipc_kwargs):
    if solver == "unipc":
        return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                       flow_shift=shift, num_train_timesteps=1000, **unipc_kwargs)
    return FlowMatchEulerDiscreteScheduler(shift=shift)


# --------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("num_steps", [4, 50])
@pytest.mark.parametrize("shift", [1.0, 5.0, 8.0, 16.0])
@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_schedule_tables_equal_diffusers(solver, shift, num_steps):
    ref = _diffusers_scheduler(solver, shift)
    ref.set_timesteps(num_steps)
    ours = (unipc_flow_schedule if solver == "unipc" else euler_flow_schedule)(num_steps, shift)
    sigmas, timesteps = ours
    assert sigmas.shape == (num_steps + 1,) and timesteps.shape == (num_steps,)
    np.testing.assert_array_equal(sigmas, ref.sigmas.numpy())
    np.testing.assert_array_equal(timesteps, ref.timesteps.numpy().astype(np.float32))


def test_release_student_table():
    sigmas, timesteps = student_schedule()
    np.testing.assert_array_equal(timesteps, [999, 979, 941, 842])
    ref = _diffusers_scheduler("unipc", 16.0)
    ref.set_timesteps(4)
    np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(sigmas, ref.sigmas.numpy())


def test_warp_timesteps_and_shift_sigma():
    # shift 8: 1000 * 8 s / (1 + 7 s) at s = 1, .75, .5, .25
    np.testing.assert_allclose(warp_timesteps((1000, 750, 500, 250), 8.0),
                               [1000.0, 6000 / 6.25, 4000 / 4.5, 2000 / 2.75], rtol=1e-6)
    np.testing.assert_allclose(warp_timesteps((1000, 750, 500, 250), 8.0),
                               [1000.0, 960.0, 888.9, 727.3], atol=0.05)
    s = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(shift_sigma(jnp.asarray(s), 5.0)),
                               5 * s / (1 + 4 * s), rtol=1e-6)
    assert shift_sigma(1.0, 16.0) == 1.0 and shift_sigma(0.0, 16.0) == 0.0


# --------------------------------------------------------------------------- trajectories
# A nonlinear, time-dependent velocity field with per-channel offsets, written twice
# (torch for the oracle loop, jax for ours).

_A, _B = -0.7, 0.9
_C = np.linspace(-0.5, 0.5, LATENT_SHAPE[1], dtype=np.float32).reshape(1, -1, 1, 1, 1)


def _field_torch(x, t):
    return _A * x + _B * torch.sin(x) * (t.float() / 1000.0) + torch.from_numpy(_C)


def _field_jax(x, t):
    return _A * x + _B * jnp.sin(x) * (t / 1000.0)[:, None, None, None, None] + jnp.asarray(_C)


def _diffusers_trajectory(scheduler, latents, num_steps):
    scheduler.set_timesteps(num_steps)
    x = torch.from_numpy(latents)
    out = []
    for t in scheduler.timesteps:
        v = _field_torch(x, t.expand(x.shape[0]).reshape(-1, 1, 1, 1, 1))
        x = scheduler.step(v, t, x).prev_sample
        out.append(x.numpy().copy())
    return np.stack(out)


def _assert_close(ours, ref):
    ours, ref = np.asarray(ours), np.asarray(ref)
    scale = np.abs(ref).max()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("num_steps", [4, 50])
@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_trajectory_matches_diffusers(solver, num_steps):
    shift = 16.0 if num_steps == 4 else 5.0
    latents = np.random.default_rng(0).standard_normal(LATENT_SHAPE).astype(np.float32)
    ref = _diffusers_trajectory(_diffusers_scheduler(solver, shift), latents, num_steps)

    traces = []

    def model_fn(x, t):
        traces.append(x.shape)
        return _field_jax(x, t)

    run = jax.jit(lambda z: sample(model_fn, z, num_steps=num_steps, shift=shift,
                                   solver=solver, return_trajectory=True))
    final, traj = run(jnp.asarray(latents))
    assert traces == [LATENT_SHAPE]  # the step loop is one scan: the model is traced once
    assert traj.shape == (num_steps,) + LATENT_SHAPE
    for i in range(num_steps):
        _assert_close(traj[i], ref[i])
    _assert_close(final, ref[-1])


@pytest.mark.parametrize("kwargs", [dict(solver_order=1), dict(solver_order=3),
                                    dict(solver_type="bh1"), dict(disable_corrector=[1, 4])])
def test_unipc_variants_match_diffusers(kwargs):
    num_steps, shift = 8, 8.0
    latents = np.random.default_rng(1).standard_normal(LATENT_SHAPE).astype(np.float32)
    ref = _diffusers_trajectory(_diffusers_scheduler("unipc", shift, **kwargs), latents, num_steps)
    sigmas, timesteps = unipc_flow_schedule(num_steps, shift)
    final, traj = jax.jit(lambda z: sample_with_sigmas(
        _field_jax, z, sigmas, timesteps, solver="unipc",
        order=kwargs.get("solver_order", 2), solver_type=kwargs.get("solver_type", "bh2"),
        disable_corrector=kwargs.get("disable_corrector", ()), return_trajectory=True,
    ))(jnp.asarray(latents))
    if kwargs.get("solver_type") == "bh1":
        # diffusers' bh1 ends in NaN (B(h) = -inf times a zero residual at sigma = 0); we
        # take the limit, which is the x0 prediction, as bh2 does.
        assert np.isnan(ref[-1]).all() and np.isfinite(np.asarray(final)).all()
        ref = ref[:-1]
    for i in range(len(ref)):
        _assert_close(traj[i], ref[i])


@pytest.mark.parametrize("solver", ["unipc", "euler"])
def test_exact_on_straight_paths(solver):
    # For data that is a single point X0, the exact velocity is v = (x - X0) / s and the
    # flow path x_s = (1 - s) X0 + s e is a straight line; both solvers follow it exactly
    # (UniPC's final first-order step returns the x0 prediction, here X0 itself).
    rng = np.random.default_rng(2)
    noise = rng.standard_normal(LATENT_SHAPE).astype(np.float32)
    x0 = rng.standard_normal(LATENT_SHAPE).astype(np.float32)
    sigmas, _ = unipc_flow_schedule(6, 8.0)
    timesteps = sigmas[:-1] * 1000.0  # untruncated, so the model can recover s = t / 1000

    def model_fn(x, t):
        return (x - x0) / (t / 1000.0)[:, None, None, None, None]

    final, traj = jax.jit(lambda z: sample_with_sigmas(
        model_fn, z, sigmas, timesteps, solver=solver, return_trajectory=True))(jnp.asarray(noise))
    for i, s in enumerate(sigmas[1:]):
        _assert_close(traj[i], (1 - s) * x0 + s * noise)
    _assert_close(final, x0)


# --------------------------------------------------------------------------- guidance


def _ctx_model(ctx, calls):
    """v depends on the bound per-sample context scalar, so cond and uncond differ."""

    def model_fn(x, t):
        calls.append(x.shape[0])
        return x * ctx[:, None, None, None, None] + (t / 1000.0)[:, None, None, None, None]

    return model_fn


def test_cfg_single_doubled_batch():
    b, w = LATENT_SHAPE[0], 5.0
    cond, uncond = jnp.array([2.0, 3.0]), jnp.array([-1.0, 0.5])
    x = jnp.asarray(np.random.default_rng(3).standard_normal(LATENT_SHAPE).astype(np.float32))
    t = jnp.array([999.0, 999.0])

    calls = []
    ctx = guidance_context(cond, uncond, w)
    assert ctx.shape == (2 * b,)
    out = classifier_free_guidance(_ctx_model(ctx, calls), w)(x, t)
    assert calls == [2 * b]  # one model call, at batch 2B

    v_cond = _ctx_model(cond, [])(x, t)
    v_uncond = _ctx_model(uncond, [])(x, t)
    np.testing.assert_allclose(np.asarray(out), np.asarray(v_uncond + w * (v_cond - v_uncond)),
                               rtol=1e-6, atol=1e-6)

    # Inside a jitted sampler the doubled model is still traced once, at batch 2B.
    calls.clear()
    guided = classifier_free_guidance(_ctx_model(ctx, calls), w)
    jax.jit(lambda z: sample(guided, z, num_steps=3, shift=5.0))(x)
    assert calls == [2 * b]


def test_cfg_scale_one_is_single_cond_pass():
    b = LATENT_SHAPE[0]
    cond, uncond = jnp.array([2.0, 3.0]), jnp.array([-1.0, 0.5])
    x = jnp.ones(LATENT_SHAPE)
    t = jnp.array([500.0, 500.0])
    ctx = guidance_context(cond, uncond, 1.0)
    assert ctx is cond
    calls = []
    out = classifier_free_guidance(_ctx_model(ctx, calls), 1.0)(x, t)
    assert calls == [b]
    np.testing.assert_array_equal(np.asarray(out), np.asarray(_ctx_model(cond, [])(x, t)))


def test_guidance_context_pytree():
    cond = {"emb": jnp.ones((2, 4, 3)), "mask": jnp.ones((2, 4), bool)}
    uncond = {"emb": jnp.zeros((2, 4, 3)), "mask": jnp.zeros((2, 4), bool)}
    ctx = guidance_context(cond, uncond, 6.0)
    np.testing.assert_array_equal(np.asarray(ctx["emb"][:, 0, 0]), [1, 1, 0, 0])
    np.testing.assert_array_equal(np.asarray(ctx["mask"][:, 0]), [True, True, False, False])
