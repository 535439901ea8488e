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
new values back. The values are those of the device placement. XLA brings them in all at once (measured,
docs/scaling.md): the update itself still holds them on the device.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, Any, jax.Array], tuple[jax.Array, dict]]


def tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def accumulate_gradients(loss_fn: LossFn, params, batch, key: jax.Array) -> tuple[jax.Array, dict, Any]:
    """(loss, metrics, grads), each the mean over the micro-batches of ``batch``. The gradient accumulator is
    the scan's carry: a sharding constraint on it (or on ``grads``) belongs here."""
    accum = jax.tree.leaves(batch)[0].shape[0]
    keys = jax.random.split(key, accum)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def micro(carry, xs):
        b, k = xs
        (loss, metrics), grads = grad_fn(params, b, k)
        return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

    shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], batch), keys[0]))
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0][0], shapes[0][1], shapes[1]))
    (loss, metrics, grads), _ = jax.lax.scan(micro, zero, (batch, keys))
    return jax.tree.map(lambda a: a / accum, (loss, metrics, grads))


def state_in_host(config) -> bool:
    """Whether the run keeps its optimizer state and EMA in host memory (``mesh.opt_state_memory``)."""
    mesh = config.get("mesh") or {}
    return mesh.get("opt_state_memory", "device") == "host"


def to_device(tree, in_host: bool):
    """``tree`` moved from host memory to the device's inside a jitted step (no-op unless ``in_host``)."""
    return jax.device_put(tree, jax.memory.Space.Device) if in_host and tree is not None else tree


def to_host(tree, in_host: bool):
    return jax.device_put(tree, jax.memory.Space.Host) if in_host and tree is not None else tree


def update(loss_fn: LossFn, tx: optax.GradientTransformation, params, opt_state, batch, key: jax.Array,
           in_host: bool = False):
    """One optimizer update from the accumulated gradient: (params, opt_state, finite, metrics). When the loss
    or a gradient is not finite, ``params`` and ``opt_state`` come back unchanged. ``metrics`` adds
    ``grad_norm`` (of the accumulated gradient) and ``finite`` (1.0 or 0.0) to the loss's own. ``in_host``:
    ``opt_state`` arrives in host memory and goes back there."""
    loss, metrics, grads = accumulate_gradients(loss_fn, params, batch, key)
    opt_state = to_device(opt_state, in_host)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.isfinite(loss) & all_finite(grads)
    new_params = tree_where(finite, new_params, params)
    new_opt = to_host(tree_where(finite, new_opt, opt_state), in_host)
    metrics = {**metrics, "grad_norm": optax.global_norm(grads), "finite": finite.astype(jnp.float32)}
    return new_params, new_opt, finite, metrics


def ema_update(ema, params, step: jax.Array, start: int, decay: float, in_host: bool = False):
    """``decay * ema + (1 - decay) * params``; before training step ``start`` the EMA is a copy of ``params``
    (decay 0, as the release). ``ema`` None (no EMA kept) stays None. ``in_host``: as ``update``'s."""
    if ema is None:
        return None
    d = jnp.where(step >= start, decay, 0.0)
    return to_host(jax.tree.map(lambda e, p: d * e + (1 - d) * p, to_device(ema, in_host), params), in_host)


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
