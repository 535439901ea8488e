"""The one update step of every trainer: gradient accumulation, optax update, non-finite skip, EMA, and the
cache of jitted step programs. Used by the Distiller's four phases (``vdot_jax.distill.steps``) and the
FlowTrainer (``vdot_jax.train.flow``).

    loss, metrics, grads = accumulate_gradients(loss_fn, params, batch, key)   # mean over the micro-batches
    params, opt_state, finite, metrics = update(loss_fn, tx, params, opt_state, batch, key)
    ema = ema_update(ema, params, step, start, decay)

``loss_fn(params, micro_batch, key) -> (loss, metrics)``; ``batch`` is a pytree of arrays with a leading
micro-batch axis A. Accumulation is a ``lax.scan`` over A (one micro-batch's activations live at a time), each
micro-batch with its own key from ``split(key, A)``; the sums are divided by A. A non-finite loss or gradient
leaves parameters and optimizer state as they were (``finite`` says so; the caller counts it).

With ``in_host`` (``config.mesh.opt_state_memory = "host"``) the optimizer state and the EMA live in the host's
pinned memory between steps (their shardings say ``memory_kind="pinned_host"``): the update brings them to the
device only after the gradients are accumulated, so they never share HBM with the activations, and sends the
new values back. The values are those of the device placement.

``grad_dtype`` (``config.mesh.grad_dtype = "compute"``): each micro-batch's gradient of the layer kernels is held
in the model's compute dtype and added into the float32 accumulator (``accumulate_gradients`` says why the values
are those of float32 gradients on one device).

The optimizer is ``clipped_adamw`` (``optax.chain(clip_by_global_norm, adamw)``, its state and checkpoints
unchanged). Its update is streamed over the stacked layer axis: for the matmul kernels of the layer stacks
(``blocks``, ``vace_blocks``: a leading layer axis; ``models.layers.is_layer_kernel``; their small leaves are
updated at once) a loop over the layers brings one layer's gradient, parameters and moments in (from host memory
when ``in_host``: ``models.layers.to_device`` moves what the traced arguments say is in host memory), updates them
and writes them back in place, so the moments never sit on the device together (measured, docs/scaling.md:
without it XLA brought every moment in at once and held the update's temporaries for all of them). The global
norm clip is computed once over the whole gradient first.

``grads_in_host`` (``config.mesh.grad_memory = "host"``): the float32 gradient accumulator of the layer stacks'
matmul kernels lives in host memory; each micro-batch's gradient is added into it one layer at a time, and the
norm, the finiteness check and the update read it one layer at a time too.

``moment_dtype`` (``config.optim.moment_dtype = "bfloat16"``): AdamW's mu and nu are stored in that dtype (half
the optimizer state's bytes, in host memory or on the device), loaded to float32 for the update and rounded
once when stored (the release's AdamW state is bf16 because its parameters are; docs/release_parity.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from vdot_jax.models.layers import in_host, is_layer_kernel, to_device

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


def tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def compute_copy(params, dtype):
    """``params`` with the layer stacks' matmul kernels cast to ``dtype`` (the model's compute dtype), the rest
    as they are. The models use these kernels only cast to the compute dtype (``models.layers.Dense``), so a
    forward from this copy is the forward from ``params``; its gradient for them comes out in ``dtype``."""
    if dtype is None:
        return params
    return jax.tree_util.tree_map_with_path(
        lambda path, a: a.astype(dtype) if is_layer_kernel(path) and jnp.issubdtype(a.dtype, jnp.floating) else a,
        params)


def _layerwise(path, a) -> bool:
    """Whether a leaf is handled a layer at a time (streamed update, host-kept gradients): a stack's kernel."""
    return is_layer_kernel(path) and a.ndim >= 1


def _add_layerwise(acc, g, last, accum: int):
    """``acc + g`` for an accumulator ``acc`` kept in host memory, one layer at a time (its one float32 buffer is
    updated in place; no device copy of it exists), divided by ``accum`` where ``last``: the mean, with the same
    float32 operations as on the device."""
    def body(i, a):
        s = to_device(_index(a, i)) + _index(g, i).astype(a.dtype)
        return jax.lax.dynamic_update_index_in_dim(a, to_host(jnp.where(last, s / accum, s), True), i, 0)

    return jax.lax.fori_loop(0, acc.shape[0], body, acc)


def accumulate_gradients(loss_fn: LossFn, params, batch, key: jax.Array, grad_dtype=None, grads_in_host: bool = False,
                         sharding=None, prepare=None) -> tuple[jax.Array, dict, Any]:
    """(loss, metrics, grads), each the mean over the micro-batches of ``batch``. The gradient accumulator is
    the scan's carry (in the parameters' dtype): a sharding constraint on it (or on ``grads``) belongs here.

    ``grad_dtype`` (the model's compute dtype, e.g. bfloat16; None: off): each micro-batch's gradient of the
    layer kernels is taken with respect to their ``compute_copy`` and so is held in that dtype, and added into
    the float32 accumulator -- one float32 gradient buffer instead of two (docs/scaling.md). On one device the
    values are those of float32 gradients: a kernel's gradient is a matmul of compute-dtype operands, already
    rounded to that dtype before it was converted; across devices, the sum of the chips' partial gradients of
    one layer is rounded to it too (the micro-batches are still summed in float32).

    ``grads_in_host`` (``config.mesh.grad_memory = "host"``): the accumulator of the layer stacks' matmul kernels
    lives in host memory and each micro-batch's gradient is added into it one layer at a time (the same float32
    adds, the mean taken in the last one); the returned ``grads`` keep those leaves in host memory, for
    ``update`` to bring in a layer at a time. ``sharding``: the parameters' shardings, which the accumulator
    takes.

    ``prepare(micro_batch, key) -> micro_batch``: what a micro-batch's loss reads without differentiating it (a
    critic phase's generator samples), computed for every micro-batch before the gradient loop, with the key
    that micro-batch's loss gets. Its working set -- the frozen network's weights cast to the compute dtype,
    which XLA hoists out of any loop that reads them -- is then dead before the first backward."""
    accum = jax.tree.leaves(batch)[0].shape[0]
    keys = jax.random.split(key, accum)
    if prepare is not None:
        batch = jax.lax.map(lambda bk: prepare(*bk), (batch, keys))
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    work = compute_copy(params, grad_dtype)
    in_host_ = lambda path, a: grads_in_host and _layerwise(path, a)  # noqa: E731

    def micro(carry, xs):
        b, k, i = xs
        (loss, metrics), grads = grad_fn(work, b, k)
        add = lambda c, x: c + x.astype(c.dtype)  # noqa: E731
        acc = jax.tree_util.tree_map_with_path(
            lambda path, c, x: _add_layerwise(c, x, i == accum - 1, accum) if in_host_(path, c) else add(c, x),
            carry[2], grads)
        return (add(carry[0], loss), jax.tree.map(add, carry[1], metrics), acc), None

    shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], batch), keys[0]))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0][0], shapes[0][1], shapes[1]))
    if grads_in_host:
        # sharded as the parameters: else XLA may lay the accumulator out as the gradient comes and keep a second
        # host copy to reshard it at the end (measured, tests/test_footprint.py)
        def place(path, a, sh=None):
            if not in_host_(path, a):
                return a
            return to_host(a if sh is None else jax.lax.with_sharding_constraint(a, sh), True)

        rest = () if sharding is None else (sharding,)
        zero = (*zero[:2], jax.tree_util.tree_map_with_path(place, zero[2], *rest))
    (loss, metrics, grads), _ = jax.lax.scan(micro, zero, (batch, keys, jnp.arange(accum)))
    mean = lambda a: a / accum  # noqa: E731
    grads = jax.tree_util.tree_map_with_path(lambda p, a: a if in_host_(p, a) else mean(a), grads)
    return mean(loss), jax.tree.map(mean, metrics), grads


def grad_stats(grads) -> tuple[jax.Array, jax.Array]:
    """(all finite, global norm) of ``grads``; leaves kept in host memory are read one layer at a time."""
    sq, fin = [], []
    for x in jax.tree.leaves(grads):
        if in_host(x):
            def body(i, c, x=x):
                layer = to_device(_index(x, i)).astype(jnp.float32)
                return c[0] + jnp.sum(jnp.square(layer)), c[1] & jnp.all(jnp.isfinite(layer))

            s, f = jax.lax.fori_loop(0, x.shape[0], body, (jnp.zeros((), jnp.float32), jnp.array(True)))
        else:
            s, f = jnp.sum(jnp.square(x.astype(jnp.float32))), jnp.all(jnp.isfinite(x))
        sq.append(s)
        fin.append(f)
    return jnp.all(jnp.stack(fin)), jnp.sqrt(sum(sq))


def grads_kept_in_host(config) -> bool:
    """Whether the run accumulates the layer stacks' gradients in host memory (``mesh.grad_memory``)."""
    mesh = config.get("mesh") or {}
    return mesh.get("grad_memory", "device") == "host"


def state_in_host(config) -> bool:
    """Whether the run keeps its optimizer state and EMA in host memory (``mesh.opt_state_memory``)."""
    mesh = config.get("mesh") or {}
    return mesh.get("opt_state_memory", "device") == "host"


def micro_grad_dtype(config, runtime):
    """The ``grad_dtype`` of ``accumulate_gradients`` for this run (``mesh.grad_dtype``) and model runtime."""
    mesh = config.get("mesh") or {}
    if mesh.get("grad_dtype", "float32") != "compute" or runtime.compute_dtype == jnp.float32:
        return None
    return runtime.compute_dtype


def to_host(tree, in_host: bool):
    """``tree`` sent to host memory inside a jitted step (no-op unless ``in_host``); ``models.layers.to_device``
    brings host-kept values in."""
    return jax.device_put(tree, jax.memory.Space.Host) if in_host and tree is not None else tree



@dataclass(frozen=True)
class ClippedTransform:
    """``optax.chain(optax.clip_by_global_norm(clip_norm), inner)`` with ``inner`` elementwise per parameter
    (AdamW: its moments have the parameters' tree, its counts are scalars): same ``init``, same state (so
    checkpoints are unchanged) and same ``update``; ``update`` below streams ``inner`` over the layer axis.
    ``moment_dtype`` (None: as ``inner`` makes them): the state's floating-point leaves (AdamW's mu and nu) are
    stored in it, ``load``ed to float32 for each update and ``store``d rounded."""

    clip_norm: float
    inner: optax.GradientTransformation
    moment_dtype: Any = None

    @property
    def chain(self) -> optax.GradientTransformation:
        return optax.chain(optax.clip_by_global_norm(self.clip_norm), self.inner)

    def _cast(self, tree, dtype):
        if self.moment_dtype is None:
            return tree
        return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)

    def store(self, tree):
        return self._cast(tree, self.moment_dtype)

    def load(self, tree):
        return self._cast(tree, jnp.float32)

    def init(self, params):
        return self.store(self.chain.init(params))

    def update(self, grads, state, params=None):
        updates, state = self.chain.update(grads, self.load(state), params)
        return updates, self.store(state)


def clipped_adamw(lr, clip_norm: float, b1: float, b2: float, weight_decay: float,
                  moment_dtype: str = "float32") -> ClippedTransform:
    """Every trainer's optimizer: global-norm clip, then AdamW, its moments stored in ``moment_dtype``."""
    return ClippedTransform(clip_norm, optax.adamw(lr, b1=b1, b2=b2, weight_decay=weight_decay),
                            None if moment_dtype == "float32" else jnp.dtype(moment_dtype))


def _index(a, i):
    return jax.lax.dynamic_index_in_dim(a, i, keepdims=False)


def _streamed_update(tx: ClippedTransform, grads, opt_state, params, finite, g_norm, in_host: bool):
    """(new params, new opt_state) of ``tx`` from ``grads``, equal to ``tx.update`` + ``apply_updates`` (and
    unchanged where not ``finite``), computed one layer at a time for the leaves of the layer stacks."""
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    p_leaves = [leaf for _, leaf in path_leaves]
    g_leaves = treedef.flatten_up_to(grads)
    is_param_tree = lambda x: jax.tree.structure(x) == treedef  # noqa: E731 -- AdamW's mu and nu
    clip_state, inner_state = opt_state
    s_leaves, s_def = jax.tree.flatten(inner_state, is_leaf=is_param_tree)
    tree_pos = [k for k, x in enumerate(s_leaves) if is_param_tree(x)]
    s_leaves = [x if k in tree_pos else to_device(x) for k, x in enumerate(s_leaves)]  # the counts
    moments = [treedef.flatten_up_to(s_leaves[k]) for k in tree_pos]  # [moment][leaf]
    trigger = g_norm < tx.clip_norm
    clip = lambda t: jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * tx.clip_norm)  # noqa: E731 -- optax's

    def inner(idx, g, p, m):
        """The inner update of the leaves ``idx`` (lists g, p, m[moment]): (new p, new m, new inner state)."""
        leaves = list(s_leaves)
        for k, mk in zip(tree_pos, m):
            leaves[k] = tx.load(mk)
        updates, new_state = tx.inner.update([clip(x) for x in g], s_def.unflatten(leaves), p)
        new_p = [jnp.where(finite, (x + u).astype(x.dtype), x) for x, u in zip(p, updates)]
        new_leaves = jax.tree.flatten(new_state, is_leaf=lambda x: isinstance(x, list))[0]
        new_m = [[jnp.where(finite, a, b) for a, b in zip(tx.store(new_leaves[k]), mk)] for k, mk in zip(tree_pos, m)]
        return new_p, new_m, new_leaves

    groups: dict = {}
    rest = []
    for j, (path, leaf) in enumerate(path_leaves):
        if _layerwise(path, leaf):  # the small stacked leaves at once (models.layers says why)
            groups.setdefault(leaf.shape[0], []).append(j)
        else:
            rest.append(j)
    new_p, new_m = list(p_leaves), [list(m) for m in moments]

    # the leaves outside the stacks (embeddings, heads: small) at once; their call also gives the new counts
    rest_p, rest_m, new_leaves = inner(rest, [g_leaves[j] for j in rest], [p_leaves[j] for j in rest],
                                       [to_device([m[j] for j in rest]) for m in moments])
    for j, x in zip(rest, rest_p):
        new_p[j] = x
    for k, mk in enumerate(rest_m):
        for j, x in zip(rest, to_host(mk, in_host)):
            new_m[k][j] = x

    for layers, idx in groups.items():
        def body(i, carry, idx=idx):
            p, m = carry
            g_i = to_device([_index(g_leaves[j], i) for j in idx])  # (host-kept: mesh.grad_memory)
            m_i = [to_device([_index(x, i) for x in mk]) for mk in m]
            p_i, m_i, _ = inner(idx, g_i, [_index(x, i) for x in p], m_i)
            p = [jax.lax.dynamic_update_index_in_dim(x, y, i, 0) for x, y in zip(p, p_i)]
            m = [[jax.lax.dynamic_update_index_in_dim(x, y, i, 0) for x, y in zip(mk, to_host(yk, in_host))]
                 for mk, yk in zip(m, m_i)]
            return p, m

        init = ([p_leaves[j] for j in idx], [[mk[j] for j in idx] for mk in moments])
        p, m = jax.lax.fori_loop(0, layers, body, init)
        for n, j in enumerate(idx):
            new_p[j] = p[n]
            for k in range(len(moments)):
                new_m[k][j] = m[k][n]

    out_leaves = [a if k in tree_pos else to_host(jnp.where(finite, a, b), in_host)
                  for k, (a, b) in enumerate(zip(new_leaves, s_leaves))]
    for k, mk in zip(tree_pos, new_m):
        out_leaves[k] = treedef.unflatten(mk)
    return treedef.unflatten(new_p), (clip_state, s_def.unflatten(out_leaves))


def update(loss_fn: LossFn, tx, params, opt_state, batch, key: jax.Array, in_host: bool = False, grad_dtype=None,
           grads_in_host: bool = False, sharding=None, prepare=None):
    """One optimizer update from the accumulated gradient: (params, opt_state, finite, metrics). When the loss
    or a gradient is not finite, ``params`` and ``opt_state`` come back unchanged. ``metrics`` adds
    ``grad_norm`` (of the accumulated gradient) and ``finite`` (1.0 or 0.0) to the loss's own. ``in_host``:
    ``opt_state`` arrives in host memory and goes back there. A ``ClippedTransform`` is streamed over the layers
    (module docstring); any other optax transformation is applied to the whole tree at once. ``grad_dtype``,
    ``grads_in_host``, ``sharding`` (the parameters' shardings), ``prepare``: as ``accumulate_gradients``'."""
    loss, metrics, grads = accumulate_gradients(loss_fn, params, batch, key, grad_dtype, grads_in_host, sharding,
                                                prepare)
    if grads_in_host:  # the norm summed layer by layer: equal to optax's up to float32 rounding
        finite, g_norm = grad_stats(grads)
        finite = jnp.isfinite(loss) & finite
    else:
        finite = jnp.isfinite(loss) & all_finite(grads)
        g_norm = optax.global_norm(grads)
    if isinstance(tx, ClippedTransform):
        new_params, new_opt = _streamed_update(tx, grads, opt_state, params, finite, g_norm, in_host)
    else:
        opt_state, grads = to_device(opt_state), to_device(grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = tree_where(finite, optax.apply_updates(params, updates), params)
        new_opt = to_host(tree_where(finite, new_opt, opt_state), in_host)
    metrics = {**metrics, "grad_norm": g_norm, "finite": finite.astype(jnp.float32)}
    return new_params, new_opt, finite, metrics


def init_in_place(fn, tree, sharding=None):
    """``fn(tree)`` (an optimizer's ``init``, an EMA's copy) created directly in ``sharding`` -- e.g. in host
    memory with ``mesh.opt_state_memory=host`` -- rather than on the device first, so a state that fits the
    chips only with its moments in host memory can start. None: ``fn(tree)`` where ``tree`` lives."""
    if sharding is None:
        return fn(tree)
    return jax.jit(fn, out_shardings=sharding)(tree)


def ema_update(ema, params, step: jax.Array, start: int, decay: float, in_host: bool = False):
    """``decay * ema + (1 - decay) * params``; before training step ``start`` the EMA is a copy of ``params``
    (decay 0, as the release). ``ema`` None (no EMA kept) stays None. ``in_host``: as ``update``'s."""
    if ema is None:
        return None
    d = jnp.where(step >= start, decay, 0.0)
    return to_host(jax.tree.map(lambda e, p: d * e + (1 - d) * p, to_device(ema), params), in_host)


def _sharding_key(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple(leaves)


class StepPrograms:
    """The jitted step programs of a trainer (each donates its state argument), one per name AND shardings:
    a program asked for with other shardings is another program, never the first one's."""

    def __init__(self):
        self._jitted: dict = {}

    def get(self, name: str, fn: Callable[[], Callable], state_sharding=None, batch_sharding=None):
        """The jitted ``fn()`` for ``name``; ``fn`` builds the step function (called on a miss only)."""
        key = (name, _sharding_key(state_sharding), _sharding_key(batch_sharding))
        if key not in self._jitted:
            kw = {}
            if state_sharding is not None:
                kw = dict(in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None))
            self._jitted[key] = jax.jit(fn(), donate_argnums=0, **kw)
        return self._jitted[key]
