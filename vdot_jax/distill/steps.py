"""VDOT training steps: four jitted phases over a pure ``TrainState`` (docs/method.md).

    generator_dmd_ot  generator, 0.2 DMD + 0.8 OT                               (even generator updates)
    generator_gan     generator, relativistic generator loss                    (odd generator updates)
    critic_flow       critic, flow matching on detached generator samples       (even steps)
    critic_gan        critic trunk + head, relativistic discriminator loss      (odd steps)

Every step runs one critic phase; every ``ttur``-th step first one generator phase (``phases_for``; the
release's order). One rollout exit index is drawn per step from the replicated key and shared by both phases,
every micro-batch and every host.
Each phase is one compiled program around the trainers' one update step (``vdot_jax.train.update``):
gradient accumulation is a ``lax.scan`` over the micro-batch axis, updates go through optax (clip, AdamW), a
non-finite loss or gradient leaves parameters and optimizer state untouched and is counted, and the state
buffer is donated.

Batches are dicts of arrays with a leading micro-batch axis A: ``latents`` [A,B,C,F,H,W] (ground truth,
normalised; the GAN's real data), ``text`` and ``neg_text`` [A,B,L,D] (prompt and negative prompt
embeddings), and for VACE ``context`` [A,B,Cc,F,H,W].
"""

from __future__ import annotations

import collections
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from vdot_jax.distill import losses
from vdot_jax.distill.config import check_distill, ot_config
from vdot_jax.distill.critic import Critic
from vdot_jax.distill.ot import ot_direction, ot_loss
from vdot_jax.distill.timesteps import (add_noise, rollout, sample_gan_timesteps,
                                        sample_loss_timesteps, student_schedule, x0_from_velocity)
from vdot_jax.models.layers import to_device
from vdot_jax.models.wan import WanModel
from vdot_jax.train.update import (ClippedTransform, StepPrograms, clipped_adamw, ema_update, init_in_place,
                                   grads_kept_in_host, micro_grad_dtype,
                                   state_in_host, update)

PHASES = ("critic_flow", "critic_gan", "generator_dmd_ot", "generator_gan")
_CRITIC_KEYS = {"critic_flow": 3, "critic_gan": 2}  # how many keys each critic loss splits its micro-batch key into
_EXIT_TAG = len(PHASES)  # fold_in tag of the per-step exit index (after the phases' own tags)


class TrainState(flax.struct.PyTreeNode):
    step: jax.Array  # int32, number of completed training steps
    generator: Any  # nnx.State of Params, float32 master weights
    critic: Any
    teacher: Any  # frozen; never updated, no optimizer state
    generator_opt: Any
    critic_opt: Any
    ema: Any  # generator EMA (same tree as generator), or None when off
    rng: jax.Array  # uint32 key data, replicated
    skipped: jax.Array  # int32, updates skipped because a loss or gradient was not finite
    loss_weights: Any  # {"dmd": f32, "ot": f32}: traced, so runs that differ only in weights share programs


def phases_for(step: int, ttur: int, use_gan: bool = True) -> tuple[str, ...]:
    """The phases that training step ``step`` (0-based) runs, in order: the generator's first (release:
    trainer/distillation_vace.py), so the critic of the same step sees the updated generator."""
    critic = "critic_gan" if use_gan and step % 2 else "critic_flow"
    if step % ttur:
        return (critic,)
    gen = "generator_gan" if use_gan and (step // ttur) % 2 else "generator_dmd_ot"
    return (gen, critic)


def exit_index(rng: jax.Array, step: jax.Array, num_steps: int) -> jax.Array:
    """The rollout exit index of training step ``step``: a function of the replicated key and the step only,
    so both phases, every micro-batch and every host use the same one (release: one broadcast draw per step)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(rng), step), _EXIT_TAG)
    return jax.random.randint(key, (), 0, num_steps)


def _per_sample_norm(x: jax.Array) -> jax.Array:
    """Batch mean of each sample's L2 norm."""
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)).reshape(x.shape[0], -1), axis=1)))


class Distiller:
    """Owns the static parts (graphdefs, optimizers, config) and builds the jitted phases."""

    def __init__(self, generator: WanModel, critic: Critic, teacher: WanModel, config: ml_collections.ConfigDict):
        self.config = config
        self.gen_def, _ = nnx.split(generator)
        self.critic_def, _ = nnx.split(critic)
        self.teacher_def, _ = nnx.split(teacher)
        self._runtimes = {"generator": generator.runtime, "critic": critic.model.runtime}  # read at trace time
        check_distill(config)
        self.schedule = student_schedule(config.schedule, config.student_shift)
        self.ot = ot_config(config)
        self.r2v_layout = config.get("r2v_layout", "vace")  # configs saved before the option existed: "vace"
        self.video_frames = int(config.get("video_frames", 21))
        o = config.optim
        self.gen_tx = self._optimizer(o.generator_lr)
        self.critic_tx = self._optimizer(o.critic_lr)
        self.trace_counts: collections.Counter = collections.Counter()
        self._programs = StepPrograms()

    def _optimizer(self, lr: float) -> ClippedTransform:
        o = self.config.optim
        return clipped_adamw(lr, o.clip_norm, o.b1, o.b2, o.weight_decay, o.get("moment_dtype", "float32"))

    # ---------------------------------------------------------------- state

    def init_state(self, generator: WanModel, critic: Critic, teacher: WanModel, seed: int = 0,
                   consume: bool = False, loss_weights: dict | None = None, shardings=None) -> TrainState:
        """The initial state. The phases donate the state's buffers, so unless ``consume`` is set the
        parameters are copied and the models stay usable (at the cost of one extra copy in memory).

        ``loss_weights`` ({"dmd": w, "ot": w}, default the config's) live in the state: a term whose
        *config* weight is non-zero is traced, and the state's weight scales it, so e.g. DMD-only and
        OT-only ablations run the same compiled programs as the full recipe."""
        own = (lambda t: t) if consume else (lambda t: jax.tree.map(jnp.copy, t))
        gen = own(nnx.state(generator))
        crit = own(nnx.state(critic))
        teach = own(nnx.state(teacher))
        if self.config.teacher_dtype:
            teach = jax.tree.map(lambda a: a.astype(self.config.teacher_dtype), teach)
        sh = lambda field: None if shardings is None else getattr(shardings, field)  # noqa: E731
        ema = (init_in_place(lambda t: jax.tree.map(jnp.copy, t), gen, sh("ema"))
               if self.config.ema.decay > 0 else None)
        return TrainState(
            step=jnp.zeros((), jnp.int32), generator=gen, critic=crit, teacher=teach,
            generator_opt=init_in_place(self.gen_tx.init, gen, sh("generator_opt")),
            critic_opt=init_in_place(self.critic_tx.init, crit, sh("critic_opt")), ema=ema,
            rng=jax.random.key_data(jax.random.key(seed)), skipped=jnp.zeros((), jnp.int32),
            loss_weights=self._loss_weights(loss_weights),
        )

    def _loss_weights(self, override: dict | None) -> dict:
        c = self.config.loss
        weights = {"dmd": c.dmd_weight, "ot": c.ot_weight, **(override or {})}
        for name, w in weights.items():
            if name not in ("dmd", "ot"):
                raise ValueError(f"unknown loss weight {name!r}; the weighted generator terms are 'dmd' and 'ot'")
            if w and not getattr(c, f"{name}_weight"):
                raise ValueError(f"loss weight {name}={w} needs a non-zero config.loss.{name}_weight, which "
                                 f"decides whether the term is traced at all")
        return {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}

    # ---------------------------------------------------------------- model application

    def _gen(self, params, x, t, batch):
        return nnx.merge(self.gen_def, params)(x, t, batch["text"], batch.get("context"))

    def _critic_v(self, params, x, t, batch):
        return nnx.merge(self.critic_def, params)(x, t, batch["text"], batch.get("context"))

    def _critic_d(self, params, x, t, batch):
        """Logits of ``x`` at ``t``; ``x`` may hold several copies of the batch (conditions tiled to match)."""
        critic = nnx.merge(self.critic_def, params)
        copies = x.shape[0] // batch["text"].shape[0]
        tile = lambda a: None if a is None else jnp.concatenate([a] * copies)  # noqa: E731
        return critic.discriminate(x, t, tile(batch["text"]), tile(batch.get("context")))

    def _teacher_apply(self, params, x, t, text, context):
        # with mesh.teacher_memory=host, the layer scans bring the stacks in one layer at a time
        return nnx.merge(self.teacher_def, to_device(params, keep_stacks=True))(x, t, text, context)

    def _teacher_v(self, params, x, t, batch):
        """Teacher velocity with classifier-free guidance on ``neg_text``; cond and uncond as one batch."""
        ctx = batch.get("context")
        w = self.config.loss.teacher_guidance
        if w == 1.0:
            return self._teacher_apply(params, x, t, batch["text"], ctx).astype(jnp.float32)
        v = self._teacher_apply(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                                jnp.concatenate([batch["text"], batch["neg_text"]]),
                                None if ctx is None else jnp.concatenate([ctx, ctx]))
        v_c, v_u = jnp.split(v.astype(jnp.float32), 2)
        return losses.cfg_velocity(v_c, v_u, w)

    def _layout(self, batch):
        """The frames the networks see. "vace" (default): noise and latents cover the reference frames plus the
        video, as VACE's inference does. "release": the noise covers ``video_frames`` latent frames, the context
        is cut to its first ``video_frames`` frames (the release's 32,760-token cut) and the real latents drop
        the prepended reference frames (docs/method.md, "Reference images")."""
        n = self.video_frames
        extra = batch["latents"].shape[-3] - n
        if self.r2v_layout == "vace" or extra <= 0:
            return batch
        out = dict(batch, latents=batch["latents"][..., extra:, :, :])
        if batch.get("context") is not None:
            out["context"] = batch["context"][..., :n, :, :]
        return out

    def _sample(self, gen_params, batch, key, exit_index):
        """x^ from the backward simulation, leaving at step ``exit_index`` (gradient flows at the exit)."""
        k_noise, k_roll = jax.random.split(key)
        noise = jax.random.normal(k_noise, batch["latents"].shape, jnp.float32)
        return rollout(lambda p, x, t: self._gen(p, x, t, batch), gen_params, noise, exit_index,
                       self.schedule, k_roll)

    def _predictions(self, state, x_hat, batch, keys):
        """For each key, (x0_fake, x0_real, t) at a fresh noise level of x^, without gradient into any
        network. All draws go through the critic and the teacher as one batch (fewer traced models)."""
        b = x_hat.shape[0]
        ts, xs = [], []
        for key in keys:
            k_t, k_e = jax.random.split(key)
            t = sample_loss_timesteps(k_t, b, self.config.loss.timestep_shift)
            ts.append(t)
            xs.append(add_noise(jax.lax.stop_gradient(x_hat), jax.random.normal(k_e, x_hat.shape), t))
        t, x_t = jnp.concatenate(ts), jnp.concatenate(xs)
        tiled = {k: jnp.concatenate([v] * len(keys)) for k, v in batch.items()}
        x0_fake = x0_from_velocity(x_t, self._critic_v(state.critic, x_t, t, tiled).astype(jnp.float32), t)
        x0_real = x0_from_velocity(x_t, self._teacher_v(state.teacher, x_t, t, tiled), t)
        split = lambda a: jnp.split(jax.lax.stop_gradient(a), len(keys))  # noqa: E731
        return list(zip(split(x0_fake), split(x0_real), jnp.split(t, len(keys))))

    # ---------------------------------------------------------------- phase losses: (loss, metrics)

    def critic_sample(self, name: str, state, batch, key, exit_index):
        """The micro-batch of critic phase ``name`` with its generator sample ``x_hat``, drawn with the first of
        the keys its loss splits ``key`` into. The phases draw every micro-batch's sample before the critic's
        gradient loop (``update``'s ``prepare``), so the frozen generator's weights cast to bf16 are dead by the
        critic's backward (docs/scaling.md)."""
        k_s = jax.random.split(key, _CRITIC_KEYS[name])[0]
        return {**batch, "x_hat": jax.lax.stop_gradient(self._sample(state.generator, batch, k_s, exit_index))}

    def _loss_critic_flow(self, params, state, batch, key, exit_index):
        _, k_t, k_e = jax.random.split(key, _CRITIC_KEYS["critic_flow"])  # the first drew x_hat (critic_sample)
        x_hat = batch["x_hat"]
        t = sample_loss_timesteps(k_t, x_hat.shape[0], self.config.loss.timestep_shift)
        noise = jax.random.normal(k_e, x_hat.shape)
        v = self._critic_v(params, add_noise(x_hat, noise, t), t, batch)
        loss = losses.flow_loss(v, noise, x_hat)
        return loss, {"critic_flow_loss": loss}

    def _gan_pair(self, critic_params, x_hat, batch, key, shared_noise: bool, separate_real: bool = False):
        """Logits (d_fake, d_real) at one GAN timestep; ``shared_noise``: real and fake get the same epsilon
        (the release's critic step) rather than two draws (its generator step). Fake and real go through the
        critic as one batch, as the release's; ``separate_real`` (``config.gan.separate_real``, the generator
        step): the real videos, which no gradient reaches there, take a forward of their own, so the backward
        runs through the critic for the fake videos only (half the work and saved activations of a two-video
        backward; docs/scaling.md)."""
        k_t, k_f, k_r = jax.random.split(key, 3)
        t = sample_gan_timesteps(k_t, x_hat.shape[0], self.config.loss.gan_timestep_shift)
        e_fake = jax.random.normal(k_f, x_hat.shape)
        e_real = e_fake if shared_noise else jax.random.normal(k_r, x_hat.shape)
        fake = add_noise(x_hat, e_fake, t)
        real = add_noise(batch["latents"].astype(jnp.float32), e_real, t)
        if separate_real:
            d_real = jax.lax.stop_gradient(self._critic_d(critic_params, real, t, batch))
            return self._critic_d(critic_params, fake, t, batch), d_real
        d = self._critic_d(critic_params, jnp.concatenate([fake, real]), jnp.concatenate([t, t]), batch)
        return jnp.split(d, 2)  # d_fake, d_real

    def _loss_critic_gan(self, params, state, batch, key, exit_index):
        _, k_d = jax.random.split(key, _CRITIC_KEYS["critic_gan"])  # the first drew x_hat (critic_sample)
        d_fake, d_real = self._gan_pair(params, batch["x_hat"], batch, k_d, shared_noise=True)
        loss = losses.gan_discriminator_loss(d_real, d_fake, self.config.loss.gan_discriminator_weight)
        return loss, {"critic_gan_loss": loss, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake)}

    def _loss_generator_dmd_ot(self, params, state, batch, key, exit_index):
        """0.2 L_DMD + 0.8 L_OT. The surrogate values are logged under ``surrogate/*`` (constant-ish by
        construction, kept out of the ``*_loss`` progress line); what moves is logged beside them: the Sinkhorn
        cost <P,C> per frame, the DMD direction before its t/1000 scaling, the critic/teacher x0 gap."""
        k_s, k_dmd, k_ot = jax.random.split(key, 3)
        c = self.config.loss
        x_hat = self._sample(params, batch, k_s, exit_index)
        metrics = {}
        loss = jnp.zeros((), jnp.float32)
        # DMD and OT use independent timesteps and noise (two draws), predicted in one pass.
        names = [n for n, w in (("dmd", c.dmd_weight), ("ot", c.ot_weight)) if w]
        keys = {"dmd": k_dmd, "ot": k_ot}
        draws = dict(zip(names, self._predictions(state, x_hat, batch, [keys[n] for n in names])))
        if "dmd" in draws:
            x0_fake, x0_real, t = draws["dmd"]
            g = losses.dmd_direction(x0_fake, x0_real, jax.lax.stop_gradient(x_hat), t, c.dmd_normalization)
            l_dmd = losses.surrogate_loss(x_hat, g, c.dmd_reduction)
            loss += state.loss_weights["dmd"] * l_dmd
            metrics["surrogate/dmd"] = l_dmd
            metrics["dmd_direction_norm"] = _per_sample_norm(x0_fake - x0_real)
        if "ot" in draws:
            x0_fake, x0_real, _ = draws["ot"]
            g, cost = ot_direction(x0_fake, x0_real, self.ot, return_cost=True)
            l_ot = ot_loss(x_hat, g, factor=self.ot.factor, reduction=self.ot.reduction)
            loss += state.loss_weights["ot"] * l_ot
            metrics["surrogate/ot"] = l_ot
            metrics["ot_cost"] = jnp.mean(cost)  # <P,C> per (sample, frame), fake vs real x0, averaged
            metrics["x0_gap_rms"] = jnp.sqrt(jnp.mean(jnp.square(x0_fake - x0_real)))
        metrics["surrogate/generator"] = loss
        return loss, metrics

    def _loss_generator_gan(self, params, state, batch, key, exit_index):
        k_s, k_d = jax.random.split(key)
        x_hat = self._sample(params, batch, k_s, exit_index)
        d_fake, d_real = self._gan_pair(jax.lax.stop_gradient(state.critic), x_hat, batch, k_d, shared_noise=False,
                                        separate_real=self.config.gan.separate_real)
        loss = losses.gan_generator_loss(d_fake, d_real, self.config.loss.gan_generator_weight)
        return loss, {"generator_gan_loss": loss, "g_d_real": jnp.mean(d_real), "g_d_fake": jnp.mean(d_fake)}

    # ---------------------------------------------------------------- the phases

    def _phase(self, name: str, state_sharding=None):
        is_gen = name.startswith("generator")
        params_sharding = None if state_sharding is None else (
            state_sharding.generator if is_gen else state_sharding.critic)
        loss_fn = getattr(self, f"_loss_{name}")
        tx = self.gen_tx if is_gen else self.critic_tx
        host = state_in_host(self.config)

        def step(state: TrainState, batch: dict):
            self.trace_counts[name] += 1  # runs at trace time only: counts compilations
            params = state.generator if is_gen else state.critic
            opt_state = state.generator_opt if is_gen else state.critic_opt
            key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
            key = jax.random.fold_in(key, PHASES.index(name))
            exit_i = exit_index(state.rng, state.step, self.schedule.steps)
            prepare = None if is_gen else (lambda b, k: self.critic_sample(name, state, b, k, exit_i))
            new_params, new_opt, finite, metrics = update(
                lambda p, b, k: loss_fn(p, state, b, k, exit_i), tx, params, opt_state, self._layout(batch), key,
                in_host=host, grad_dtype=micro_grad_dtype(self.config, self._runtimes[name.split("_")[0]]),
                grads_in_host=grads_kept_in_host(self.config), sharding=params_sharding, prepare=prepare)
            metrics = {**metrics, "exit_index": exit_i.astype(jnp.float32)}
            skipped = state.skipped + (~finite).astype(jnp.int32)
            if is_gen:
                # Before ema.start (counted in training steps, as the release) the EMA tracks the generator.
                ema = ema_update(state.ema, new_params, state.step, self.config.ema.start, self.config.ema.decay,
                                 in_host=host)
                return state.replace(generator=new_params, generator_opt=new_opt, ema=ema, skipped=skipped), metrics
            return state.replace(critic=new_params, critic_opt=new_opt, skipped=skipped), metrics

        return step

    def phase(self, name: str, state_sharding=None, batch_sharding=None):
        """The jitted phase ``name`` for these shardings (built once each; donates the state)."""
        return self._programs.get(name, lambda: self._phase(name, state_sharding), state_sharding, batch_sharding)

    def train_step(self, state: TrainState, batch: dict, use_gan: bool | None = None,
                   generator_batch: dict | None = None) -> tuple[TrainState, dict]:
        """One training step: its generator phase if any, then its critic phase; advances ``step``.
        ``use_gan`` overrides ``config.loss.use_gan`` (which phases run is decided here, in Python).
        ``generator_batch``: the generator phase's own micro-batches (the release draws them separately from the
        critic's); None shares ``batch`` between the phases."""
        step = int(state.step)
        metrics = {}
        use_gan = self.config.loss.use_gan if use_gan is None else use_gan
        for name in phases_for(step, self.config.ttur, use_gan):
            b = generator_batch if name.startswith("generator") and generator_batch is not None else batch
            state, m = self.phase(name)(state, b)
            metrics.update({f"{name}/{k}" if k in ("grad_norm", "finite", "exit_index") else k: v
                            for k, v in m.items()})
        return state.replace(step=state.step + 1), metrics

    def generator(self, state: TrainState, ema: bool = False) -> WanModel:
        return nnx.merge(self.gen_def, state.ema if ema and state.ema is not None else state.generator)
