"""Training configs: the base ``ConfigDict`` every ``configs/*.py`` starts from, loading a config file, and
``--config.a.b=value`` overrides typed by the existing field.

A config file is Python with ``get_config()`` returning a ``ConfigDict`` (ml_collections); ``FILE.py:ARG``
passes ``ARG`` to ``get_config(ARG)``. The top level is a superset of ``vdot_jax.distill.config.distill_config``
(``schedule, ttur, loss, ot, gan, optim, ema, teacher_dtype``), so the Distiller reads it directly and
``--config.optim.critic_lr=1e-6`` means what the release calls the critic learning rate. The other groups:

    mode        "vdot" (distillation) or "flow" (flow-matching training of one WanModel, e.g. a teacher)
    model       where the networks come from: converted model directories or a random init of an architecture
    flow        flow-matching hyper-parameters (mode "flow")
    data        source (toy | manifest | precomputed), encoder, video size, batch, workers, bad-data limit
    mesh        device mesh and logical-axis rule overrides
    train       steps, logging, checkpointing, stopping rules
    sample      periodic sample videos
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import sys
import traceback
from pathlib import Path
from typing import Iterable, Sequence

import ml_collections

from vdot_jax.data.toy_world import TASKS
from vdot_jax.distill.config import MOMENT_DTYPES, WAN_NEGATIVE_PROMPT, check_distill, distill_config
from vdot_jax.errors import VdotError
from vdot_jax.models import attention

MODES = ("vdot", "flow")
SOURCES = ("toy", "manifest", "precomputed")
ENCODERS = ("toy", "wan")


class ConfigError(VdotError, ValueError):
    """A config file or override that cannot be used (the message names the key and what was expected)."""


def base_config() -> ml_collections.ConfigDict:
    """Every key a training config may set, with defaults (release values where the release has one)."""
    c = distill_config()
    c.mode = "vdot"
    c.seed = 0  # training randomness (rollout exits, timesteps, noise) and the data order

    m = c.model = ml_collections.ConfigDict()
    m.teacher = ""  # converted model directory (`vdot convert`) of the teacher, or a training workdir (its latest
    # checkpoint: a flow run's model, a vdot run's generator); in "flow" mode the model to train (fine-tuning)
    m.teacher_ema = False  # a workdir teacher: take its EMA (when it kept one)
    # generator: "" = a float32 copy of the teacher (release stage 1: Wan2.1 T2V). Otherwise a converted model
    # directory or a training workdir (its latest checkpoint's generator, EMA if generator_ema). A text-to-video
    # generator for a VACE teacher fills the main blocks; the VACE blocks come from the teacher (release stage 2).
    m.generator = ""
    m.generator_ema = False
    m.preset = ""  # with no teacher path: a named architecture (vdot_jax.models.config.PRESETS), random init
    m.arch = ml_collections.ConfigDict()  # with no teacher path: WanConfig fields (over the preset), random init
    m.init_seed = 0  # random init of the teacher/model and of the critic's GAN head
    # Random init only: VACE zero-initialises the context input and hint projections (it fine-tunes a pretrained
    # T2V model); from scratch that leaves the context unused for a long time, so a random run may draw them.
    m.vace_zero_init = True
    # compute dtype of matmuls/attention: auto = bfloat16 on accelerators, float32 on CPU; master weights stay fp32
    m.dtype = "auto"
    # vdot_jax.models.attention: auto (splash on TPU, cudnn on GPU, xla on CPU; Ulysses when mesh context > 1)
    # | xla | cudnn | splash[:block_q=N,block_kv=N] | ulysses:<inner>
    m.attention = "auto"
    m.remat = "none"  # none | full | dots | dots_no_batch | offload (full, layer inputs in host memory)
    # sinusoidal timestep features: "float32" (Wan, diffusers) or "bfloat16", as the release's training copy of Wan
    # computes them (docs/release_parity.md); "bfloat16" reproduces the released student's numerics exactly
    m.timestep_features_dtype = "float32"
    # the residual streams between the blocks' adds: "float32" (Wan, diffusers) or "bfloat16", as the release's
    # bf16 models train (docs/release_parity.md); bf16 halves the layer inputs remat saves (docs/scaling.md)
    m.residual_dtype = "float32"
    m.vae = ""  # model directory (or VAE checkpoint) for encoder "wan" and sample decoding
    m.text_encoder = ""  # model directory (or umT5 checkpoint) for encoder "wan"

    f = c.flow = ml_collections.ConfigDict()
    f.lr = 1e-4
    f.b1 = 0.9
    f.b2 = 0.999
    f.weight_decay = 0.01
    f.clip_norm = 1.0
    f.warmup_steps = 0
    f.schedule = "constant"  # constant | cosine (decays to lr * final_lr_fraction at train.steps)
    f.final_lr_fraction = 0.1
    f.timestep_shift = 5.0  # t ~ U[0, 1000) shifted as a sigma by this factor
    f.text_dropout = 0.1  # probability of training on the negative prompt instead (classifier-free guidance)
    f.ema_decay = 0.0
    f.ema_start = 0

    d = c.data = ml_collections.ConfigDict()
    d.source = "toy"  # toy | manifest | precomputed
    d.manifest = ""  # CSV or JSONL (vdot_jax.data.manifest)
    d.precomputed = ""  # directory written by `vdot precompute`
    d.encoder = "toy"  # how raw videos and captions become latents/contexts/embeddings: toy | wan
    d.batch_size = 0  # global micro-batch; 0 = per_device_batch x (data x fsdp mesh sizes)
    d.per_device_batch = 1  # release: batch 1 per GPU
    d.num_frames = 81  # release: 81 frames
    d.height = 480  # release: 832x480
    d.width = 832
    d.fps = 16.0  # release: 16 fps (videos are re-timed to this rate before frames are sampled; 0 = as stored)
    d.sampling = "uniform"  # uniform | first (vdot_jax.data.video_io)
    d.text_len = 512  # umT5 tokens (Wan)
    # Encoded once; the teacher's unconditional branch and the flow text dropout. "" here (the toy teacher was
    # trained with it as its unconditional text); release_config() sets Wan's negative prompt, as the release.
    d.negative_prompt = ""
    d.shuffle = True
    d.num_threads = 2  # grain read threads (they load the samples of a step in parallel)
    d.prefetch = 4  # steps loaded ahead
    d.workers = 0  # grain worker processes (0: threads in the trainer; needed for encoder "wan")
    d.max_bad = 100  # distinct unreadable samples tolerated before training stops
    # raw manifest rows (only video + caption, vdot_jax.conditions.derive): task -> weight, the task drawn per
    # sample from default_rng([seed, step, slot]); empty: a raw row without a task is t2v. Model-free tasks only:
    # t2v plain gray edges layout frameref inpaint outpaint first_frame last_frame first_clip last_clip
    # first_last_frame first_last_clip (e.g. --config.data.raw_task_mix.inpaint=1)
    d.raw_task_mix = ml_collections.ConfigDict()
    # resolution/length buckets for manifest rows ("FxHxW,...", e.g. "81x480x832,81x832x480,49x480x832"): each row
    # decoded at its nearest bucket, each global batch from one bucket (data.pipeline); empty: every row at
    # num_frames x height x width
    d.buckets = ""
    t = d.toy = ml_collections.ConfigDict()
    t.frames = 9
    t.height = 32
    t.width = 32
    t.text_dim = 32
    t.text_len = 8
    t.text_seed = 0
    t.latent_std_floor = 0.0  # clamp ToyVAE's per-channel std from below (tames heavy-tailed detail bands)
    t.task_mix = ml_collections.ConfigDict({"t2v": 2.0, "r2v": 1.0, "first_frame": 1.0, "first_clip": 1.0,
                                            "last_frame": 1.0, "inpaint": 1.0, "outpaint": 1.0, "depth": 1.0,
                                            "edges": 1.0, "grey": 1.0})

    mesh = c.mesh = ml_collections.ConfigDict()
    mesh.ici = ""  # e.g. "fsdp=4,context=2"; data takes what is left (vdot_jax.parallel.mesh)
    mesh.dcn = ""  # across slices, e.g. "data=2"
    mesh.num_devices = 0  # 0 = all devices; n = the first n (debugging, tests)
    mesh.rules = ml_collections.ConfigDict()  # logical name -> mesh axes overrides, e.g. {"param_embed": ("fsdp",)}
    mesh.max_replicated = 1.0  # fail at start-up if more than this fraction of parameter bytes is replicated
    # where the AdamW moments and the EMA live between steps: "device" (HBM) or "host" (pinned host memory; the
    # update moves them in after the backward and back out; docs/scaling.md)
    mesh.opt_state_memory = "device"
    # dtype of one micro-batch's gradient of the layer kernels before it is added to the float32 accumulator:
    # "float32", or "compute" (the model's compute dtype, bf16 on accelerators: one float32 gradient buffer
    # instead of two; train/update.py says why the values are those of float32 on one device; docs/scaling.md)
    mesh.grad_dtype = "float32"
    # where the float32 gradient accumulator of the layer stacks lives: "device" (HBM) or "host" (pinned host
    # memory; each micro-batch's gradient is added into it a layer at a time; train/update.py, docs/scaling.md)
    mesh.grad_memory = "device"
    # where the frozen teacher (vdot mode) lives: "device" (HBM) or "host" (pinned host memory; its forward brings
    # one layer at a time to the device inside the layer scan; docs/scaling.md)
    mesh.teacher_memory = "device"
    # True: each layer's weights are cast to the compute dtype inside the layer scan, where the model casts them;
    # libtpu's bf16-propagation pass otherwise turns the fp32 stacks a scan only reads in bf16 into whole-stack
    # bf16 copies before the loop (xla_jf_bf16_propagation=false; TPU only; docs/scaling.md measures it)
    mesh.cast_per_layer = False
    # False: libtpu's memory-space assignment off (xla_msa_enable=false; TPU only): no prefetching into the chip's
    # fast on-chip memory (slower, by how much is measured only on a TPU), but the one way found past libtpu
    # 0.0.42's MSA check failure on the v5e-8 critic_gan with grad_dtype="compute" (docs/scaling.md)
    mesh.memory_space_assignment = True

    tr = c.train = ml_collections.ConfigDict()
    tr.steps = 1500  # release stage 1: 1,500 steps (stage 2: 1,200)
    tr.log_every = 1
    tr.checkpoint_every = 100
    # also save when this many minutes have passed since the last save (0 = off); process 0's clock decides, and
    # the decision reaches every host with the step's stop flags, so all hosts save the same step
    tr.checkpoint_every_minutes = 0.0
    tr.keep = 3  # checkpoints kept (the newest)
    tr.async_checkpoint = True
    tr.max_nonfinite = 20  # this many steps in a row with a skipped (non-finite) update stop the run
    tr.plot_every = 100
    tr.time_phases = True  # wait for each phase to time it (adds a sync per phase)
    tr.progress = True  # tqdm bar
    tr.compile_cache = ""  # persistent XLA compilation cache directory ("" = off)

    s = c.sample = ml_collections.ConfigDict()
    s.every = 0  # write sample videos every this many steps (0 = never)
    s.num = 4
    s.solver = "unipc"
    s.steps = 4  # released student: UniPC, 4 steps, shift 16, no CFG
    s.shift = 16.0
    s.guidance = 1.0
    s.seed = 0
    s.fps = 16.0
    return c


def release_config(*, teacher: str, generator: str, manifest: str, precomputed: str, steps: int,
                   mesh: str) -> ml_collections.ConfigDict:
    """The settings every release-scale config (configs/wan*_stage*.py) shares. Numbers marked "release" are the
    VDOT release's (docs/method.md, docs/release_parity.md); losses, optimiser and schedule are the distillation
    defaults already."""
    c = base_config()
    c.mode = "vdot"
    c.seed = 0

    c.model.teacher = teacher
    c.model.generator = generator
    c.model.dtype = "auto"  # bf16 compute on accelerators, fp32 master weights (release casts weights to bf16: not copied)
    c.model.attention = "auto"  # splash on TPU, cudnn on GPU; Ulysses with mesh context > 1
    c.model.remat = "full"
    c.model.vae = teacher  # converted model directory with transformer, vae and text_encoder
    c.model.text_encoder = teacher

    c.optim.accumulation = 3  # release: 3 micro-batches per update (x 4 GPUs x batch 1 = 12)
    c.data.per_device_batch = 1  # release: batch 1 per GPU
    c.data.batch_size = 0  # = per_device_batch x (data x fsdp)
    c.data.num_frames = 81  # release
    c.data.height = 480  # release: 832x480
    c.data.width = 832
    c.data.fps = 16.0  # release
    c.data.negative_prompt = WAN_NEGATIVE_PROMPT  # release: the teacher's unconditional text in DMD/OT (CFG 3)
    c.data.source = "precomputed"  # `vdot precompute --config THIS --out DIR` first; "manifest" decodes on the fly
    c.data.manifest = manifest
    c.data.precomputed = precomputed
    c.data.encoder = "wan"
    c.data.workers = 0
    c.data.num_threads = 4
    c.data.prefetch = 8

    c.mesh.ici = mesh  # ZeRO-3 over every device, batch 1 per device (docs/scaling.md)
    c.mesh.max_replicated = 0.01

    c.train.steps = steps
    c.train.log_every = 1
    c.train.checkpoint_every = 100
    c.train.keep = 3
    c.train.plot_every = 50
    c.sample.every = 0  # decoding 81-frame samples takes minutes; set e.g. 100 to watch progress
    c.sample.num = 1
    c.sample.steps = 4  # released student: UniPC, 4 steps, shift 16, no CFG
    c.sample.shift = 16.0
    c.sample.guidance = 1.0
    return c


# ----------------------------------------------------------------------------- loading


def load_config(spec: str | Path) -> ml_collections.ConfigDict:
    """``configs/FILE.py`` or ``configs/FILE.py:ARG`` -> its ``get_config()`` (``get_config(ARG)``)."""
    spec = str(spec)
    path, arg = spec, None
    if ":" in spec and not Path(spec).exists():
        path, arg = spec.rsplit(":", 1)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist (expected a Python file with get_config()).")
    name = f"_vdot_config_{abs(hash(str(p.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, p)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:  # the user's Python: any failure in it is one line naming the file (and the line, when known)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise ConfigError(f"config file {p} has no get_config() function.")
        cfg = module.get_config(arg) if arg is not None else module.get_config()
    except ConfigError:
        raise
    except SyntaxError as e:
        raise ConfigError(f"config file {p} line {e.lineno}: syntax error ({e.msg}).") from None
    except Exception as e:  # noqa: BLE001 - the user's code
        tb = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(p)]
        where = f" line {tb[-1].lineno}" if tb else ""
        raise ConfigError(f"config file {p}{where} failed: {type(e).__name__}: {' '.join(str(e).split())}.") from None
    finally:
        sys.modules.pop(name, None)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() in {p} returned {type(cfg).__name__}, expected an ml_collections.ConfigDict.")
    missing = [k for k, v in base_config().items() if isinstance(v, ml_collections.ConfigDict) and k not in cfg]
    if missing:
        raise ConfigError(f"config file {p} has no {', '.join(missing)} group(s); start get_config() from "
                          "vdot_jax.train.config.base_config() (or release_config()) and change what differs.")
    return cfg


# ----------------------------------------------------------------------------- overrides


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _keys(node: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in node.items():
        out.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            out += _keys(v, prefix + k + ".")
    return out


def _parse_value(text: str, current, key: str):
    """``text`` as the type of ``current`` (the field's existing value)."""
    typ = type(current)

    def bad(what: str):
        return ConfigError(f"--config.{key}: {text!r} is not {what} (the field is {typ.__name__}, "
                           f"currently {current!r}).")

    if isinstance(current, bool):
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise bad("a boolean (true/false)")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            try:
                v = float(text)
            except ValueError:
                raise bad("an integer") from None
            if v.is_integer():
                return int(v)
            raise bad("an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if isinstance(current, str):
        return text
    if isinstance(current, (tuple, list)):
        try:
            v = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            v = [p.strip() for p in text.split(",") if p.strip()] if text.strip() else []
            v = [_literal_or_str(p) for p in v]
        if not isinstance(v, (tuple, list)):
            v = [v]
        return typ(v)
    if current is None:
        return _literal_or_str(text)
    if isinstance(current, dict):
        try:
            v = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise bad("a dict literal") from None
        if not isinstance(v, dict):
            raise bad("a dict literal")
        return v
    raise ConfigError(f"--config.{key}: fields of type {typ.__name__} cannot be set from the command line.")


def _literal_or_str(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_value(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Set ``config.<key>`` from the string ``text``, typed by the existing field (dotted ``key``)."""
    parts = key.split(".")
    node = config
    for i, p in enumerate(parts[:-1]):
        child = node.get(p) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(child, ml_collections.ConfigDict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(_unknown(config, key, f"{where} is not a group of the config"))
        node = child
    leaf = parts[-1]
    if leaf not in node:
        # open groups (dicts of names, e.g. model.arch, mesh.rules, data.toy.task_mix) take new keys
        if ".".join(parts[:-1]) in _OPEN_GROUPS:
            node[leaf] = _literal_or_str(text)
            return
        raise ConfigError(_unknown(config, key, "no such key"))
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key} is a group; set its fields instead (e.g. --config.{key}."
                          f"{next(iter(current.keys()), 'FIELD')}=...).")
    value = _parse_value(text, current, key)
    with node.ignore_type():
        node[leaf] = value


_OPEN_GROUPS = {"model.arch", "mesh.rules", "data.toy.task_mix", "data.raw_task_mix"}


def _unknown(config, key: str, why: str) -> str:
    near = difflib.get_close_matches(key, _keys(config), n=3)
    hint = f"; did you mean {', '.join('--config.' + k for k in near)}?" if near else ""
    return f"--config.{key}: {why}{hint}"


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str] | dict) -> ml_collections.ConfigDict:
    """Apply ``["a.b=v", ...]`` (or ``{"a.b": "v"}``) in order; returns ``config`` (changed in place)."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, text in items:
        set_value(config, key, text if isinstance(text, str) else repr(text))
    return config


def _split(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form KEY=VALUE (e.g. optim.critic_lr=1e-6).")
    return key.strip(), value


def parse_override_args(args: Sequence[str]) -> list[str]:
    """``["--config.a.b=1", "--config.c", "x"]`` -> ``["a.b=1", "c=x"]``; anything else is an error."""
    out, i = [], 0
    args = list(args)
    while i < len(args):
        a = args[i]
        if not a.startswith("--config."):
            raise ConfigError(f"unexpected argument {a!r}; overrides are written --config.KEY=VALUE.")
        body = a[len("--config."):]
        if "=" in body:
            out.append(body)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            out.append(f"{body}={args[i + 1]}")
            i += 2
        else:
            raise ConfigError(f"--config.{body} needs a value (--config.{body}=VALUE).")
    return out


# The range of every numeric key, checked by ``validate`` (one place) before a workdir or a model is made: NaN and
# inf are refused everywhere. Notation: ">=0", ">0", "[0,1]", "[0,1)", "(0,1]"; "PREFIX.*" covers an open group.
# tests/test_nothing_lost.py checks that every numeric key of ``base_config()`` has one.
RANGES = {
    "seed": ">=0", "model.init_seed": ">=0", "student_shift": ">0", "ttur": ">=1", "video_frames": ">=1",
    **{f"flow.{k}": r for k, r in (("lr", ">=0"), ("b1", "[0,1)"), ("b2", "[0,1)"), ("weight_decay", ">=0"),
                                   ("clip_norm", ">0"), ("warmup_steps", ">=0"), ("final_lr_fraction", "[0,1]"),
                                   ("timestep_shift", ">0"), ("text_dropout", "[0,1]"), ("ema_decay", "[0,1)"),
                                   ("ema_start", ">=0"))},
    **{f"data.{k}": r for k, r in (("batch_size", ">=0"), ("per_device_batch", ">=1"), ("num_frames", ">=1"),
                                   ("height", ">=1"), ("width", ">=1"), ("fps", ">=0"), ("text_len", ">=1"),
                                   ("num_threads", ">=1"), ("prefetch", ">=0"), ("workers", ">=0"),
                                   ("max_bad", ">=0"), ("raw_task_mix.*", ">=0"))},
    **{f"data.toy.{k}": r for k, r in (("frames", ">=1"), ("height", ">=1"), ("width", ">=1"), ("text_dim", ">=1"),
                                       ("text_len", ">=1"), ("text_seed", ">=0"), ("latent_std_floor", ">=0"),
                                       ("task_mix.*", ">=0"))},
    "mesh.num_devices": ">=0", "mesh.max_replicated": "[0,1]",
    **{f"train.{k}": r for k, r in (("steps", ">=0"), ("log_every", ">=1"), ("checkpoint_every", ">=1"),
                                    ("keep", ">=1"), ("max_nonfinite", ">=1"), ("plot_every", ">=0"),
                                    ("checkpoint_every_minutes", ">=0"))},
    **{f"sample.{k}": r for k, r in (("every", ">=0"), ("num", ">=1"), ("steps", ">=1"), ("shift", ">0"),
                                     ("guidance", ">=0"), ("seed", ">=0"), ("fps", ">0"))},
    **{f"loss.{k}": r for k, r in (("dmd_weight", ">=0"), ("ot_weight", ">=0"), ("teacher_guidance", ">=0"),
                                   ("timestep_shift", ">0"), ("gan_timestep_shift", ">0"),
                                   ("gan_generator_weight", ">=0"), ("gan_discriminator_weight", ">=0"))},
    "gan.token_dim": ">=1", "gan.num_heads": ">=1", "gan.ffn_dim": ">=1",
    **{f"optim.{k}": r for k, r in (("generator_lr", ">=0"), ("critic_lr", ">=0"), ("b1", "[0,1)"), ("b2", "[0,1)"),
                                    ("weight_decay", ">=0"), ("clip_norm", ">0"), ("accumulation", ">=1"))},
    "ema.decay": "[0,1)", "ema.start": ">=0",
    **{f"ot.{k}": r for k, r in (("epsilon", ">0"), ("factor", ">=0"), ("iterations", ">=1"), ("norm_eps", ">0"),
                                 ("pool", ">=1"), ("tau_a", "(0,1]"), ("tau_b", "(0,1]"))},
}


def numeric_keys(node: ml_collections.ConfigDict, prefix: str = "") -> dict:
    """{dotted key: value} of every int/float leaf (bools are not numbers here)."""
    out = {}
    for k, v in node.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(numeric_keys(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def range_for(key: str) -> str | None:
    """The RANGES entry of a dotted key (an open group's ``PREFIX.*`` included), or None."""
    if key in RANGES:
        return RANGES[key]
    return RANGES.get(key.rsplit(".", 1)[0] + ".*") if "." in key else None


def _in_range(v: float, spec: str) -> bool:
    if spec.startswith(">="):
        return v >= float(spec[2:])
    if spec.startswith(">"):
        return v > float(spec[1:])
    lo, hi = (float(x) for x in spec[1:-1].split(","))
    return (lo < v if spec[0] == "(" else lo <= v) and (v < hi if spec[-1] == ")" else v <= hi)


def check_ranges(config: ml_collections.ConfigDict) -> None:
    """Every numeric key finite and in its ``RANGES`` entry (keys without one, e.g. model.arch, only finite)."""
    for key, v in numeric_keys(config).items():
        spec = range_for(key)
        if not math.isfinite(v) or (spec is not None and not _in_range(v, spec)):
            want = f"a finite number {spec}" if spec else "a finite number"
            raise ConfigError(f"config.{key} must be {want}, got {v}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks that catch a bad config before any model is built."""
    check_ranges(config)
    if config.mode not in MODES:
        raise ConfigError(f"config.mode must be one of {MODES}, got {config.mode!r}.")
    d = config.data
    if d.source not in SOURCES:
        raise ConfigError(f"config.data.source must be one of {SOURCES}, got {d.source!r}.")
    if d.encoder not in ENCODERS:
        raise ConfigError(f"config.data.encoder must be one of {ENCODERS}, got {d.encoder!r}.")
    if d.source == "manifest" and not d.manifest:
        raise ConfigError("config.data.source is 'manifest' but config.data.manifest is empty.")
    if d.source == "precomputed" and not d.precomputed:
        raise ConfigError("config.data.source is 'precomputed' but config.data.precomputed is empty.")
    if config.optim.accumulation < 1:
        raise ConfigError(f"config.optim.accumulation must be >= 1, got {config.optim.accumulation}.")
    if config.train.steps < 0:
        raise ConfigError(f"config.train.steps must be >= 0, got {config.train.steps}.")
    if config.mesh.get("opt_state_memory", "device") not in ("device", "host"):
        raise ConfigError(f"config.mesh.opt_state_memory must be 'device' or 'host', got "
                          f"{config.mesh.opt_state_memory!r}.")
    if config.mesh.get("grad_dtype", "float32") not in ("float32", "compute"):
        raise ConfigError(f"config.mesh.grad_dtype must be 'float32' or 'compute', got {config.mesh.grad_dtype!r}.")
    if config.mesh.get("grad_memory", "device") not in ("device", "host"):
        raise ConfigError(f"config.mesh.grad_memory must be 'device' or 'host', got {config.mesh.grad_memory!r}.")
    teacher_memory = config.mesh.get("teacher_memory", "device")
    if teacher_memory not in ("device", "host"):
        raise ConfigError(f"config.mesh.teacher_memory must be 'device' or 'host', got {teacher_memory!r}.")
    if teacher_memory == "host" and config.mode != "vdot":
        raise ConfigError(f"config.mesh.teacher_memory=host needs mode 'vdot'; a {config.mode!r} run has no teacher.")
    if config.optim.get("moment_dtype", "float32") not in MOMENT_DTYPES:
        raise ConfigError(f"config.optim.moment_dtype must be one of {MOMENT_DTYPES}, got "
                          f"{config.optim.moment_dtype!r}.")
    for flag in ("cast_per_layer", "memory_space_assignment"):
        if not isinstance(config.mesh.get(flag, flag != "cast_per_layer"), bool):
            raise ConfigError(f"config.mesh.{flag} must be True or False, got {config.mesh[flag]!r}.")
    if config.train.checkpoint_every < 1:
        raise ConfigError("config.train.checkpoint_every must be >= 1.")
    if config.train.keep < 1:
        raise ConfigError("config.train.keep must be >= 1.")
    for key in ("timestep_features_dtype", "residual_dtype"):
        value = config.model.get(key, "float32")
        if value not in ("float32", "bfloat16"):
            raise ConfigError(f"config.model.{key} must be 'float32' or 'bfloat16', got {value!r}.")
    impl = config.model.get("attention") or ""
    if impl:  # before any model is loaded (a bad name used to fail only after the teacher was read)
        try:
            attention.check(impl)
        except attention.AttentionSpecError as e:
            raise ConfigError(f"config.model.attention: {e}.") from None
    if config.mode == "vdot":
        try:
            check_distill(config)
        except ValueError as e:
            raise ConfigError(f"{e}.") from None
    if d.source == "toy":  # checked here, before a workdir is touched, not when the data pipeline is built
        unknown = sorted(set(d.toy.task_mix) - set(TASKS))
        if unknown:
            raise ConfigError(f"config.data.toy.task_mix has unknown task(s) {unknown}; tasks are {list(TASKS)}.")
        weights = [float(v) for v in d.toy.task_mix.values()]
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ConfigError("config.data.toy.task_mix needs non-negative weights with at least one positive.")
    if len(d.raw_task_mix):
        from vdot_jax.conditions.derive import RAW_TASKS

        unknown = sorted(set(d.raw_task_mix) - set(RAW_TASKS))
        if unknown:
            raise ConfigError(f"config.data.raw_task_mix has task(s) {unknown} that cannot be derived from a video "
                              f"alone; model-free tasks are {list(RAW_TASKS)}.")
        if not any(float(w) > 0 for w in d.raw_task_mix.values()):
            raise ConfigError("config.data.raw_task_mix needs at least one positive weight (or leave it empty).")
    if config.mode == "vdot" and not config.model.teacher and not (config.model.preset or len(config.model.arch)):
        raise ConfigError("config.model.teacher is empty and no architecture is given (config.model.preset or "
                          "config.model.arch) to initialise one at random.")


def check_data(config: ml_collections.ConfigDict) -> None:
    """The data checks that need no model, run by ``vdot train`` before a workdir or a model is made: every row of
    the manifest is well formed, or the precomputed index exists and was made with this config's data settings.
    (The pipeline checks the same again when it is built; these raise the same ``VdotError``s earlier.)"""
    d = config.data
    if d.get("buckets"):
        from vdot_jax.data.pipeline import parse_buckets

        parse_buckets(d.buckets)
    if d.source == "manifest":
        from vdot_jax.data.manifest import read_manifest
        from vdot_jax.data.pipeline import check_raw_rows

        check_raw_rows(read_manifest(d.manifest), config)
    elif d.source == "precomputed":
        from vdot_jax.data.pipeline import PrecomputedSource
        from vdot_jax.sources import model_arch

        PrecomputedSource(config, with_context=model_arch(config).is_vace)
