"""VDOT losses, timesteps, rollout, GAN head, and a tiny run of all four training phases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from vdot_jax.distill import losses
from vdot_jax.distill.config import distill_config
from vdot_jax.distill.critic import critic_from_teacher
from vdot_jax.distill.steps import PHASES, Distiller, phases_for
from vdot_jax.distill.timesteps import (RolloutSchedule, add_noise, consistent_schedule, release_schedule, rollout,
                                        sample_gan_timesteps, sample_loss_timesteps, student_schedule)
from vdot_jax.models.config import WanConfig
from vdot_jax.models.discriminator import GanHead, default_taps
from vdot_jax.models.wan import WanModel


def test_surrogate_loss_gradient_is_the_direction():
    r = np.random.default_rng(0)
    x, g = (jnp.asarray(r.normal(size=(2, 4, 3, 5, 6)), jnp.float32) for _ in range(2))
    np.testing.assert_allclose(jax.grad(lambda a: losses.surrogate_loss(a, g, "sum"))(x), g, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda a: losses.surrogate_loss(a, g, "mean"))(x), g / g.size, rtol=1e-6)
    assert float(losses.surrogate_loss(x, g, "sum")) == pytest.approx(0.5 * float(jnp.sum(g**2)), rel=1e-6)


def test_dmd_loss_gradient_equals_stated_direction_and_reduction():
    """jax.grad of the DMD surrogate w.r.t. x^ is (x0_fake - x0_real) * t/1000 / numel (release)."""
    r = np.random.default_rng(1)
    x_hat, fake, real = (jnp.asarray(r.normal(size=(2, 3, 2, 4, 4)), jnp.float32) for _ in range(3))
    t = jnp.array([250.0, 900.0])
    grad = jax.grad(lambda x: losses.surrogate_loss(x, losses.dmd_direction(fake, real, x, t), "mean"))(x_hat)
    expected = (fake - real) * (t / 1000.0)[:, None, None, None, None] / x_hat.size
    np.testing.assert_allclose(grad, expected, rtol=1e-5)
    dmd = losses.dmd_direction(fake, real, x_hat, t, "dmd")
    scale = np.abs(np.asarray(x_hat - real)).reshape(2, -1).mean(1)[:, None, None, None, None]
    np.testing.assert_allclose(dmd, (fake - real) / scale, rtol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        losses.dmd_direction(fake, real, x_hat, t, "other")


def test_gan_losses_are_relativistic_softplus():
    d_fake, d_real = jnp.array([0.5, -1.0]), jnp.array([1.5, 2.0])
    sp = lambda z: np.log1p(np.exp(z))  # noqa: E731
    assert float(losses.gan_generator_loss(d_fake, d_real)) == pytest.approx(0.1 * np.mean(sp(-(np.array([0.5, -1]) - [1.5, 2]))))
    assert float(losses.gan_discriminator_loss(d_real, d_fake)) == pytest.approx(0.1 * np.mean(sp(-(np.array([1.5, 2]) - [0.5, -1]))))


def test_schedules():
    rel = release_schedule()
    np.testing.assert_allclose(rel.told, [1000.0, 960.0, 888.889, 727.273], atol=1e-3)
    np.testing.assert_allclose(rel.sigmas, [1.0, 0.97962, 0.94129, 0.84264], atol=1e-4)
    con = consistent_schedule()
    np.testing.assert_allclose(con.told, [999, 979, 941, 842])
    np.testing.assert_allclose(con.sigmas, rel.sigmas)
    # the config's student_shift moves the consistent schedule (the demo's 5x32x32 clips use shift 3)
    low = student_schedule("consistent", 3.0)
    np.testing.assert_allclose(low.told, [999, 900, 750, 500])  # t = 3s / (1 + 2s), s = 1, .75, .5, .25
    np.testing.assert_allclose(low.sigmas, [1.0, 0.9, 0.75, 0.5], atol=2e-3)
    assert student_schedule("release", 3.0) == rel
    with pytest.raises(ValueError, match="unknown rollout schedule 'fast'"):
        student_schedule("fast", 16.0)


def test_timestep_draws_follow_the_release_formula():
    key = jax.random.key(3)
    u = np.asarray(jax.random.uniform(key, (4096,), jnp.float32, 20.0, 980.0), np.float64) / 1000
    expected = np.clip(1000 * 5 * u / (1 + 4 * u), 20, 980)
    np.testing.assert_allclose(sample_loss_timesteps(key, 4096), expected, rtol=1e-5)
    g = np.asarray(sample_gan_timesteps(key, 4096))
    assert g.min() >= 20 and g.max() <= 980 and np.median(g) > 900  # shift 12 pushes mass to high noise


def test_rollout_runs_no_grad_steps_then_the_exit_step_with_gradient():
    sched = RolloutSchedule(told=(1000.0, 900.0, 600.0), sigmas=(1.0, 0.8, 0.5))
    noise = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)
    apply = lambda p, x, t: p * x + t[:, None] / 1000.0  # noqa: E731  -- a velocity linear in x
    key = jax.random.key(5)
    keys = jax.random.split(key, 3)
    a = jnp.float32(0.3)
    for k in range(3):
        x = noise
        for i in range(k):
            t = jnp.full((2,), sched.told[i])
            x0 = x - t[:, None] / 1000 * apply(a, x, t)
            x = add_noise(x0, jax.random.normal(keys[i], x.shape), jnp.full((2,), 1000 * sched.sigmas[i + 1]))
        s = sched.told[k] / 1000
        expected = x - s * apply(a, x, jnp.full((2,), sched.told[k]))
        got = rollout(apply, a, noise, jnp.int32(k), sched, key)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        # gradient only through the exit step: d x^/da = -s * x_k, with x_k held fixed
        grad = jax.grad(lambda p: jnp.sum(rollout(apply, p, noise, jnp.int32(k), sched, key)))(a)
        np.testing.assert_allclose(grad, -s * jnp.sum(x), rtol=1e-4)


def test_phase_alternation():
    seq = [phases_for(s, ttur=5) for s in range(12)]
    assert seq[0] == ("critic_flow", "generator_dmd_ot") and seq[1] == ("critic_gan",)
    assert seq[5] == ("critic_gan", "generator_gan") and seq[10] == ("critic_flow", "generator_dmd_ot")
    assert all(p == ("critic_flow",) or p == ("critic_flow", "generator_dmd_ot") for p in
               (phases_for(s, 5, use_gan=False) for s in range(12)))


def test_default_taps():
    assert default_taps(30) == (13, 21, 29) and default_taps(40) == (23, 31, 39)
    assert default_taps(4) == (1, 2, 3)


class TorchGanTap(torch.nn.Module):
    """An independent PyTorch transcription of the head described in METHOD.md section 4."""

    def __init__(self, dim, tok, heads):
        super().__init__()
        self.norm_in = torch.nn.LayerNorm(dim, eps=1e-6)
        self.lin1, self.lin2 = torch.nn.Linear(dim, tok), torch.nn.Linear(tok, tok)
        self.norm_video = torch.nn.LayerNorm(tok, eps=1e-6)
        self.token = torch.nn.Parameter(torch.randn(1, 1, tok))
        self.norm_token = torch.nn.RMSNorm(tok, eps=1e-6)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(tok, tok) for _ in range(4))
        self.norm_q, self.norm_k, self.norm_ffn = (torch.nn.RMSNorm(tok, eps=1e-6) for _ in range(3))
        self.f1, self.f2 = torch.nn.Linear(tok, 4 * tok), torch.nn.Linear(4 * tok, tok)
        self.out = torch.nn.Linear(tok, dim)
        self.heads = heads

    def forward(self, x):
        b, n, _ = x.shape
        video = self.norm_video(self.lin2(torch.nn.functional.gelu(self.lin1(self.norm_in(x)))))
        tok = self.token.expand(b, 1, -1)
        split = lambda a: a.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q = split(self.norm_q(self.q(self.norm_token(tok))))
        k, v = split(self.norm_k(self.k(video))), split(self.v(video))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        r = tok + self.o(att)
        r = r + self.f2(torch.nn.functional.gelu(self.f1(self.norm_ffn(r))))
        return self.out(r[:, 0])


def test_gan_head_matches_an_independent_torch_transcription():
    torch.manual_seed(0)
    dim, tok, heads, taps = 24, 16, 2, (0, 2)
    taps_t = [TorchGanTap(dim, tok, heads) for _ in taps]
    norm, l1, l2 = torch.nn.LayerNorm(3 * dim, eps=1e-6), torch.nn.Linear(3 * dim, dim), torch.nn.Linear(dim, 1)
    for m in [*taps_t, norm]:
        for p in m.parameters():
            p.data.add_(0.1 * torch.randn_like(p))
    head = GanHead(dim, taps, token_dim=tok, num_heads=heads, rngs=nnx.Rngs(0))
    lin = lambda m: {"kernel": m.weight.detach().numpy().T, "bias": m.bias.detach().numpy()}  # noqa: E731
    ln = lambda m: {"scale": m.weight.detach().numpy(), "bias": m.bias.detach().numpy()}  # noqa: E731
    rms = lambda m: {"scale": m.weight.detach().numpy()}  # noqa: E731
    for ours, t in zip(head.tap_heads, taps_t):
        nnx.update(ours, nnx.State({
            "norm_in": ln(t.norm_in), "linear_in_1": lin(t.lin1), "linear_in_2": lin(t.lin2),
            "norm_video": ln(t.norm_video), "token": t.token.detach().numpy(), "norm_token": rms(t.norm_token),
            "to_q": lin(t.q), "to_k": lin(t.k), "to_v": lin(t.v), "to_out": lin(t.o), "norm_q": rms(t.norm_q),
            "norm_k": rms(t.norm_k), "norm_ffn": rms(t.norm_ffn), "ffn_1": lin(t.f1), "ffn_2": lin(t.f2),
            "proj_out": lin(t.out)}))
    nnx.update(head, nnx.State({"norm": ln(norm), "linear_1": lin(l1), "linear_2": lin(l2)}))
    r = np.random.default_rng(0)
    feats = [r.normal(size=(3, 10, dim)).astype(np.float32) for _ in taps]
    temb = r.normal(size=(3, dim)).astype(np.float32)
    with torch.no_grad():
        h = torch.cat([t(torch.tensor(f)) for t, f in zip(taps_t, feats)] + [10 * torch.tensor(temb)], -1)
        expected = l2(torch.nn.functional.silu(l1(norm(h))))[:, 0].numpy()
    np.testing.assert_allclose(np.asarray(head([jnp.asarray(f) for f in feats], jnp.asarray(temb))), expected,
                               atol=1e-5)


TINY = WanConfig(dim=16, ffn_dim=32, num_heads=2, num_layers=2, in_channels=4, out_channels=4, text_dim=8,
                 freq_dim=16, vace_layers=(0,), vace_in_channels=12)


@pytest.fixture(scope="module")
def tiny_run():
    teacher = WanModel(TINY, rngs=nnx.Rngs(0))
    generator = WanModel(TINY, rngs=nnx.Rngs(0))
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(1), token_dim=8, num_heads=2)
    c = distill_config()
    c.optim.accumulation = 2
    c.optim.critic_lr, c.optim.generator_lr = 1e-2, 1e-4
    c.optim.b1 = 0.9  # momentum (the release uses none) so that a few dozen noisy steps make visible progress
    c.ot.pool = 1
    c.ema.decay, c.ema.start = 0.9, 0
    d = Distiller(generator, critic, teacher, c)
    state = d.init_state(generator, critic, teacher)
    r = np.random.default_rng(0)
    batch = {"latents": r.normal(size=(2, 2, 4, 3, 4, 4)).astype(np.float32),
             "text": r.normal(size=(2, 2, 5, 8)).astype(np.float32),
             "neg_text": np.zeros((2, 2, 5, 8), np.float32),
             "context": r.normal(size=(2, 2, 12, 3, 4, 4)).astype(np.float32)}
    gen0 = jax.tree.map(np.asarray, state.generator)
    critic0 = jax.tree.map(np.asarray, state.critic)
    for _ in range(60):
        state, m = d.train_step(state, batch)
    return d, state, batch, gen0, critic0


def critic_flow_loss(d, state, critic, batch, draws=16):
    """The critic's flow loss on fixed draws of generator samples, timesteps and noise (the training law)."""
    micro = jax.tree.map(lambda a: a[0], batch)

    @jax.jit
    @jax.vmap
    def one(key):
        k_s, k_t, k_e = jax.random.split(key, 3)
        x_hat = d._sample(state.generator, micro, k_s)
        t = sample_loss_timesteps(k_t, x_hat.shape[0])
        noise = jax.random.normal(k_e, x_hat.shape)
        return losses.flow_loss(d._critic_v(critic, add_noise(x_hat, noise, t), t, micro), noise, x_hat)

    return float(jnp.mean(one(jax.random.split(jax.random.key(100), draws))))


def test_tiny_run_of_all_phases_learns_and_compiles_each_phase_once(tiny_run):
    d, state, batch, gen0, critic0 = tiny_run
    assert int(state.step) == 60
    assert dict(d.trace_counts) == {p: 1 for p in PHASES}
    before, after = critic_flow_loss(d, state, critic0, batch), critic_flow_loss(d, state, state.critic, batch)
    assert after < 0.9 * before, (before, after)
    moved = max(float(np.abs(np.asarray(a) - b).max()) for a, b in
                zip(jax.tree.leaves(state.generator), jax.tree.leaves(gen0)))
    assert moved > 1e-4
    assert int(state.skipped) == 0
    ema_gap = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
                  zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.generator)))
    assert 0 < ema_gap  # the EMA lags the generator


def test_ablations_share_the_compiled_phases(tiny_run):
    """DMD-only / OT-only differ from the recipe only in state-held weights: no new compilation."""
    d, _, batch, _, _ = tiny_run
    teacher = WanModel(TINY, rngs=nnx.Rngs(0))
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(1), token_dim=8, num_heads=2)
    dmd_only = d.init_state(WanModel(TINY, rngs=nnx.Rngs(0)), critic, teacher, loss_weights={"ot": 0.0})
    for _ in range(6):
        dmd_only, m = d.train_step(dmd_only, batch, use_gan=False)
    assert "ot_loss" in m or "critic_flow_loss" in m
    assert float(dmd_only.loss_weights["ot"]) == 0.0
    assert dict(d.trace_counts) == {p: 1 for p in PHASES}
    with pytest.raises(ValueError, match="unknown loss weight"):
        d.init_state(WanModel(TINY, rngs=nnx.Rngs(0)), critic, teacher, loss_weights={"gan": 1.0})


def test_non_finite_loss_skips_the_update_and_is_counted(tiny_run):
    d, state, batch, _, _ = tiny_run
    bad = dict(batch, latents=np.full_like(batch["latents"], np.nan))  # the GAN's real data
    step = int(state.step)
    while "critic_gan" not in phases_for(step, d.config.ttur):
        state, _ = d.train_step(state, batch)
        step += 1
    before = jax.tree.map(np.asarray, state.critic)
    skipped = int(state.skipped)
    state, m = d.train_step(state, bad)
    assert float(m["finite"]) == 0.0 and int(state.skipped) == skipped + 1
    for a, b in zip(jax.tree.leaves(state.critic), jax.tree.leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    assert dict(d.trace_counts) == {p: 1 for p in PHASES}
