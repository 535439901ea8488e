"""The critic (fake score): a trainable Wan/VACE copy of the teacher carrying VDOT's GAN head."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from vdot_jax.models.config import Runtime, WanConfig
from vdot_jax.models.discriminator import GanHead, default_taps
from vdot_jax.models.wan import WanModel
from vdot_jax.weights.params import assign, flat_state


class Critic(nnx.Module):
    def __init__(self, cfg: WanConfig, *, rngs: nnx.Rngs, taps: tuple[int, ...] | None = None,
                 token_dim: int = 512, num_heads: int = 8, ffn_dim: int = 13824, runtime: Runtime | None = None):
        """Head widths default to the release's (token 512, 8 heads, FFN 13824; docs/release_parity.md)."""
        self.model = WanModel(cfg, rngs=rngs, runtime=runtime)
        self.head = GanHead(cfg.dim, taps or default_taps(cfg.num_layers), token_dim=token_dim,
                            num_heads=num_heads, ffn_dim=ffn_dim, rngs=rngs)

    def __call__(self, latents, timestep, text_embeds, vace_context=None):
        """Flow prediction (the fake score)."""
        return self.model(latents, timestep, text_embeds, vace_context)

    def discriminate(self, latents, timestep, text_embeds, vace_context=None):
        """One logit per example from the trunk's features at the head's taps."""
        _, features, temb = self.model(latents, timestep, text_embeds, vace_context, taps=self.head.taps)
        rt = self.model.runtime
        return self.head(features, temb, dtype=rt.compute_dtype, impl=rt.attention)


def critic_from_teacher(teacher: WanModel, *, rngs: nnx.Rngs, **head_kwargs) -> Critic:
    """A critic whose trunk starts as a float32 copy of the teacher and whose head is freshly initialised."""
    critic = Critic(teacher.cfg, rngs=rngs, runtime=teacher.runtime, **head_kwargs)
    assign(critic.model, {p: v.astype(jnp.float32) for p, v in flat_state(teacher).items()})
    return critic
