"""Flow-matching samplers (UniPC and Euler) whose whole step loop is one ``lax.scan``.

Model convention: ``model_fn(x, t) -> v`` with ``x`` a latent batch [B, ...], ``t`` a [B]
float array of timesteps in the 0..1000 scale, and ``v`` the flow prediction
``noise - x0``; so ``x0 = x_t - s v`` at sigma ``s``.

Why precomputed coefficients: every UniPC update is a linear combination of the current
sample, the previous sample and the last few x0 predictions, with weights that depend only
on the sigma table.  They are computed once in numpy (float64, from the float32 sigma
table that diffusers itself uses), so the jitted loop is a fixed-shape scan of
multiply-adds and is traced once, whatever the step count.  Combinations are written as
element-wise sums (no ``dot``), so accelerators' reduced-precision matmuls never touch them.

Equivalence with diffusers' ``UniPCMultistepScheduler`` (flow_prediction, predict_x0,
use_flow_sigmas, lower_order_final, empty disable_corrector; its defaults) and
``FlowMatchEulerDiscreteScheduler`` is tested to 1e-5 on whole trajectories.
"""

from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdot_jax.sampling.schedules import flow_schedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------
# UniPC coefficients (numpy)
# ----------------------------------------------------------------------------------------


class UniPCCoefficients(NamedTuple):
    """Per-step weights, all float32 with leading axis n (steps); history axis has ``order``.

    Step i (model evaluated at x_i, giving m_i = x_i - sigma_i v_i):
      corrector:  x_i <- c_self x_i + c_last x_{i-1} + c_model m_i + sum_j c_hist[j] m_{i-1-j}
      predictor:  x_{i+1} = p_self x_i + sum_j p_hist[j] m_{i-j}
    """

    c_self: np.ndarray  # [n]     1 where the corrector is off (step 0), else 0
    c_last: np.ndarray  # [n]
    c_model: np.ndarray  # [n]
    c_hist: np.ndarray  # [n, order]
    p_self: np.ndarray  # [n]
    p_hist: np.ndarray  # [n, order]
    orders: np.ndarray  # [n] int, predictor order used at each step (for inspection)


def _bh_terms(h: float, k: int, solver_type: str):
    """h*phi_1, B(h) and the b vector of UniPC's B(h) update, predict-x0 form (hh = -h)."""
    hh = -h
    h_phi_1 = np.expm1(hh)
    b_h = hh if solver_type == "bh1" else h_phi_1
    b = []
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1.0
    for n in range(1, k + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= n + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return h_phi_1, b_h, np.array(b)


def unipc_coefficients(
    sigmas,
    order: int = 2,
    solver_type: str = "bh2",
    disable_corrector: Sequence[int] = (),
) -> UniPCCoefficients:
    """UniPC (predict-x0, flow sigmas) weights for a sigma table [n+1] ending in 0.

    Follows diffusers' step order: warm-up (order grows by one per step), lower order on
    the final steps (order <= steps left), corrector on every step but the first, using the
    previous step's order (UniC-p), and never re-evaluating the model on the corrected
    sample.  ``disable_corrector`` uses diffusers' indexing: entry j turns off the corrector
    applied at step j + 1.  The final step (sigma -> 0) is first order, which makes it
    exactly x_n = x0 prediction at the last evaluated step.
    """
    if solver_type not in ("bh1", "bh2"):
        raise ValueError(f"solver_type must be 'bh1' or 'bh2', got {solver_type!r}")
    if order < 1:
        raise ValueError("order must be >= 1")
    s = np.asarray(sigmas, dtype=np.float32).astype(np.float64)
    n = len(s) - 1
    with np.errstate(divide="ignore"):  # lambda(0) = +inf at the end: handled as a limit
        lam = np.log1p(-s) - np.log(s)
    orders = np.array([min(order, n - i, i + 1) for i in range(n)])

    c_self, c_last, c_model = np.zeros(n), np.zeros(n), np.zeros(n)
    c_hist, p_self, p_hist = np.zeros((n, order)), np.zeros(n), np.zeros((n, order))

    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(n):
            # Predictor x_i -> x_{i+1}, order k, history m_i, m_{i-1}, ...
            k = orders[i]
            a_t = 1.0 - s[i + 1]
            h = lam[i + 1] - lam[i]
            h_phi_1, b_h, b = _bh_terms(h, k, solver_type)
            rks = np.array([(lam[i - j] - lam[i]) / h for j in range(1, k)] + [1.0])
            if k == 1:
                rhos = np.zeros(0)
            elif k == 2:
                rhos = np.array([0.5])
            else:
                r = np.stack([rks ** (p - 1) for p in range(1, k + 1)])
                rhos = np.linalg.solve(r[:-1, :-1], b[:-1])
            p_self[i] = s[i + 1] / s[i]
            p_hist[i, 0] = -a_t * h_phi_1
            if k > 1:  # (skipped at k == 1: diffusers' bh1 computes -inf * 0 = NaN at sigma 0)
                p_hist[i, 0] += a_t * b_h * np.sum(rhos / rks[:-1])
                p_hist[i, 1:k] = -a_t * b_h * rhos / rks[:-1]

            # Corrector at step i: refines x_i (from x_{i-1}) with the new m_i, order of step i-1.
            if i == 0 or (i - 1) in disable_corrector:
                c_self[i] = 1.0
                continue
            k = orders[i - 1]
            a_t = 1.0 - s[i]
            h = lam[i] - lam[i - 1]
            h_phi_1, b_h, b = _bh_terms(h, k, solver_type)
            rks = np.array([(lam[i - 1 - j] - lam[i - 1]) / h for j in range(1, k)] + [1.0])
            if k == 1:
                rhos_c = np.array([0.5])
            else:
                r = np.stack([rks ** (p - 1) for p in range(1, k + 1)])
                rhos_c = np.linalg.solve(r, b)
            c_last[i] = s[i] / s[i - 1]
            c_model[i] = -a_t * b_h * rhos_c[-1]
            c_hist[i, 0] = -a_t * h_phi_1 + a_t * b_h * (rhos_c[-1] + np.sum(rhos_c[:-1] / rks[:-1]))
            c_hist[i, 1:k] = -a_t * b_h * rhos_c[:-1] / rks[:-1]

    f32 = lambda a: np.asarray(a, dtype=np.float32)  # noqa: E731
    coeffs = UniPCCoefficients(f32(c_self), f32(c_last), f32(c_model), f32(c_hist),
                               f32(p_self), f32(p_hist), orders)
    for name, arr in coeffs._asdict().items():
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"non-finite UniPC coefficient {name}; is the sigma table valid?")
    return coeffs


# ----------------------------------------------------------------------------------------
# Sampling loops (jax)
# ----------------------------------------------------------------------------------------


def _timestep_batch(t, x):
    return jnp.full((x.shape[0],), t, dtype=jnp.float32)


def _weighted(ws, arrays):
    """sum_j ws[j] * arrays[j] over a small static axis, element-wise (never a matmul)."""
    out = ws[0] * arrays[0]
    for j in range(1, arrays.shape[0]):
        out = out + ws[j] * arrays[j]
    return out


def _unipc_loop(model_fn, x, sigmas, timesteps, order, solver_type, disable_corrector, trajectory):
    co = unipc_coefficients(sigmas, order, solver_type, disable_corrector)
    xs = dict(t=timesteps, sigma=np.asarray(sigmas, np.float32)[:-1], c_self=co.c_self,
              c_last=co.c_last, c_model=co.c_model, c_hist=co.c_hist,
              p_self=co.p_self, p_hist=co.p_hist)
    xs = jax.tree.map(jnp.asarray, xs)

    def step(carry, c):
        x, x_last, hist = carry  # hist[j] = m_{i-1-j}
        v = model_fn(x, _timestep_batch(c["t"], x)).astype(jnp.float32)
        m = x - c["sigma"] * v  # x0 prediction
        x = (c["c_self"] * x + c["c_last"] * x_last + c["c_model"] * m
             + _weighted(c["c_hist"], hist))
        hist = jnp.concatenate([m[None], hist[:-1]], axis=0)  # now hist[j] = m_{i-j}
        x_next = c["p_self"] * x + _weighted(c["p_hist"], hist)
        return (x_next, x, hist), (x_next if trajectory else None)

    init = (x, jnp.zeros_like(x), jnp.zeros((order,) + x.shape, x.dtype))
    (x, _, _), traj = jax.lax.scan(step, init, xs)
    return x, traj


def _euler_loop(model_fn, x, sigmas, timesteps, trajectory):
    sig = np.asarray(sigmas, np.float32)
    xs = dict(t=jnp.asarray(timesteps), dt=jnp.asarray(sig[1:] - sig[:-1]))  # float32 diff

    def step(x, c):
        v = model_fn(x, _timestep_batch(c["t"], x)).astype(jnp.float32)
        x = x + c["dt"] * v
        return x, (x if trajectory else None)

    return jax.lax.scan(step, x, xs)


def sample_with_sigmas(
    model_fn: ModelFn,
    latents: jax.Array,
    sigmas,
    timesteps,
    *,
    solver: str = "unipc",
    order: int = 2,
    solver_type: str = "bh2",
    disable_corrector: Sequence[int] = (),
    return_trajectory: bool = False,
):
    """Integrate from ``latents`` (pure noise at sigmas[0]) to sigma = 0 over a given table.

    ``sigmas`` [n+1] (ending in 0) and ``timesteps`` [n] must be concrete (numpy) values:
    the coefficients are computed from them at trace time.  ``latents`` may be traced; wrap
    the call in ``jax.jit`` with ``model_fn`` closed over.  Computation is float32.
    ``order``, ``solver_type`` and ``disable_corrector`` apply to UniPC only.

    Returns the final sample, or ``(final, trajectory)`` with ``trajectory[i]`` the sample
    after step i (diffusers' ``prev_sample``; the last one equals ``final``).
    """
    sigmas = np.asarray(sigmas, np.float32)
    timesteps = np.asarray(timesteps, np.float32)
    if sigmas.ndim != 1 or timesteps.shape != (len(sigmas) - 1,):
        raise ValueError(f"need sigmas [n+1] and timesteps [n]; got {sigmas.shape}, {timesteps.shape}")
    x = jnp.asarray(latents, jnp.float32)
    if solver == "unipc":
        x, traj = _unipc_loop(model_fn, x, sigmas, timesteps, order, solver_type,
                              tuple(disable_corrector), return_trajectory)
    elif solver == "euler":
        x, traj = _euler_loop(model_fn, x, sigmas, timesteps, return_trajectory)
    else:
        raise ValueError(f"unknown solver {solver!r}; expected 'unipc' or 'euler'")
    return (x, traj) if return_trajectory else x


def sample(
    model_fn: ModelFn,
    latents: jax.Array,
    *,
    num_steps: int,
    shift: float,
    solver: str = "unipc",
    order: int = 2,
    return_trajectory: bool = False,
):
    """Sample with diffusers' schedule for ``solver`` at ``num_steps`` and ``shift``.

    Teacher: ``sample(cfg_fn, z, num_steps=50, shift=16.0)``; released student:
    ``sample(fn, z, num_steps=4, shift=16.0)``.  ``num_steps``/``shift`` must be Python
    values (they fix the tables); see ``sample_with_sigmas`` for the rest.
    """
    sigmas, timesteps = flow_schedule(solver, num_steps, shift)
    return sample_with_sigmas(model_fn, latents, sigmas, timesteps, solver=solver,
                              order=order, return_trajectory=return_trajectory)


# ----------------------------------------------------------------------------------------
# Classifier-free guidance
# ----------------------------------------------------------------------------------------


def _is_unit_scale(guide_scale) -> bool:
    return isinstance(guide_scale, numbers.Real) and float(guide_scale) == 1.0


def guidance_context(cond, uncond, guide_scale):
    """The text context to bind into the model_fn passed to ``classifier_free_guidance``.

    ``[cond; uncond]`` stacked on the batch axis (any pytree of arrays), or ``cond`` alone
    when guide_scale == 1 (no guidance, so no unconditional pass).  Using this keeps the
    context batch and the wrapper's batch doubling in agreement.
    """
    if _is_unit_scale(guide_scale):
        return cond
    return jax.tree.map(lambda c, u: jnp.concatenate([c, u], axis=0), cond, uncond)


def classifier_free_guidance(model_fn: ModelFn, guide_scale) -> ModelFn:
    """Wrap a model whose context is ``guidance_context(cond, uncond, w)`` into a guided one.

    For w != 1 the returned fn runs ``model_fn`` ONCE on ``[x; x]``, ``[t; t]`` (cond
    half first, matching the ``[cond; uncond]`` context) and returns
    ``uncond + w (cond - uncond)``.  For w == 1 (a Python number) that formula is just
    ``cond``, so ``model_fn`` itself is returned: one pass at batch B, and the caller binds
    the cond-only context (which ``guidance_context`` does).  A traced ``guide_scale``
    always takes the doubled path.
    """
    if _is_unit_scale(guide_scale):
        return model_fn

    def guided(x, t):
        out = model_fn(jnp.concatenate([x, x], axis=0), jnp.concatenate([t, t], axis=0))
        cond, uncond = jnp.split(out, 2, axis=0)
        return uncond + guide_scale * (cond - uncond)

    return guided
