"""Plain flow-matching training of one ``WanModel`` (a teacher, or fine-tuning), with the Distiller's interface.

    trainer = FlowTrainer(model, config)          # config: the training config (its ``flow`` and ``optim`` groups)
    state = trainer.init_state(model, seed=0)     # FlowState: step, params, opt, ema, rng, skipped
    state, metrics = trainer.train_step(state, batch)
    trainer.phase("flow", state_sharding, batch_sharding)   # the jitted step (built once, donates the state)

The loss is the release's flow-matching objective on the ground-truth latents: t ~ U[0, 1000) shifted as a sigma
by ``flow.timestep_shift`` (clamped to [1, 999]), x_t = (1 - s) x0 + s e, target v = e - x0,
``mean((model(x_t, t) - v)^2)`` in float32. With probability ``flow.text_dropout`` a sample is trained on the
negative prompt instead of its caption (what classifier-free guidance needs). Batches as the Distiller's:
``latents`` [A,B,C,F,H,W], ``text``/``neg_text`` [A,B,L,D], optional ``context``. The update is the Distiller's
(``vdot_jax.train.update``: a ``lax.scan`` over A, a non-finite loss or gradient leaves parameters and optimizer
state untouched and is counted, optional EMA); optax: clip by global norm, AdamW with a constant or cosine
schedule after a linear warm-up.
"""

from __future__ import annotations

import collections
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from vdot_jax.distill.losses import flow_loss
from vdot_jax.distill.timesteps import add_noise, sample_shifted
from vdot_jax.models.wan import WanModel
from vdot_jax.train.update import (StepPrograms, clipped_adamw, ema_update, grads_kept_in_host, init_in_place,
                                   micro_grad_dtype, state_in_host, update)

PHASES = ("flow",)


class FlowState(flax.struct.PyTreeNode):
    step: jax.Array  # int32, completed steps
    params: Any  # nnx.State of the model's Params, float32
    opt: Any
    ema: Any  # same tree as params, or None
    rng: jax.Array  # uint32 key data
    skipped: jax.Array  # int32, updates skipped because the loss or a gradient was not finite


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
        self._runtime = model.runtime  # read at trace time
        f = config.flow
        self.schedule = learning_rate(config)
        self.tx = clipped_adamw(self.schedule, f.clip_norm, f.b1, f.b2, f.weight_decay,
                                config.optim.get("moment_dtype", "float32"))
        self.trace_counts: collections.Counter = collections.Counter()
        self._programs = StepPrograms()

    def phases(self, step: int) -> tuple[str, ...]:
        return PHASES

    def init_state(self, model: WanModel, seed: int = 0, consume: bool = False, shardings=None) -> FlowState:
        params = nnx.state(model)
        if not consume:
            params = jax.tree.map(jnp.copy, params)
        params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
        sh = lambda field: None if shardings is None else getattr(shardings, field)  # noqa: E731
        ema = (init_in_place(lambda t: jax.tree.map(jnp.copy, t), params, sh("ema"))
               if self.config.flow.ema_decay > 0 else None)
        return FlowState(step=jnp.zeros((), jnp.int32), params=params,
                         opt=init_in_place(self.tx.init, params, sh("opt")), ema=ema,
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
        loss = flow_loss(v, noise, x0)
        return loss, {"flow_loss": loss}

    def _step(self, state: FlowState, batch: dict, params_sharding=None):
        self.trace_counts["flow"] += 1  # trace time only: counts compilations
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        host = state_in_host(self.config)
        params, opt, finite, metrics = update(self._loss, self.tx, state.params, state.opt, batch, key, in_host=host,
                                              grad_dtype=micro_grad_dtype(self.config, self._runtime),
                                              grads_in_host=grads_kept_in_host(self.config), sharding=params_sharding)
        f = self.config.flow
        ema = ema_update(state.ema, params, state.step, f.ema_start, f.ema_decay, in_host=host)
        metrics = {**metrics, "lr": jnp.asarray(self.schedule(state.step), jnp.float32)}
        return state.replace(params=params, opt=opt, ema=ema,
                             skipped=state.skipped + (~finite).astype(jnp.int32)), metrics

    def phase(self, name: str = "flow", state_sharding=None, batch_sharding=None):
        """The jitted step for these shardings (built once each; donates the state)."""
        if name != "flow":
            raise ValueError(f"FlowTrainer has one phase, 'flow', not {name!r}")
        params_sharding = None if state_sharding is None else state_sharding.params
        return self._programs.get(name, lambda: functools.partial(self._step, params_sharding=params_sharding),
                                  state_sharding, batch_sharding)

    def train_step(self, state: FlowState, batch: dict) -> tuple[FlowState, dict]:
        state, metrics = self.phase("flow")(state, batch)
        return state.replace(step=state.step + 1), metrics
