"""Plain flow-matching training of one ``WanModel`` (a teacher, or fine-tuning), with the Distiller's interface.

    trainer = FlowTrainer(model, config)          # config: the training config (its ``flow`` and ``optim`` groups)
    state = trainer.init_state(model, seed=0)     # FlowState: step, params, opt, ema, rng, skipped
    state, metrics = trainer.train_step(state, batch)
    trainer.phase("flow", state_sharding, batch_sharding)   # the jitted step (built once, donates the state)

The loss is the release's flow-matching objective on the ground-truth latents: t ~ U[0, 1000) shifted as a sigma
by ``flow.timestep_shift`` (clamped to [1, 999]), x_t = (1 - s) x0 + s e, target v = e - x0,
``mean((model(x_t, t) - v)^2)`` in float32. With probability ``flow.text_dropout`` a sample is trained on the
negative prompt instead of its caption (what classifier-free guidance needs). Batches as the Distiller's:
``latents`` [A,B,C,F,H,W], ``text``/``neg_text`` [A,B,L,D], optional ``context``. Gradient accumulation is a
``lax.scan`` over A; optax: clip by global norm, AdamW with a constant or cosine schedule after a linear
warm-up; a non-finite loss or gradient leaves parameters and optimizer state untouched and is counted;
optional EMA of the parameters.
"""

from __future__ import annotations

import collections
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vdot_jax.distill.timesteps import add_noise, sample_shifted
from vdot_jax.models.wan import WanModel

PHASES = ("flow",)


class FlowState(flax.struct.PyTreeNode):
    step: jax.Array  # int32, completed steps
    params: Any  # nnx.State of the model's Params, float32
    opt: Any
    ema: Any  # same tree as params, or None
    rng: jax.Array  # uint32 key data
    skipped: jax.Array  # int32, updates skipped because the loss or a gradient was not finite


def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def learning_rate(config: ml_collections.ConfigDict):
    f = config.flow
    total = max(int(config.train.steps), 1)
    warm = int(f.warmup_steps)
    if f.schedule == "constant":
        main = optax.constant_schedule(f.lr)
    elif f.schedule == "cosine":
        main = optax.cosine_decay_schedule(f.lr, max(total - warm, 1), alpha=f.final_lr_fraction)
    else:
        raise ValueError(f"config.flow.schedule must be 'constant' or 'cosine', got {f.schedule!r}")
    if warm <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, f.lr, warm), main], [warm])


class FlowTrainer:
    """Static parts (graphdef, optimizer, config) and the jitted step; the model may be abstract."""

    state_models = {"params": "model", "opt": "model", "ema": "model"}

    def __init__(self, model: WanModel, config: ml_collections.ConfigDict):
        self.config = config
        self.model_def, _ = nnx.split(model)
        f = config.flow
        self.schedule = learning_rate(config)
        self.tx = optax.chain(optax.clip_by_global_norm(f.clip_norm),
                              optax.adamw(self.schedule, b1=f.b1, b2=f.b2, weight_decay=f.weight_decay))
        self.trace_counts: collections.Counter = collections.Counter()
        self._jitted: dict[str, Any] = {}

    def phases(self, step: int) -> tuple[str, ...]:
        return PHASES

    def init_state(self, model: WanModel, seed: int = 0, consume: bool = False) -> FlowState:
        params = nnx.state(model)
        if not consume:
            params = jax.tree.map(jnp.copy, params)
        params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
        ema = jax.tree.map(jnp.copy, params) if self.config.flow.ema_decay > 0 else None
        return FlowState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params), ema=ema,
                         rng=jax.random.key_data(jax.random.key(seed)), skipped=jnp.zeros((), jnp.int32))

    def model(self, state: FlowState, ema: bool = False) -> WanModel:
        return nnx.merge(self.model_def, state.ema if ema and state.ema is not None else state.params)

    def _loss(self, params, batch, key):
        f = self.config.flow
        x0 = batch["latents"].astype(jnp.float32)
        b = x0.shape[0]
        k_t, k_e, k_d = jax.random.split(key, 3)
        t = sample_shifted(k_t, b, low=0.0, high=1000.0, shift=f.timestep_shift, clamp=(1.0, 999.0))
        noise = jax.random.normal(k_e, x0.shape, jnp.float32)
        text = batch["text"]
        if f.text_dropout > 0:
            drop = jax.random.uniform(k_d, (b,)) < f.text_dropout
            text = jnp.where(drop[:, None, None], batch["neg_text"], text)
        v = nnx.merge(self.model_def, params)(add_noise(x0, noise, t), t, text, batch.get("context"))
        loss = jnp.mean(jnp.square(v.astype(jnp.float32) - (noise - x0)))
        return loss, {"flow_loss": loss}

    def _step(self, state: FlowState, batch: dict):
        self.trace_counts["flow"] += 1  # trace time only: counts compilations
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        accum = jax.tree.leaves(batch)[0].shape[0]
        keys = jax.random.split(key, accum)
        grad_fn = jax.value_and_grad(self._loss, has_aux=True)
        params = state.params

        def micro(carry, xs):
            b, k = xs
            (loss, metrics), grads = grad_fn(params, b, k)
            return jax.tree.map(jnp.add, carry, (loss, metrics, grads)), None

        shapes = jax.eval_shape(lambda: grad_fn(params, jax.tree.map(lambda a: a[0], batch), keys[0]))
        zero = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes[0][0], shapes[0][1], shapes[1]))
        (loss, metrics, grads), _ = jax.lax.scan(micro, zero, (batch, keys))
        loss, metrics, grads = jax.tree.map(lambda a: a / accum, (loss, metrics, grads))
        updates, new_opt = self.tx.update(grads, state.opt, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        new_params = _tree_where(finite, new_params, params)
        new_opt = _tree_where(finite, new_opt, state.opt)
        ema = state.ema
        if ema is not None:
            d = jnp.where(state.step >= self.config.flow.ema_start, self.config.flow.ema_decay, 0.0)
            ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, new_params)
        metrics = {**metrics, "grad_norm": optax.global_norm(grads), "finite": finite.astype(jnp.float32),
                   "lr": jnp.asarray(self.schedule(state.step), jnp.float32)}
        return state.replace(params=new_params, opt=new_opt, ema=ema,
                             skipped=state.skipped + (~finite).astype(jnp.int32)), metrics

    def phase(self, name: str = "flow", state_sharding=None, batch_sharding=None):
        if name != "flow":
            raise ValueError(f"FlowTrainer has one phase, 'flow', not {name!r}")
        if name not in self._jitted:
            kw = {}
            if state_sharding is not None:
                kw = dict(in_shardings=(state_sharding, batch_sharding), out_shardings=(state_sharding, None))
            self._jitted[name] = jax.jit(self._step, donate_argnums=0, **kw)
        return self._jitted[name]

    def train_step(self, state: FlowState, batch: dict) -> tuple[FlowState, dict]:
        state, metrics = self.phase("flow")(state, batch)
        return state.replace(step=state.step + 1), metrics
