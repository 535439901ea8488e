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
from vdot_jax.distill.steps import PHASES, Distiller, TrainState, exit_index, phases_for
from vdot_jax.distill.timesteps import (RolloutSchedule, add_noise, consistent_schedule, release_schedule, rollout,
                                        sample_gan_timesteps, sample_loss_timesteps, student_schedule,
                                        wan_unipc_timesteps, x0_from_velocity)
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
    # re-noised to Wan's integer shift-16 table [979, 941, 841] (sigma_max .999, truncated)
    np.testing.assert_allclose(rel.sigmas, [1.0, 0.979, 0.941, 0.841], atol=1e-7)
    np.testing.assert_array_equal(wan_unipc_timesteps(4, 16.0), [999, 979, 941, 841])
    con = consistent_schedule()  # vdot-jax's inference table: diffusers' UniPC (sigma_max 1)
    np.testing.assert_allclose(con.told, [999, 979, 941, 842])
    np.testing.assert_allclose(con.sigmas, [1.0, 0.97962, 0.94129, 0.84264], atol=1e-4)
    # the config's student_shift moves the consistent schedule (the demo's 5x32x32 clips use shift 3)
    low = student_schedule("consistent", 3.0)
    np.testing.assert_allclose(low.told, [999, 900, 750, 500])  # t = 3s / (1 + 2s), s = 1, .75, .5, .25
    np.testing.assert_allclose(low.sigmas, [1.0, 0.9, 0.75, 0.5], atol=2e-3)
    assert student_schedule("release", 3.0) == rel
    with pytest.raises(ValueError, match="unknown rollout schedule 'fast'"):
        student_schedule("fast", 16.0)


def test_timestep_draws_follow_the_release_formula():
    """Integer draws (the release's torch.randint), then the shift and the clamp, in closed form."""
    key = jax.random.key(3)
    u = np.asarray(jax.random.randint(key, (4096,), 20, 980), np.float64) / 1000
    expected = np.clip(1000 * 5 * u / (1 + 4 * u), 20, 980)
    np.testing.assert_allclose(sample_loss_timesteps(key, 4096), expected, rtol=1e-6)


def test_gan_timestep_draws_are_the_shift_12_closed_form():
    key = jax.random.key(4)
    u = np.asarray(jax.random.randint(key, (4096,), 0, 1000), np.float64) / 1000
    expected = np.clip(1000 * 12 * u / (1 + 11 * u), 20, 980)
    g = np.asarray(sample_gan_timesteps(key, 4096))
    np.testing.assert_allclose(g, expected, rtol=1e-6)
    assert (g == 20).any() and (g == 980).any()  # both clamps bite (u = 0, 1 and u >= 803)
    # a shift of 12 (not 5, not a float draw): the median of 12u/(1+11u) over u ~ U{0..999} is ~923
    assert 915 < np.median(g) < 930


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
    """The generator phase runs first (release order); GAN on odd generator updates and odd critic steps."""
    seq = [phases_for(s, ttur=5) for s in range(12)]
    assert seq[0] == ("generator_dmd_ot", "critic_flow") and seq[1] == ("critic_gan",)
    assert seq[5] == ("generator_gan", "critic_gan") and seq[10] == ("generator_dmd_ot", "critic_flow")
    assert all(p == ("critic_flow",) or p == ("generator_dmd_ot", "critic_flow") for p in
               (phases_for(s, 5, use_gan=False) for s in range(12)))


def test_exit_index_depends_on_step_only():
    rng = jax.random.key_data(jax.random.key(0))
    draws = [int(exit_index(rng, jnp.int32(s), 4)) for s in range(64)]
    assert set(draws) == {0, 1, 2, 3}
    assert draws == [int(exit_index(rng, jnp.int32(s), 4)) for s in range(64)]


def test_default_taps():
    assert default_taps(30) == (13, 21, 29) and default_taps(40) == (23, 31, 39)
    assert default_taps(4) == (1, 2, 3)


def _torch_mlp_proj(din, dout):
    """LN, Linear(din, din), exact GELU, Linear(din, dout), LN (torch default eps 1e-5)."""
    return torch.nn.Sequential(torch.nn.LayerNorm(din), torch.nn.Linear(din, din), torch.nn.GELU(),
                               torch.nn.Linear(din, dout), torch.nn.LayerNorm(dout))


class TorchGanBlock(torch.nn.Module):
    """One tap of the release's GAN head, written here from its architecture (training/wan/modules/model.py):
    the register token queries the down-projected video tokens; FFN with tanh-GELU after an affine-free LN."""

    def __init__(self, dim, tok=512, heads=8, ffn=13824):
        super().__init__()
        self.down, self.up = _torch_mlp_proj(dim, tok), _torch_mlp_proj(tok, dim)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(tok, tok) for _ in range(4))
        self.norm_q, self.norm_k = torch.nn.RMSNorm(tok, eps=1e-6), torch.nn.RMSNorm(tok, eps=1e-6)
        self.ffn = torch.nn.Sequential(torch.nn.Linear(tok, ffn), torch.nn.GELU(approximate="tanh"),
                                       torch.nn.Linear(ffn, tok))
        self.heads, self.tok = heads, tok

    def forward(self, x, register):
        video = self.down(x)
        split = lambda a: a.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q = split(self.norm_q(self.q(register)))
        k, v = split(self.norm_k(self.k(video))), split(self.v(video))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        token = register + self.o(att)
        y = self.ffn(torch.nn.functional.layer_norm(token, (self.tok,), eps=1e-6)) + token
        return self.up(y)


class TorchGanHead(torch.nn.Module):
    def __init__(self, dim, n=3, tok=512, heads=8, ffn=13824):
        super().__init__()
        self.registers = torch.nn.Parameter(0.02 * torch.randn(n, tok))
        self.register_norm = torch.nn.RMSNorm(tok, eps=1e-6)
        self.blocks = torch.nn.ModuleList([TorchGanBlock(dim, tok, heads, ffn) for _ in range(n)])
        self.cls = torch.nn.Sequential(torch.nn.LayerNorm((n + 1) * dim), torch.nn.Linear((n + 1) * dim, dim),
                                       torch.nn.SiLU(), torch.nn.Linear(dim, 1))

    def forward(self, features, temb):
        regs = self.register_norm(self.registers)
        b = temb.shape[0]
        outs = [blk(f, regs[i].expand(b, 1, -1)) for i, (blk, f) in enumerate(zip(self.blocks, features))]
        return self.cls(torch.cat(outs + [10 * temb[:, None]], 1).view(b, -1))[:, 0]


def _n_params(flat):
    return sum(int(np.prod(v.shape)) for v in flat.values())


@pytest.mark.parametrize("dim,expected", [(1536, 19_428_352), (5120, 46_974_976)])
def test_gan_head_parameter_count_per_tap_is_the_release_one(dim, expected):
    from vdot_jax.models.discriminator import GanBlock
    from vdot_jax.weights.params import flat_state

    with torch.device("meta"):
        ref = sum(p.numel() for p in TorchGanBlock(dim).parameters())
    assert ref == expected  # 47.0 M per tap at 14B (dim 5120), 19.4 M at 1.3B
    ours = nnx.eval_shape(lambda: GanBlock(dim, 512, 8, 13824, rngs=nnx.Rngs(0)))
    assert _n_params(flat_state(ours)) == expected
    head = nnx.eval_shape(lambda: GanHead(dim, (0, 1, 2), rngs=nnx.Rngs(0)))  # release widths are the defaults
    width = 4 * dim
    assert _n_params(flat_state(head)) == 3 * expected + 3 * 512 + 512 + 2 * width + width * dim + dim + dim + 1


def test_gan_head_matches_an_independent_torch_module():
    torch.manual_seed(0)
    dim, tok, heads, ffn, taps = 24, 16, 2, 40, (0, 2, 3)
    ref = TorchGanHead(dim, len(taps), tok, heads, ffn).eval()
    with torch.no_grad():
        for p in ref.parameters():  # no LayerNorm left at identity
            p.add_(0.1 * torch.randn_like(p))
    head = GanHead(dim, taps, token_dim=tok, num_heads=heads, ffn_dim=ffn, rngs=nnx.Rngs(0))
    lin = lambda m: {"kernel": m.weight.detach().numpy().T, "bias": m.bias.detach().numpy()}  # noqa: E731
    ln = lambda m: {"scale": m.weight.detach().numpy(), "bias": m.bias.detach().numpy()}  # noqa: E731
    rms = lambda m: {"scale": m.weight.detach().numpy()}  # noqa: E731
    proj = lambda s: {"norm_in": ln(s[0]), "linear_1": lin(s[1]), "linear_2": lin(s[3]), "norm_out": ln(s[4])}  # noqa
    for ours, t in zip(head.gan_blocks, ref.blocks):
        nnx.update(ours, nnx.State({
            "proj_in": proj(t.down), "proj_out": proj(t.up),
            "attn": {"to_q": lin(t.q), "to_k": lin(t.k), "to_v": lin(t.v), "to_out": {0: lin(t.o)},
                     "norm_q": rms(t.norm_q), "norm_k": rms(t.norm_k)},
            "ffn": {"net": {0: {"proj": lin(t.ffn[0])}, 2: lin(t.ffn[2])}}}))
    nnx.update(head, nnx.State({"register_tokens": ref.registers.detach().numpy(),
                                "register_norm": rms(ref.register_norm), "norm": ln(ref.cls[0]),
                                "linear_1": lin(ref.cls[1]), "linear_2": lin(ref.cls[3])}))
    r = np.random.default_rng(0)
    feats = [r.normal(size=(3, 10, dim)).astype(np.float32) for _ in taps]
    temb = r.normal(size=(3, dim)).astype(np.float32)
    with torch.no_grad():
        expected = ref([torch.tensor(f) for f in feats], torch.tensor(temb)).numpy()
    got = np.asarray(head([jnp.asarray(f) for f in feats], jnp.asarray(temb)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.ptp(expected) > 0.1  # the examples are told apart


TINY = WanConfig(dim=16, ffn_dim=32, num_heads=2, num_layers=2, in_channels=4, out_channels=4, text_dim=8,
                 freq_dim=16, vace_layers=(0,), vace_in_channels=12)


@pytest.fixture(scope="module")
def tiny_run():
    teacher = WanModel(TINY, rngs=nnx.Rngs(0))
    generator = WanModel(TINY, rngs=nnx.Rngs(0))
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(1), token_dim=8, num_heads=2, ffn_dim=16)
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
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(1), token_dim=8, num_heads=2, ffn_dim=16)
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
