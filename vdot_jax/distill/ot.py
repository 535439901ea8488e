"""VDOT's optimal-transport (OT) term (docs/method.md, "OT term"), on ott-jax.

What is computed
----------------
For every (batch element b, latent frame t) separately, both x0 predictions ``[C, H, W]`` are
average-pooled ``pool x pool`` (release: 2x2) into ``(H//pool)*(W//pool)`` points in R^C
(1,560 points in R^16 at 480p). Between the fake cloud x and the real cloud y, with uniform
weights, an entropic OT plan P is computed by log-domain Sinkhorn (ott-jax ``PointCloud`` +
``Sinkhorn(lse_mode=True)``, absolute epsilon: ``scale_cost=1``), for a *fixed* number of
iterations from zero potentials. The scalar is the transport cost ``sum(P * C)`` (no entropy
term). The direction is ``g = d(sum over frames of that cost)/d(fake_x0)``, taken through the
pooling, then normalised to unit L2 norm per (b, frame) over (C, H, W) (``/(||g|| + 1e-8)``).
The generator loss is ``L_OT = 0.5 * sum((x_hat - sg(x_hat - 0.1 g))^2)`` summed per sample and averaged
over the batch (:func:`ot_loss`).

Gradient modes (``OTConfig.grad_mode``)
---------------------------------------
``"unrolled"`` (default)
    Reverse-mode autodiff through the fixed iterations, as the release does with torch
    autograd. ott-jax's own unrolling (``implicit_diff=None``) is not used. Measured
    against central finite differences (float64, 24 points): with ``min_iterations ==
    max_iterations`` (ott's fixed-count ``lax.scan`` path) and ``inner_iterations < max``,
    its gradient is wrong (relative FD errors 0.4..13; cosine 0.98 to the exact gradient
    for inner 10, 0.23 for inner 1): ``fixed_point_loop.fixpoint_iter_bwd``'s ``force_scan``
    branch starts its reverse scan at iteration 0 (carry ``(0, g, g_constants)``) and
    walks blocks 0, -1, -2, ... instead of the last block down to the first. It is exact
    (FD error < 1e-8) with a single block (``inner == max``) or on the while-loop path
    (``min < max``, ``threshold < 0``), but the single block stores every iteration's
    n x m residuals. Here, ott's ``PointCloud`` builds the cost matrix and the identical
    lse updates (column potential first, then rows, the formulas of ``Sinkhorn.lse_step``)
    run in a plain ``lax.scan``, so autodiff is exact; its forward plan equals ott's
    ``Sinkhorn`` plan to float rounding (tested). With ``remat=True`` each step is
    ``jax.checkpoint``-ed: only the potentials (2 x n floats per iteration) are kept and
    the n x m work is recomputed in
    the backward, instead of ~2 x 60 n x m residuals (~1.2 GB per 1,560-point frame).
``"envelope"``
    The paper's form: the plan is held fixed, ``g_i = d/dx_i sum_j P_ij c(x_i, y_j)``
    (``2 sum_j P_ij (x_i - y_j)`` for sqeuclidean). At convergence this is the exact
    gradient of the entropic cost ``<P,C> - eps H(P)`` (Danskin), not of ``<P,C>``; the
    two differ by ``eps dH/dx`` and, at 60 iterations, by non-convergence.
``"implicit"``
    ott's implicit differentiation of the Sinkhorn fixed point (``ImplicitDiff``, lineax
    solver), through ``P = exp((f + g - C)/eps)`` into ``sum(P * C)``: the exact gradient
    of the *converged* transport cost. It needs ``compute_dtype="float64"`` (jax x64): in
    float32 ott-jax 0.6.0 + lineax 0.1.1 returned NaN (or raised ``EquinoxRuntimeError``)
    on every problem tried here (24 and 390 points, iid and smooth data; ridges 1e-6..1e-4,
    GMRES/BiCGStab, a symmetric linear preconditioner). Two causes, measured: (1) with
    near-permutation plans (eps 0.1 vs costs of 1..100) the float32 Schur complement
    ``D - B^T A^-1 B`` is numerically indefinite (eigenvalues down to -7e-8 against a top
    of 7e-3; float64: +7e-16 null vector, next 2e-10); (2) lineax's CG breakdown test
    ``|p^T A p| > 100 * n * eps_f32 * |r^T r|`` is not scale invariant, so operators whose
    spectrum is O(1/(n eps)) small (this one) fail it even when well conditioned
    (a 24 x 24 identity-like matrix times 0.01 fails in float32 and passes in float64).
    Also: ott 0.6.0 ``ImplicitDiff(solver=...)`` is unusable (``UnboundLocalError`` in
    ``ImplicitDiff.solve``), so ott's jax-CG fallback cannot be selected.

Fixed iteration count in ott
----------------------------
``Sinkhorn(min_iterations=N, max_iterations=N, inner_iterations=N)``: ``min == max`` makes
``fixpoint_iter`` use a ``lax.scan`` of ``max // inner`` blocks of ``inner`` iterations,
never consulting ``threshold`` (so no early stop); ``inner`` must divide ``max`` or
``max // inner * inner < N`` iterations run (e.g. inner 7 -> 56); the error is computed
only at the last iteration (``iteration == max_iterations - 1``). Each iteration updates
the column potential g first, then f.

Update order
------------
The release-style torch loop updates the fake-side potential first (``u = ...; v = ...``
with u on the fake points). ott always updates the column potential first, so
``update_order="fake_first"`` (default) puts the fake points on ott's columns (the plan is
transposed, the cost sum is unchanged). At 60 iterations the plan is not converged and the
order matters: the two orders of the same torch loop differ by cosine 0.996 on smooth
24..390-point clouds.

Measurements (jax 0.10.2, ott-jax 0.6.0, CPU: 2 cores shared with other jobs, so times are
rough), cosine between normalised directions per frame:

* 24 points/frame, iid data, real = 0.8 fake + 0.3 + 0.5 noise ([1,16,3,8,12], the tests):
  unrolled (float32) vs an independent torch float64 release loop: > 0.9999995 (float64: equal
  to 1e-9); envelope vs unrolled 0.99996..0.99998; implicit (float64) vs unrolled 0.99996;
  implicit vs envelope > 0.9999995; fake_first vs real_first 0.99979..0.99995.
* 1,560 points/frame (latent 60x104), real = fake + 0.1..0.3 noise (teacher and critic x0
  close): envelope, unrolled and both update orders agree to >= 0.99993.
* 1,560 points/frame, smooth data with a systematic offset (real = 0.8 fake + 0.3 + 0.5
  noise): envelope vs unrolled 0.954..0.993 over 21 frames (median 0.981); implicit (float64)
  vs unrolled 0.977, implicit vs envelope 0.9997 (the converged-gradient forms agree with each
  other, not with the release's 60-iteration gradient); fake_first vs real_first 0.979;
  envelope vs unrolled at 300 iterations 0.995..0.999. iid data: 0.993 (env/unrolled).
* Time per ``ot_direction`` call, B=1, F=21, 1,560 points (jitted, second call): envelope
  16-19 s, unrolled (remat) 31-35 s, peak RSS 1.0 / 1.9 GB. Without remat: +1.2 GB per frame
  (~25 GB at F=21; at F=2 2.9 s / 2.8 GB vs 2.1 s / 0.55 GB with remat: remat is also
  faster). implicit (float64): 116 s for ONE frame (lineax CG on 1,560-dim Schur systems),
  i.e. ~40 min for F=21. Per frame (F=1): envelope 0.3 s, unrolled 1.0 s.
* Unrolled float32 vs float64 at 1,560 points: cosine 0.99999997; float64 unrolled vs
  central finite differences: relative error 4e-10.

Hence the default ``grad_mode="unrolled"``: it is the release's gradient (cosine 1 to the
torch loop), and the cheaper envelope form is not faithful enough (< 0.999 on some frames
as soon as fake and real clouds differ systematically), for ~2x the time of envelope and
~1 GB more peak memory at F=21 (CPU).

Unbalanced (tau < 1)
--------------------
``tau = rho / (rho + eps)`` as in ott. ott's lse update ``g <- tau (eps log b - eps LSE)``
is the fixed point of ``min_P <P,C> + eps sum(P log P - P) + rho_a KL(P1|a) +
rho_b KL(P^T 1|b)`` (entropy w.r.t. the counting measure, POT's convention; verified: its
plan zeroes that objective's gradient to 1e-14), not of the a(x)b-reference form, and for
tau < 1 ott 0.6.0's ``reg_ot_cost`` is not the value of that problem (its own dual is not
stationary at its fixed point, |grad| 0.1), so do not differentiate ``reg_ot_cost`` for
unbalanced problems. Here the plan is ott's (both in the ott and in the scan path).

Costs
-----
``sqeuclidean`` is ott's ``SqEuclidean`` (``||x-y||^2``, not halved, as the release).
``euclidean`` and ``l1`` are small ott ``CostFn`` subclasses, not ott's ``Euclidean`` /
``PNormP(1)``: ott 0.6.0's ``math.utils.norm`` custom JVP returns ``norm(ones)`` as the
*primal* at ``x == y`` under differentiation, so e.g. the zero diagonal of a debiasing
self-term became sqrt(C) inside ``jax.grad`` (finite-difference mismatch > 100%).

Precision
---------
Everything runs in ``compute_dtype`` (float32 by default) whatever the input dtype, and under
``jax.default_matmul_precision("highest")``: the sqeuclidean cost is ``|x|^2 + |y|^2 - 2 x.y``
and a TF32 matmul (a GPU default) would perturb ``C/eps`` by an estimated ~0.1 (2^-11 of
``x.y`` ~ 16, over eps = 0.1). The release (by reading trainer/model code, not measured) runs the
pooling, cost and Sinkhorn in the dtype of its x0 predictions, which come out of bf16 FSDP models:
bf16. float32 here is a deliberate deviation (bf16 ``C/eps`` carries errors of order 1 at eps 0.1).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from ott.geometry import costs, pointcloud
from ott.problems.linear import linear_problem
from ott.solvers.linear import implicit_differentiation, sinkhorn

from vdot_jax.distill.losses import surrogate_loss

__all__ = [
    "OTConfig",
    "GRAD_MODES",
    "COSTS",
    "UPDATE_ORDERS",
    "ot_cost",
    "ot_direction",
    "ot_loss",
    "pool_points",
]

GRAD_MODES = ("unrolled", "envelope", "implicit")
COSTS = ("sqeuclidean", "euclidean", "l1")
UPDATE_ORDERS = ("fake_first", "real_first")
COMPUTE_DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class OTConfig:
    """Configuration of the OT term; defaults are the release's (docs/method.md, docs/release_parity.md)."""

    epsilon: float = 0.1  # release: absolute entropic regularisation (no cost rescaling)
    iterations: int = 60  # release: fixed count, no convergence threshold
    pool: int = 2  # release: 2x2 average pooling of each latent frame [C,H,W]
    cost: str = "sqeuclidean"  # release: ||x-y||^2; also "euclidean" ||x-y||, "l1" ||x-y||_1
    tau_a: float = 1.0  # release: balanced (1.0); < 1 relaxes the fake marginal (unbalanced)
    tau_b: float = 1.0  # release: balanced (1.0); < 1 relaxes the real marginal (unbalanced)
    debias: bool = False  # release: False; True: cost(x,y) - cost(x,x)/2 - cost(y,y)/2
    # Default "unrolled": the release's own gradient (cosine 1 to a torch release loop), and the
    # only float32 mode with cosine > 0.999 to it on every frame measured. envelope is ~2x
    # cheaper (F=21, 1,560 points, CPU: 16-19 s vs 31-35 s, 1.0 vs 1.9 GB peak) but fell to
    # 0.954-0.993 when real and fake differ systematically; implicit needs float64 and took
    # ~2 min per frame. Details in the module docstring.
    grad_mode: str = "unrolled"
    normalize: bool = True  # release: unit L2 norm of g per (b, frame) over C,H,W
    norm_eps: float = 1e-8  # release: g / (||g|| + 1e-8)
    factor: float = 0.1  # release: step of L_OT = 0.5 * sum((x - sg(x - factor * g))^2)
    reduction: str = "sum"  # release: per-sample sum, batch mean (ot_loss); "mean" divides by numel
    update_order: str = "fake_first"  # release-style loop order; "real_first" = ott's orientation
    # release: bf16 x0 (by reading; see Precision above); float32 is a deliberate deviation. "float64" needs x64.
    compute_dtype: str = "float32"
    remat: bool = True  # unrolled: store only potentials per iteration, recompute in backward
    # Extra keyword arguments for ott's lineax solve in implicit mode, as (key, value) pairs
    # (hashable), e.g. (("ridge_identity", 1e-8),).
    implicit_solver_kwargs: tuple = ()

    def __post_init__(self):
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"OTConfig.grad_mode must be one of {GRAD_MODES}, got {self.grad_mode!r}")
        if self.cost not in COSTS:
            raise ValueError(f"OTConfig.cost must be one of {COSTS}, got {self.cost!r}")
        if self.update_order not in UPDATE_ORDERS:
            raise ValueError(f"OTConfig.update_order must be one of {UPDATE_ORDERS}, got {self.update_order!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"OTConfig.compute_dtype must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")
        if self.reduction not in ("sum", "mean"):
            raise ValueError(f"OTConfig.reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"OTConfig.iterations must be a positive int, got {self.iterations!r}")
        if isinstance(self.pool, bool) or not isinstance(self.pool, int) or self.pool < 1:
            raise ValueError(f"OTConfig.pool must be a positive int, got {self.pool!r}")
        if not self.epsilon > 0:
            raise ValueError(f"OTConfig.epsilon must be > 0, got {self.epsilon!r}")
        for name in ("tau_a", "tau_b"):
            tau = getattr(self, name)
            if not 0.0 < tau <= 1.0:
                raise ValueError(f"OTConfig.{name} must be in (0, 1], got {tau!r}")
        if self.grad_mode == "implicit" and self.compute_dtype != "float64":
            raise ValueError(
                "grad_mode='implicit' needs compute_dtype='float64' (and jax x64 enabled): in float32, "
                "ott-jax 0.6.0's implicit differentiation (lineax solve) returns NaN on these OT problems "
                "(see vdot_jax.distill.ot docstring); use 'unrolled' or 'envelope' in float32"
            )


@jax.tree_util.register_pytree_node_class
class _Euclidean(costs.CostFn):
    """``||x - y||_2`` with a zero gradient at ``x == y`` (double-where, exact primal).

    Replaces ``ott.geometry.costs.Euclidean``: ott 0.6.0's ``math.utils.norm`` custom JVP
    returns ``norm(ones)`` instead of 0 as the *primal* at ``x == y`` when differentiated,
    so under ``jax.grad`` coincident points (e.g. the diagonal of the debiasing self-terms)
    cost sqrt(C) instead of 0 and gradients go wrong (measured: FD mismatch of 100%+).
    """

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        sq = jnp.sum(jnp.square(x - y))
        nonzero = sq > 0
        return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


@jax.tree_util.register_pytree_node_class
class _L1(costs.CostFn):
    """``||x - y||_1`` (ott's ``PNormP(1)`` goes through the same faulty ``norm`` JVP)."""

    def __call__(self, x: jax.Array, y: jax.Array) -> jax.Array:
        return jnp.sum(jnp.abs(x - y))


def _cost_fn(name: str) -> costs.CostFn:
    if name == "sqeuclidean":
        return costs.SqEuclidean()  # ||x - y||_2^2 (not halved), as the release
    if name == "euclidean":
        return _Euclidean()
    if name == "l1":
        return _L1()
    raise ValueError(f"unknown OT cost {name!r}; expected one of {COSTS}")


def pool_points(frame: jax.Array, pool: int) -> jax.Array:
    """[C, H, W] -> [(H//pool) * (W//pool), C]: average-pool, one point per pooled pixel (row-major).

    Rows/columns beyond a multiple of ``pool`` are dropped, as torch's ``avg_pool2d`` does.
    """
    c, h, w = frame.shape
    hp, wp = h // pool, w // pool
    if hp == 0 or wp == 0:
        raise ValueError(f"frame {h}x{w} is smaller than the pooling window {pool}")
    x = frame[:, : hp * pool, : wp * pool].reshape(c, hp, pool, wp, pool).mean(axis=(2, 4))
    return x.reshape(c, hp * wp).T


def _oriented(x, y, cfg: OTConfig):
    """(rows, cols, tau_rows, tau_cols) for ott, which updates the column potential first."""
    if cfg.update_order == "fake_first":
        return y, x, cfg.tau_b, cfg.tau_a
    return x, y, cfg.tau_a, cfg.tau_b


def _geometry(rows: jax.Array, cols: jax.Array, cfg: OTConfig) -> pointcloud.PointCloud:
    # scale_cost=1.0: absolute epsilon, as the release (no cost normalisation).
    return pointcloud.PointCloud(rows, cols, cost_fn=_cost_fn(cfg.cost), epsilon=cfg.epsilon, scale_cost=1.0)


def _ott_solver(cfg: OTConfig, implicit: bool) -> sinkhorn.Sinkhorn:
    n = cfg.iterations
    return sinkhorn.Sinkhorn(
        lse_mode=True,
        # min == max: ott runs a lax.scan of exactly n iterations, threshold never consulted.
        min_iterations=n,
        max_iterations=n,
        inner_iterations=n,  # must divide max_iterations (ott runs max // inner blocks)
        implicit_diff=(
            implicit_differentiation.ImplicitDiff(solver_kwargs=dict(cfg.implicit_solver_kwargs))
            if implicit
            else None
        ),
    )


def _ott_plan(rows, cols, tau_rows, tau_cols, cfg: OTConfig, implicit: bool) -> jax.Array:
    """ott's Sinkhorn plan [len(rows), len(cols)]; differentiable (implicitly) only if ``implicit``."""
    geom = _geometry(rows, cols, cfg)
    prob = linear_problem.LinearProblem(geom, tau_a=tau_rows, tau_b=tau_cols)
    return _ott_solver(cfg, implicit)(prob).matrix


def _scan_plan(rows, cols, tau_rows, tau_cols, cfg: OTConfig) -> jax.Array:
    """ott's lse Sinkhorn updates written out in a plain ``lax.scan`` (exact under autodiff).

    From f = g = 0, each iteration does (ott's ``lse_step`` / ``update_potential``):
    ``g_j <- tau_cols * (eps log b_j - eps LSE_i[(f_i - C_ij)/eps])`` then
    ``f_i <- tau_rows * (eps log a_i - eps LSE_j[(g_j - C_ij)/eps])``; plan
    ``P = exp((f_i + g_j - C_ij)/eps)``.
    """
    cmat = _geometry(rows, cols, cfg).cost_matrix
    eps = cfg.epsilon
    n, m = cmat.shape
    log_a = jnp.full((n,), -jnp.log(n), cmat.dtype)
    log_b = jnp.full((m,), -jnp.log(m), cmat.dtype)

    def step(carry, _):
        f, g = carry
        g = tau_cols * (eps * log_b - eps * jax.nn.logsumexp((f[:, None] - cmat) / eps, axis=0))
        f = tau_rows * (eps * log_a - eps * jax.nn.logsumexp((g[None, :] - cmat) / eps, axis=1))
        return (f, g), None

    if cfg.remat:
        step = jax.checkpoint(step)
    init = (jnp.zeros((n,), cmat.dtype), jnp.zeros((m,), cmat.dtype))
    (f, g), _ = jax.lax.scan(step, init, None, length=cfg.iterations)
    return jnp.exp((f[:, None] + g[None, :] - cmat) / eps)


def _pair_cost(x, y, cfg: OTConfig) -> jax.Array:
    """sum(P * C) for one pair of clouds; ``jax.grad`` of it w.r.t. x is the configured gradient."""
    rows, cols, tau_rows, tau_cols = _oriented(x, y, cfg)
    cmat = _geometry(rows, cols, cfg).cost_matrix
    if cfg.grad_mode == "unrolled":
        plan = _scan_plan(rows, cols, tau_rows, tau_cols, cfg)
    elif cfg.grad_mode == "implicit":
        plan = _ott_plan(rows, cols, tau_rows, tau_cols, cfg, implicit=True)
    else:  # envelope: the plan is a constant, the gradient flows only through C
        sg = jax.lax.stop_gradient
        plan = _ott_plan(sg(rows), sg(cols), tau_rows, tau_cols, cfg, implicit=False)
    return jnp.sum(plan * cmat)


def _frame_cost(fake_frame, real_frame, cfg: OTConfig) -> jax.Array:
    x = pool_points(fake_frame, cfg.pool)
    y = pool_points(real_frame, cfg.pool)
    cost = _pair_cost(x, y, cfg)
    if cfg.debias:
        cost = cost - 0.5 * _pair_cost(x, x, cfg) - 0.5 * _pair_cost(y, y, cfg)
    return cost


def _resolve(config: OTConfig | None, overrides: dict[str, Any]) -> OTConfig:
    cfg = OTConfig() if config is None else config
    return dataclasses.replace(cfg, **overrides) if overrides else cfg


def _prepare(fake_x0, real_x0, cfg: OTConfig):
    if fake_x0.ndim != 5 or fake_x0.shape != real_x0.shape:
        raise ValueError(
            f"expected fake_x0 and real_x0 of the same shape [B,C,F,H,W], got {fake_x0.shape} and {real_x0.shape}"
        )
    dtype = jnp.dtype(cfg.compute_dtype)
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("compute_dtype='float64' needs jax x64 enabled (e.g. `with jax.enable_x64(True):`)")
    sg = jax.lax.stop_gradient
    return sg(fake_x0).astype(dtype), sg(real_x0).astype(dtype)


def _frame_costs(fake, real, cfg: OTConfig) -> jax.Array:
    """[B,C,F,H,W] x 2 -> [B,F] costs (vmapped over B*F) in full-precision matmuls."""
    b, c, f, h, w = fake.shape
    fk = jnp.moveaxis(fake, 2, 1).reshape(b * f, c, h, w)
    rl = jnp.moveaxis(real, 2, 1).reshape(b * f, c, h, w)
    with jax.default_matmul_precision("highest"):
        out = jax.vmap(functools.partial(_frame_cost, cfg=cfg))(fk, rl)
    return out.reshape(b, f)


_frame_costs_jit = jax.jit(_frame_costs, static_argnames=("cfg",))


def ot_cost(fake_x0: jax.Array, real_x0: jax.Array, config: OTConfig | None = None, **overrides) -> jax.Array:
    """Per-(b, frame) OT transport cost ``sum(P * C)`` between pooled fake and real frames.

    Args:
      fake_x0, real_x0: ``[B, C, F, H, W]`` x0 predictions (any float dtype).
      config: :class:`OTConfig` (release defaults if None); ``overrides`` replace its fields.

    Returns:
      ``[B, F]`` in ``config.compute_dtype`` (float32 by default). Always computed by ott-jax
      (``PointCloud`` + ``Sinkhorn``, lse mode, fixed iterations), whatever ``grad_mode``;
      with ``debias`` it is ``cost(x,y) - cost(x,x)/2 - cost(y,y)/2``. No gradient flows
      through it (a diagnostic: use :func:`ot_direction` for the direction, whose
      ``return_cost=True`` gives the same numbers from the same pass).
    """
    cfg = _resolve(config, overrides)
    fake, real = _prepare(fake_x0, real_x0, cfg)
    if cfg.grad_mode != "envelope":
        cfg = dataclasses.replace(cfg, grad_mode="envelope")
    return _frame_costs_jit(fake, real, cfg)


def ot_direction(
    fake_x0: jax.Array,
    real_x0: jax.Array,
    config: OTConfig | None = None,
    *,
    return_cost: bool = False,
    **overrides,
):
    """VDOT's OT direction ``g`` for the generator (docs/method.md).

    ``g = d(sum over frames of sum(P * C)) / d(fake_x0)``: per (b, frame), both frames are
    ``pool x pool`` average-pooled into point clouds in R^C, entropic OT (``epsilon``,
    ``iterations`` fixed log-domain Sinkhorn steps, uniform weights, ``tau_a/tau_b``,
    optionally debiased) gives a plan P, and the transport cost ``sum(P * C)`` is
    differentiated w.r.t. the fake points and back through the pooling. ``g`` is then
    normalised to unit L2 norm per (b, frame) over (C, H, W) (``/(||g|| + norm_eps)``) if
    ``normalize``. ``real_x0`` is a constant (stop_gradient); so is ``fake_x0``: the result
    is a target direction, not a differentiable function of its inputs.

    Gradient modes (``grad_mode``): ``"unrolled"`` (default; autodiff through the fixed
    iterations, like the release), ``"envelope"`` (plan held fixed: ``g_i = d/dx_i sum_j
    P_ij c(x_i, y_j)``, the paper's form), ``"implicit"`` (ott's implicit differentiation;
    needs ``compute_dtype="float64"``). See the module docstring for how they compare.

    Args:
      fake_x0: ``[B, C, F, H, W]`` fake (critic) x0 prediction, any float dtype.
      real_x0: ``[B, C, F, H, W]`` real (teacher) x0 prediction.
      config: :class:`OTConfig`; release defaults if None. ``overrides`` replace fields.
      return_cost: also return the ``[B, F]`` costs of the same forward pass.

    Returns:
      ``g`` of shape ``[B, C, F, H, W]`` and the dtype of ``fake_x0`` (computed in
      ``compute_dtype``, float32 by default); or ``(g, costs)`` if ``return_cost``.
    """
    cfg = _resolve(config, overrides)
    fake, real = _prepare(fake_x0, real_x0, cfg)
    g, per_frame = _direction(fake, real, cfg)
    g = g.astype(fake_x0.dtype)
    return (g, per_frame) if return_cost else g


@functools.partial(jax.jit, static_argnames=("cfg",))
def _direction(fake, real, cfg: OTConfig):
    def total(fk):
        per_frame = _frame_costs(fk, real, cfg)
        return jnp.sum(per_frame), per_frame

    g, per_frame = jax.grad(total, has_aux=True)(fake)
    if cfg.normalize:
        norm = jnp.sqrt(jnp.sum(jnp.square(g), axis=(1, 3, 4), keepdims=True))
        g = g / (norm + cfg.norm_eps)
    return g, per_frame


def ot_loss(x_hat: jax.Array, direction: jax.Array, factor: float = 0.1, reduction: str = "sum") -> jax.Array:
    """The OT surrogate ``0.5 * reduce((x_hat - sg(x_hat - factor * direction))^2)`` with the release's batch
    semantics (docs/method.md, "Batch semantics").

    ``reduction="sum"`` (release): summed over each sample's elements, then **averaged over the batch** (axis
    0). The release sums over its single sample per GPU and FSDP averages gradients over ranks, so a batch of
    B copies of one sample gives that sample's loss, whatever the batch size or mesh (the sum is over the
    global array under ``jit``). ``"mean"`` divides by ``x_hat.size`` instead. The gradient w.r.t. ``x_hat``
    is ``factor * direction / B`` ("sum") or ``factor * direction / x_hat.size`` ("mean").

    Evaluated by ``vdot_jax.distill.losses.surrogate_loss`` in a form whose gradient is exact (the literal one
    loses it to rounding). Computed in float32 (or wider).
    """
    direction = direction.astype(jnp.promote_types(direction.dtype, jnp.float32))  # scale after widening
    if reduction == "sum":
        return surrogate_loss(x_hat, factor * direction, "sum") / x_hat.shape[0]
    return surrogate_loss(x_hat, factor * direction, reduction)
