"""Default VDOT distillation settings. Every number is the release's unless its comment says otherwise;
docs/release_parity.md lists each with the release file it comes from (a test keeps the two in step)."""

from __future__ import annotations

import dataclasses

import ml_collections

from vdot_jax.distill.losses import NORMALIZATIONS
from vdot_jax.distill.ot import OTConfig
from vdot_jax.distill.timesteps import student_schedule

# Wan2.1's standard negative prompt (release: configs/self_forcing_bi_gan.yaml ``negative_prompt``,
# trainer/distillation_vace.py ``sample_neg_prompt``; Wan's shared_config ``sample_neg_prompt``): the text of the
# teacher's unconditional branch in DMD/OT. diffusers' Wan examples pass an English translation of it.
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)


def distill_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Generator rollout: "release" tells the generator [1000,960,888.9,727.3] (shift-8 warp) but re-noises to
    # the shift-16 UniPC table; "consistent" trains on the inference schedule itself.
    c.schedule = "release"
    c.student_shift = 16.0  # release: the 4-step UniPC shift at inference; the "consistent" schedule trains on it
    c.ttur = 5  # release: the generator updates on every 5th step, the critic on every step
    # Reference-image samples: "vace" (default, deviation) keeps noise and latents over the reference frames plus
    # the video, as VACE inference does; "release" noises ``video_frames`` latent frames, cuts the context to
    # them and drops the reference frames from the real latents (docs/method.md "Reference images").
    c.r2v_layout = "vace"
    c.video_frames = 21  # release: 81 frames -> 21 latent frames (used by r2v_layout="release" only)

    c.loss = ml_collections.ConfigDict()
    c.loss.dmd_weight = 0.2  # release
    c.loss.ot_weight = 0.8  # release
    c.loss.dmd_reduction = "mean"  # release: a mean over ~2.1M latent elements
    c.loss.dmd_normalization = "release"  # release: (x0_fake - x0_real) * t/1000; "dmd": / mean|x^ - x0_real|
    c.loss.teacher_guidance = 3.0  # release: CFG on the teacher's velocity in the DMD/OT terms
    c.loss.timestep_shift = 5.0  # release: t ~ U[20,980), shift 5, clamp [20,980] for DMD, OT, critic flow
    c.loss.gan_timestep_shift = 12.0  # release: t ~ U[0,1000), shift 12, clamp [20,980] for the GAN terms
    c.loss.gan_generator_weight = 0.1  # release
    c.loss.gan_discriminator_weight = 0.1  # release
    c.loss.use_gan = True  # False: odd generator/critic updates repeat DMD+OT / flow instead of the GAN terms

    ot = OTConfig()
    c.ot = ml_collections.ConfigDict(dataclasses.asdict(ot))  # see vdot_jax.distill.ot.OTConfig; release values

    c.gan = ml_collections.ConfigDict()
    c.gan.taps = ()  # () = release taps for 30/40-layer models (13,21,29 / 23,31,39), same depths otherwise
    c.gan.token_dim = 512  # release
    c.gan.num_heads = 8  # release
    c.gan.ffn_dim = 13824  # release: GanAttentionBlock's default FFN width, for both model sizes
    # True: the generator's GAN step runs the critic on the real videos in a forward of their own, not in one batch
    # with the fake ones (same values; 20 % fewer FLOPs in that phase, half the critic's saved inputs). Off by
    # default: libtpu 0.0.42 crashes compiling it for VACE-1.3B on v5e-8 fsdp=2 (docs/scaling.md)
    c.gan.separate_real = False

    c.optim = ml_collections.ConfigDict()
    c.optim.generator_lr = 2e-6  # release
    c.optim.critic_lr = 4e-7  # release
    c.optim.b1 = 0.0  # release
    c.optim.b2 = 0.999  # release
    c.optim.weight_decay = 0.01  # release
    c.optim.clip_norm = 5.0  # release
    c.optim.accumulation = 3  # release: 3 micro-batches per update
    # dtype AdamW's mu and nu are stored in ("float32" or "bfloat16": half the bytes; computed in float32 and
    # rounded when stored; the release's generator moments are bf16 because its weights are; train/update.py)
    c.optim.moment_dtype = "float32"

    c.ema = ml_collections.ConfigDict()
    c.ema.decay = 0.0  # release: off; Self-Forcing used 0.99
    c.ema.start = 200  # release (ema_start_step): the EMA starts at training step 200 (when ema.decay > 0)

    c.teacher_dtype = "bfloat16"  # the frozen teacher needs no fp32 master copy
    return c


def ot_config(c: ml_collections.ConfigDict) -> OTConfig:
    return OTConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in c.ot.to_dict().items()})


R2V_LAYOUTS = ("vace", "release")
MOMENT_DTYPES = ("float32", "bfloat16")  # optim.moment_dtype


def check_distill(c: ml_collections.ConfigDict) -> None:
    """ValueError naming the first distillation setting that cannot run; called by the trainer's config check
    (before any model is built) and by ``Distiller``."""
    ot_config(c)  # OTConfig checks its own fields
    student_schedule(c.schedule, c.student_shift)
    if c.get("r2v_layout", "vace") not in R2V_LAYOUTS:
        raise ValueError(f"config.r2v_layout must be one of {R2V_LAYOUTS}, got {c.r2v_layout!r}")
    if c.loss.dmd_reduction not in ("mean", "sum"):
        raise ValueError(f"config.loss.dmd_reduction must be 'mean' or 'sum', got {c.loss.dmd_reduction!r}")
    if c.loss.dmd_normalization not in NORMALIZATIONS:
        raise ValueError(f"config.loss.dmd_normalization must be one of {NORMALIZATIONS}, "
                         f"got {c.loss.dmd_normalization!r}")
    if c.ttur < 1:
        raise ValueError(f"config.ttur must be >= 1, got {c.ttur}")
    for name in ("generator_lr", "critic_lr"):
        if not c.optim[name] >= 0:
            raise ValueError(f"config.optim.{name} must be >= 0, got {c.optim[name]}")
