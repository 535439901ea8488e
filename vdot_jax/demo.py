"""``vdot demo``: distil a 4-step student from the shipped toy VACE teacher with VDOT, evaluate exactly, report.

The world (``vdot_jax.data.toy_world``) renders short clips of a coloured shape moving over a background,
with every VACE condition (text, reference image, first/last frame and clip extension, inpainting,
outpainting, depth, edges, grey). The teacher (``vdot_jax/assets/toy_teacher``, a diffusers-format VACE
transformer) was trained on it by ``vdot train --config configs/toy_teacher.py``. The demo

1. distils three students from it with one ``Distiller`` (the four phases compile once and are shared:
   the variants differ only in state-held loss weights and in whether the GAN phases run): DMD only,
   OT only, and VDOT (DMD + OT + GAN, the release's weights);
2. samples a fixed evaluation set with the teacher at 50 steps + CFG, the teacher at 4 steps + CFG, and each
   student at 4 steps (the release's inference schedule: UniPC, shift 16, no CFG);
3. measures what is exact in this world (``vdot_jax.eval.toy_metrics``) and writes ``report.md``, PNG plots
   and video grids (condition | teacher 50 | teacher 4 | student, per task; mp4 and GIF).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

import numpy as np

from vdot_jax.train.logging import is_curve

# The world and encoders the teacher was trained with (configs/toy_teacher.py reads these).
# 5 frames at 32x32 -> 5x16x16 latents, 320 tokens (384 with a reference image): small enough for 2 CPU cores.
# latent_std_floor tames the toy VAE's heavy-tailed detail bands (see its docstring).
TOY_WORLD = dict(frames=5, height=32, width=32, text_dim=32, text_len=8, text_seed=0, latent_std_floor=0.25)
TEACHER_ASSET = "assets/toy_teacher"
TOY_IO = ("in_channels", "out_channels", "patch_size", "text_dim", "vace_in_channels")  # what a toy teacher must match
START = "teacher 4 steps, no CFG (students' start)"


@dataclass
class DemoPlan:
    steps: int = 150  # distillation steps per student (critic every step, generator every ttur-th)
    batch: int = 4
    eval_per_task: int = 5
    coverage_per_prompt: int = 8
    teacher_steps: int = 50
    # measured on held-out clips (`vdot demo --sweep-teacher`, docs/demo/teacher_sweep.md): the best mean rank at
    # 50 steps is CFG 2 / shift 6 (CFG 3 fragments shapes and oversaturates), and shift 6 is also the best 4-step,
    # no-CFG setting
    guidance: float = 2.0
    teacher_shift: float = 6.0
    student_steps: int = 4  # release: 4 UniPC steps, no CFG
    student_shift: float = 6.0  # release 16 at 81x480x832; the toy clips are sampled at the teacher's shift
    generator_lr: float = 2e-5
    critic_lr: float = 1e-4
    ttur: int = 5
    seed: int = 0  # distillation (data, critic head, noise) and sampling noise; --seeds N runs seed .. seed+N-1
    eval_seed: int = 0  # the evaluation clips (fixed across --seeds; the teacher sweep holds out HOLDOUT_SEED)
    # (dotted key, value) pairs set on the distillation config last, e.g. (("ema.decay", 0.9),) for experiments
    # (bench/demo_student_curve.py --set); with ema.decay > 0 the students are the generator's EMA
    overrides: tuple = ()
    teacher: str = ""  # the toy teacher: a training workdir (its EMA) or model folder; "" = the shipped one

    @classmethod
    def quick(cls) -> "DemoPlan":
        return cls(steps=4, batch=2, eval_per_task=1, coverage_per_prompt=8, teacher_steps=6)


# name -> (loss weights in the state, GAN phases on)
VARIANTS = {
    "student DMD only": ({"ot": 0.0}, False),
    "student OT only": ({"dmd": 0.0}, False),
    "student VDOT": (None, True),
}


def teacher_path() -> Path:
    return Path(str(resources.files("vdot_jax") / TEACHER_ASSET))


def data_config(plan: DemoPlan):
    """The training-pipeline config for the toy world (source, encoders, batch)."""
    from vdot_jax.train.config import base_config

    c = base_config()
    c.seed = plan.seed
    c.data.source = "toy"
    c.data.encoder = "toy"
    c.data.batch_size = plan.batch
    for k, v in TOY_WORLD.items():
        setattr(c.data.toy, k, v)
    c.optim.accumulation = 1
    return c


def distill_settings(plan: DemoPlan, num_layers: int):
    from vdot_jax.distill.config import distill_config

    c = distill_config()
    c.ttur = plan.ttur
    c.optim.accumulation = 1
    c.optim.generator_lr = plan.generator_lr  # scaled up from the release's 2e-6 for a few hundred steps
    c.optim.critic_lr = plan.critic_lr  # release 4e-7
    c.teacher_dtype = "float32"  # CPU: bf16 is slower here
    # The release's shift-16 table suits 81x480x832; these 5x32x32 clips are sampled at the teacher's shift, so
    # the student trains on the schedule it is evaluated with.
    c.schedule = "consistent"
    c.student_shift = plan.student_shift
    c.gan.token_dim = 32  # release 512 for width 1536/5120; the toy model is 64 wide
    c.gan.num_heads = 2
    c.gan.ffn_dim = 128  # release 13824 whatever the width; 4 x the toy token width keeps the toy head small
    for key, value in plan.overrides:
        *path, leaf = key.split(".")
        node = c
        for part in path:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"the distillation config has no setting {key!r}")
        node[leaf] = type(node[leaf])(value)
    return c


class Timer:
    def __init__(self):
        self.t0 = time.time()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.time() - self.t0 - sum(self.marks.values())


def _log(msg: str) -> None:
    print(msg, flush=True)


def check_toy_teacher(path) -> None:
    """ValueError unless the model at ``path`` takes the toy world's latents, text and VACE context (read from its
    config, before any weight is)."""
    from vdot_jax.sources import source_arch

    arch, toy = source_arch(path), source_arch(teacher_path())
    wrong = [f"{k} {getattr(arch, k)} (the toy world's: {getattr(toy, k)})" for k in TOY_IO
             if getattr(arch, k) != getattr(toy, k)]
    if wrong:
        raise ValueError(f"{path} is not a toy teacher: its {', '.join(wrong)}.")


def load_teacher(path=None):
    """The shipped toy teacher (or the model at ``path``: a diffusers folder, a converted model directory, or a
    training workdir, whose newest EMA is used)."""
    from vdot_jax.sources import load_transformer

    if path is not None:
        check_toy_teacher(path)
        return load_transformer(path, ema=True)
    path = teacher_path()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"the shipped toy teacher is missing from {path}; reinstall vdot-jax")
    return load_transformer(path)


def make_batches(plan: DemoPlan, with_context: bool = True):
    from vdot_jax.data.pipeline import DataPipeline, Layout

    config = data_config(plan)
    pipe = DataPipeline(config, Layout(1, plan.batch, tuple(range(plan.batch))), with_context=with_context)
    while True:
        arrays, _ = next(pipe)
        yield arrays


def distill(plan: DemoPlan, teacher, log: Callable[[str], None] = _log, distiller=None, variants=None,
            after_step: Callable | None = None):
    """Train the three students (or the ``variants`` named); returns ({variant: generator params}, {variant:
    metric history}, distiller). Pass the returned distiller back for another seed: its compiled phases are
    reused. ``after_step(name, steps_done, state)`` is called after every step (bench/demo_student_curve.py
    evaluates the student along the way)."""
    from flax import nnx

    from vdot_jax.distill.critic import critic_from_teacher
    from vdot_jax.distill.steps import Distiller

    config = distill_settings(plan, teacher.cfg.num_layers)
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(plan.seed + 1), token_dim=config.gan.token_dim,
                                 num_heads=config.gan.num_heads, ffn_dim=config.gan.ffn_dim)
    # The generator starts as the teacher (init_state copies, so the teacher itself is never donated).
    distiller = distiller or Distiller(teacher, critic, teacher, config)
    students, histories = {}, {}
    for name, (weights, use_gan) in VARIANTS.items():
        if variants is not None and name not in variants:
            continue
        state = distiller.init_state(teacher, critic, teacher, seed=plan.seed, loss_weights=weights)
        batches = make_batches(plan)
        history: dict[str, list[float]] = {}
        t0 = time.time()
        for step in range(plan.steps):
            state, metrics = distiller.train_step(state, next(batches), use_gan=use_gan)
            for k, v in metrics.items():
                history.setdefault(k, []).append(float(v))
            if after_step is not None:
                after_step(name, step + 1, state)
            if step % max(1, plan.steps // 10) == 0 or step == plan.steps - 1:
                shown = {k: round(v[-1], 4) for k, v in history.items() if is_curve(k)}
                log(f"  {name}: step {step + 1}/{plan.steps} {shown} ({time.time() - t0:.0f} s)")
        students[name] = state.ema if state.ema is not None else state.generator
        histories[name] = history
    return students, histories, distiller


def _programs(plan: DemoPlan) -> set[tuple[str, int]]:
    """(phase, latent frames) of every program the students' distillation runs: the phases of each step
    (``phases_for``, with and without the GAN) at the frame count of that step's task (reference images add
    frames)."""
    from vdot_jax.data.pipeline import ToySource
    from vdot_jax.distill.steps import phases_for

    src = ToySource(data_config(plan), encoder=None)
    refs = {t: src.world.sample_batch(np.random.default_rng(0), 1, t).refs.shape[1] for t in src.tasks}
    out = set()
    for step in range(plan.steps):
        frames = TOY_WORLD["frames"] + refs[src.step_task(step)]
        for use_gan in sorted({gan for _, gan in VARIANTS.values()}):
            out.update((name, frames) for name in phases_for(step, plan.ttur, use_gan))
    return out


def _with_frames(batch: dict, frames: int) -> dict:
    """``batch`` with its latent and context frame axes cut or zero-padded to ``frames`` (shapes for lowering)."""
    out = dict(batch)
    for k in ("latents", "context"):
        x = batch[k][..., :frames, :, :]
        pad = [(0, 0)] * x.ndim
        pad[-3] = (0, frames - x.shape[-3])
        out[k] = np.pad(x, pad)
    return out


def precompile(plan: DemoPlan, teacher, ev: "EvalSet", log: Callable[[str], None] = _log) -> int:
    """Compile every program of the run -- each distillation phase at each batch shape it meets, each evaluation
    sampler at each group shape -- before it starts, on as many threads as there are cores; returns how many.

    One XLA:CPU compile keeps ~1.3-1.4 cores busy on average (measured on 2 cores), so two at a time fill both and
    save ~a quarter of the compile time of one after another. The programs land in the persistent compilation cache (``vdot demo`` always sets
    one), where the training loop's and the evaluation's own compile requests find them; without a cache this
    does nothing."""
    import jax
    from concurrent.futures import ThreadPoolExecutor
    from flax import nnx

    from vdot_jax.distill.critic import critic_from_teacher
    from vdot_jax.distill.steps import Distiller

    if not jax.config.jax_compilation_cache_dir:
        return 0
    t0 = time.time()
    config = distill_settings(plan, teacher.cfg.num_layers)
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(plan.seed + 1), token_dim=config.gan.token_dim,
                                 num_heads=config.gan.num_heads, ffn_dim=config.gan.ffn_dim)
    distiller = Distiller(teacher, critic, teacher, config)
    state = distiller.init_state(teacher, critic, teacher, seed=plan.seed)
    example = next(make_batches(plan))
    graphdef, params = nnx.split(teacher)
    threads = os.cpu_count() or 2
    with ThreadPoolExecutor(threads) as pool:  # lowering (Python) here, compiling (XLA, no GIL) in the pool
        futures = [pool.submit(distiller.phase(name).lower(state, _with_frames(example, frames)).compile)
                   for name, frames in sorted(_programs(plan))]
        for steps, shift, guidance in _eval_settings(plan):
            for fn, args in _sampler_jobs(graphdef, params, ev, steps=steps, shift=shift, guidance=guidance,
                                          seed=plan.seed):
                futures.append(pool.submit(fn.jitted.lower(*args).compile))
        for f in futures:
            f.result()
    log(f"compiled {len(futures)} programs on {threads} threads in {time.time() - t0:.0f} s")
    return len(futures)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class EvalSet:
    """The fixed evaluation clips: the world's ground truth and the encoded model inputs, grouped by the
    number of reference frames (the latent frame count depends on it)."""

    batch: object  # TaskBatch of every evaluation clip (tasks x eval_per_task, then the coverage prompts)
    groups: list  # [(indices, {"latents", "context", "text", "neg_text"})]


def eval_set(plan: DemoPlan) -> EvalSet:
    from vdot_jax import conditions as C
    from vdot_jax.data.pipeline import make_encoder
    from vdot_jax.data.toy_world import TASK_KIND, TASKS, ToyWorld

    world = ToyWorld(frames=TOY_WORLD["frames"], height=TOY_WORLD["height"], width=TOY_WORLD["width"])
    tasks = [t for t in TASKS for _ in range(plan.eval_per_task)]
    main = world.sample_batch(np.random.default_rng([plan.eval_seed, 7]), len(tasks), tasks)
    cover = world.coverage_batch(np.random.default_rng([plan.eval_seed, 8]), n_per_prompt=plan.coverage_per_prompt)
    batch = _concat(main, cover)
    encoder = make_encoder(data_config(plan), with_context=True)
    kinds = {"t2v": "text", "r2v": "reference", "edit": "repaint", "control": "control"}
    rows = []
    for i in range(len(batch.task)):
        s = batch[i]
        vcu = C.VCU(s.frames[None], s.mask[None], s.refs[None], task=s.task, kind=kinds[TASK_KIND[s.task]])
        rows.append(encoder.encode(s.video[None], vcu, s.caption))
    groups = {}
    for i, r in enumerate(rows):
        groups.setdefault(r["latents"].shape, []).append(i)
    neg = encoder.encode_text([""])[0]
    out = []
    for idx in groups.values():
        arrays = {k: np.stack([rows[i][k] for i in idx]) for k in ("latents", "context", "text")}
        arrays["neg_text"] = np.broadcast_to(neg, arrays["text"].shape).copy()
        out.append((idx, arrays))
    return EvalSet(batch, out)


def _concat(a, b):
    """Concatenate two TaskBatches (references padded to the larger count)."""
    fields = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, list):
            fields[f.name] = x + y
        elif f.name == "refs":
            r = max(x.shape[1], y.shape[1])
            pad = lambda z: np.pad(z, ((0, 0), (0, r - z.shape[1])) + ((0, 0),) * 3)  # noqa: E731
            fields[f.name] = np.concatenate([pad(x), pad(y)])
        else:
            fields[f.name] = np.concatenate([x, y])
    return type(a)(**fields)


def _sampler_jobs(graphdef, params, ev: EvalSet, *, steps: int, shift: float, guidance: float, seed: int):
    """[(denoising program, args)] for each group of the evaluation set (one program per setting and group shape)."""
    import jax

    from vdot_jax.sampling.model_sampler import model_sampler

    fn = model_sampler(graphdef, steps=steps, shift=shift, guidance=guidance)
    return [(fn, (params, jax.random.normal(jax.random.key(seed + g), a["latents"].shape), a["text"],
                  a["neg_text"], a["context"])) for g, (_, a) in enumerate(ev.groups)]


def generate_eval(graphdef, params, ev: EvalSet, *, steps: int, shift: float, guidance: float, seed: int):
    """Decoded clips [N, 3, T, H, W] in [-1, 1] for the whole evaluation set, and seconds spent."""
    import jax

    from vdot_jax.data.pipeline import toy_vae_config
    from vdot_jax.models.toy_vae import ToyVAE

    vae = ToyVAE(toy_vae_config(data_config(DemoPlan())))
    clips = [None] * len(ev.batch.task)
    seconds = 0.0
    jobs = _sampler_jobs(graphdef, params, ev, steps=steps, shift=shift, guidance=guidance, seed=seed)
    for (idx, _), (fn, args) in zip(ev.groups, jobs):
        compiled, _ = fn.compile(*args)  # compilation stays outside the clock (once per program and input shape)
        t0 = time.time()
        z = jax.block_until_ready(compiled(*args))
        seconds += time.time() - t0
        refs = z.shape[2] - TOY_WORLD["frames"]
        video = np.asarray(vae.decode(vae.denormalize(z[:, :, refs:])))
        for j, i in enumerate(idx):
            clips[i] = video[j]
    return np.stack(clips), seconds


# ----------------------------------------------------------------------------- the run and its report

# (metric key, header, format) of the summary table
SUMMARY = [
    ("nfe", "network evals", ".0f"), ("sec_per_clip", "s / clip", ".3f"), ("all/attr_acc", "caption acc", ".3f"),
    ("edit/kept_psnr", "kept-region PSNR", ".1f"), ("control/control_iou", "control IoU", ".3f"),
    ("grey/grey_psnr", "grey PSNR", ".1f"), ("all/artifact", "artifacts", ".3f"),
    ("all/detect", "object shown", ".3f"), ("all/fragmented", "fragmented frames", ".3f"),
    ("all/sharpness", "sharpness (1 = real)", ".2f"), ("all/sinkhorn", "Sinkhorn distance", ".3f"),
    ("coverage/tv", "coverage TV", ".3f"),
]
QUALITY = [(k, h) for k, h, _ in SUMMARY if k not in ("nfe", "sec_per_clip")]  # what "better" is judged on
LOWER_IS_BETTER = {"all/artifact", "all/fragmented", "all/sinkhorn", "coverage/tv", "nfe", "sec_per_clip"}
NEAR_ONE = {"all/sharpness"}  # a ratio to the real clips: 1 is best, judged by |log2|
HOLDOUT_SEED = 1000  # eval_seed of the clips the teacher's sampling settings are chosen on (never reported on)
# (steps, guidance, shift) measured by `vdot demo --sweep-teacher` (docs/demo/teacher_sweep.md): CFG at shift 3,
# then shift at one CFG -- two axes, not the full product, to fit the 2-core CPU
TEACHER_SWEEP = ([(50, g, 3.0) for g in (1.0, 2.0, 3.0)] + [(50, 2.0, s) for s in (1.0, 6.0)]
                 + [(4, g, 3.0) for g in (1.0, 2.0, 3.0)] + [(4, 1.0, s) for s in (1.0, 6.0)])


def summarise(metrics: dict) -> dict:
    """Group averages the summary table shows (editing PSNR over the editing tasks, IoU over the controls)."""
    from vdot_jax.data.toy_world import CONTROL_TASKS, EDIT_TASKS

    def mean(keys):
        vals = [metrics[k] for k in keys if k in metrics and np.isfinite(metrics[k])]
        return float(np.mean(vals)) if vals else float("nan")

    out = dict(metrics)
    out["edit/kept_psnr"] = mean([f"{t}/kept_psnr" for t in EDIT_TASKS])
    out["control/control_iou"] = mean([f"{t}/control_iou" for t in CONTROL_TASKS])
    return out


def goodness(key: str, value: float) -> float:
    """A metric value turned so that higher is better (NaN stays NaN)."""
    from vdot_jax.eval.toy_metrics import sharpness_error

    if not np.isfinite(value):
        return float("nan")
    if key in NEAR_ONE:
        return -sharpness_error(value)
    return -value if key in LOWER_IS_BETTER else value


def beyond_spread(rows: dict, spread: dict | None, a: str, b: str, key: str) -> bool:
    """Whether rows ``a`` and ``b`` differ on ``key`` by more than their two sds together (the reports' rule; False
    without sds, e.g. one seed)."""
    if not spread:
        return False
    sa, sb = spread.get(a, {}).get(key, np.nan), spread.get(b, {}).get(key, np.nan)
    return bool(np.isfinite(sa) and np.isfinite(sb) and abs(rows[a][key] - rows[b][key]) > sa + sb)


def compare(rows: dict, a: str, b: str, spread: dict | None = None) -> tuple[list[str], list[str]]:
    """Quality metrics on which row ``a`` is better / worse than row ``b``. With ``spread`` ({row: {key: sd}}) a
    header gets a '*' when the difference of the means exceeds the sum of the two sds."""
    better, worse = [], []
    for key, header in QUALITY:
        x, y = goodness(key, rows[a].get(key, np.nan)), goodness(key, rows[b].get(key, np.nan))
        if not (np.isfinite(x) and np.isfinite(y)) or x == y:
            continue
        if beyond_spread(rows, spread, a, b, key):
            header += "*"
        (better if x > y else worse).append(header)
    return better, worse


def difference_table(rows: dict, a: str, others: list[str], spread: dict | None = None) -> str:
    """Markdown: one row per baseline b in ``others``, one column per quality metric; each cell is the difference
    a - b in the metric's units and whether that is better or worse for ``a``, with '*' when it exceeds the two
    sds together (``compare``'s rule)."""
    from vdot_jax.eval.report import markdown_table

    fmt = {k: f for k, _, f in SUMMARY}
    cells = {}
    for b in others:
        better, worse = compare(rows, a, b, spread)
        row = {}
        for key, header in QUALITY:
            verdict = next((("better" if h in better else "worse") + h[len(header):] for h in better + worse
                            if h.rstrip("*") == header), "same")
            diff = rows[a].get(key, np.nan) - rows[b].get(key, np.nan)
            row[key] = "-" if not np.isfinite(diff) else f"{diff:+{fmt[key]}} ({verdict})"
        cells[f"{a.split('student ')[-1]} - {b}"] = row
    return markdown_table(cells, [(k, h, "s") for k, h in QUALITY])


def aggregate(runs: list[dict]) -> tuple[dict, dict]:
    """Per-seed {row: {key: value}} -> (means, sample sds; NaN with one seed)."""
    means, sds = {}, {}
    for name in runs[0]:
        keys = dict.fromkeys(k for r in runs for k in r[name])
        means[name], sds[name] = {}, {}
        for k in keys:
            v = np.array([r[name].get(k, np.nan) for r in runs], float)
            v = v[np.isfinite(v)]
            means[name][k] = float(v.mean()) if len(v) else float("nan")
            sds[name][k] = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return means, sds


def _teacher_name(steps: int, guidance: float, shift: float | None = None) -> str:
    cfg = f"CFG {guidance:g}" if guidance != 1.0 else "no CFG"
    return f"teacher {steps} steps, {cfg}" + (f", shift {shift:g}" if shift is not None else "")


def score(plan: DemoPlan, ev: EvalSet, video, **extra) -> dict:
    """Summary metrics of clips [N, 3, T, H, W] for the evaluation set (``extra``: nfe, sec_per_clip)."""
    from vdot_jax.eval.toy_metrics import evaluate

    return {**summarise(evaluate(video, ev.batch, min_group=min(8, plan.coverage_per_prompt))), **extra}


def _eval_methods(plan: DemoPlan, teacher_params, students: dict) -> dict:
    """{row name: (params, steps, shift, guidance)} of the report's sampled rows."""
    return {
        _teacher_name(plan.teacher_steps, plan.guidance): (teacher_params, plan.teacher_steps, plan.teacher_shift,
                                                            plan.guidance),
        _teacher_name(plan.student_steps, plan.guidance): (teacher_params, plan.student_steps, plan.teacher_shift,
                                                            plan.guidance),
        START: (teacher_params, plan.student_steps, plan.student_shift, 1.0),  # every student's starting point
        **{name: (params, plan.student_steps, plan.student_shift, 1.0) for name, params in students.items()},
    }


def _eval_settings(plan: DemoPlan) -> list[tuple[int, float, float]]:
    """The distinct (steps, shift, guidance) the evaluation samples with (one program per group shape each)."""
    return list(dict.fromkeys(m[1:] for m in _eval_methods(plan, None, dict.fromkeys(VARIANTS)).values()))


def evaluate_methods(plan: DemoPlan, graphdef, methods: dict, ev: EvalSet, log=_log) -> tuple[dict, dict]:
    """{name: (params, steps, shift, guidance)} -> ({name: summary metrics}, {name: clips}); noise from plan.seed."""
    rows, clips = {}, {}
    for name, (params, steps, shift, guidance) in methods.items():
        video, seconds = generate_eval(graphdef, params, ev, steps=steps, shift=shift, guidance=guidance,
                                       seed=plan.seed)
        m = score(plan, ev, video, nfe=steps * (2 if guidance != 1.0 else 1),
                  sec_per_clip=seconds / len(ev.batch.task))
        rows[name], clips[name] = m, video
        log(f"  {name}: caption acc {m['all/attr_acc']:.3f}, fragmented {m['all/fragmented']:.3f}, "
            f"sharpness {m['all/sharpness']:.2f}, Sinkhorn {m['all/sinkhorn']:.3f}")
    return rows, clips


REAL = "real clips (reference)"
CLIPS = "clips_seed{}.npz"  # --keep-clips: one file per seed, what `rescore` reads


def run_demo(out_dir: str | os.PathLike = "vdot_demo", quick: bool = False, plan: DemoPlan | None = None,
             log: Callable[[str], None] = _log, seeds: int = 1, keep_clips: bool = False) -> dict:
    """Distil (``seeds`` times: seeds plan.seed .. plan.seed + seeds - 1), evaluate and write the report; returns
    the summary rows (means over seeds). ``keep_clips`` also writes every method's evaluation clips per seed
    (OUT/clips_seed<N>.npz, ~25 MB each) so that ``rescore`` can re-make the report with other metrics."""
    from flax import nnx

    if int(seeds) < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")
    plan = plan or (DemoPlan.quick() if quick else DemoPlan())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    teacher = load_teacher(plan.teacher or None)
    graphdef, teacher_params = nnx.split(teacher)
    at = f" at {plan.teacher}" if plan.teacher else ""
    log(f"loaded the toy teacher{at} ({teacher.cfg.describe()}); distilling 3 students x {plan.steps} steps "
        f"x {seeds} seed(s)")
    ev = eval_set(plan)
    t0 = time.time()
    precompile(plan, teacher, ev, log)
    timer.marks["compile"] = time.time() - t0
    (out / "plan.json").write_text(json.dumps(dataclasses.asdict(plan), indent=2))
    runs, histories, clips, distiller = [], [], None, None
    for seed in range(plan.seed, plan.seed + int(seeds)):
        p = dataclasses.replace(plan, seed=seed)
        t0 = time.time()
        students, hist, distiller = distill(p, teacher, log, distiller)
        timer.marks["distill"] = timer.marks.get("distill", 0.0) + time.time() - t0
        log(f"seed {seed}: evaluating {len(ev.batch.task)} clips per method")
        t0 = time.time()
        rows, seed_clips = evaluate_methods(p, graphdef, _eval_methods(plan, teacher_params, students), ev, log)
        rows[REAL] = score(plan, ev, ev.batch.video)
        timer.marks["evaluate"] = timer.marks.get("evaluate", 0.0) + time.time() - t0
        runs.append(rows)
        histories.append(hist)
        if keep_clips:
            np.savez_compressed(out / CLIPS.format(seed), names=np.array(list(seed_clips)),
                                clips=np.stack(list(seed_clips.values())),
                                nfe=np.array([rows[n]["nfe"] for n in seed_clips]),
                                sec_per_clip=np.array([rows[n]["sec_per_clip"] for n in seed_clips]))
            (out / "histories.json").write_text(json.dumps(histories))
            (out / "timing.json").write_text(json.dumps(timer.marks))
        clips = clips or seed_clips  # the grid shows the first seed
        if seed == plan.seed:  # the first seed's VDOT student, for vdot ui (the toy student beside the teacher)
            save_student(out / STUDENT_DIR, graphdef, students["student VDOT"])
    means, sds = aggregate(runs)
    t0 = time.time()
    write_report(out, plan, means, sds if seeds > 1 else None, histories, clips, ev, timer, runs)
    timer.marks["report"] = time.time() - t0
    total = time.time() - timer.t0
    log(f"vdot demo: wrote {out / 'report.md'} in {total / 60:.1f} min "
        f"(compilation ahead {timer.marks['compile']:.0f} s, distillation {timer.marks['distill']:.0f} s, "
        f"evaluation {timer.marks['evaluate']:.0f} s; "
        f"{seeds} seed(s){'' if seeds > 1 else ': margins are single-seed, see --seeds'})")
    return means


STUDENT_DIR = "student"  # OUT/student: the VDOT student as a diffusers transformer folder, like the teacher's


def save_student(path: Path, graphdef, params) -> Path:
    """The student's weights as the shipped teacher's are stored (a diffusers transformer folder, float32); ``vdot ui``
    serves it with the toy world's VAE and text encoder at the students' settings."""
    from flax import nnx

    from vdot_jax.weights.export import export_transformer
    from vdot_jax.weights.params import flat_state

    model = nnx.merge(graphdef, params)
    export_transformer(flat_state(model), model.cfg, path, layout="diffusers", dtype="float32")
    return path


def rescore(out_dir: str | os.PathLike, log: Callable[[str], None] = _log) -> dict:
    """Re-make OUT's report from the clips a ``--keep-clips`` run saved, with the current metrics (no
    distillation, no sampling); every saved seed counts. Returns the summary rows (means over seeds)."""
    out = Path(out_dir)
    files = sorted(out.glob(CLIPS.format("*")), key=lambda f: int(f.stem.split("seed")[1]))
    if not files or not (out / "plan.json").exists():
        raise FileNotFoundError(f"{out} has no clips_seed<N>.npz and plan.json: make it with `vdot demo "
                                "--keep-clips`")
    plan = DemoPlan(**json.loads((out / "plan.json").read_text()))
    ev = eval_set(plan)
    histories = json.loads((out / "histories.json").read_text())[:len(files)]
    timer = Timer()
    timer.marks = json.loads((out / "timing.json").read_text())
    runs, clips = [], None
    for f in files:
        z = np.load(f)
        seed_clips = dict(zip(map(str, z["names"]), z["clips"]))
        rows = {n: score(plan, ev, v, nfe=float(k), sec_per_clip=float(sec))
                for (n, v), k, sec in zip(seed_clips.items(), z["nfe"], z["sec_per_clip"])}
        rows[REAL] = score(plan, ev, ev.batch.video)
        runs.append(rows)
        clips = clips or seed_clips
        log(f"rescored {f.name}")
    means, sds = aggregate(runs)
    write_report(out, plan, means, sds if len(runs) > 1 else None, histories, clips, ev, timer, runs)
    log(f"vdot demo: re-made {out / 'report.md'} from {len(runs)} seed(s)")
    return means


TIME_MARKS = (("compile", "compilation ahead"), ("distill", "distillation"), ("evaluate", "evaluation"))


def _mean_curves(histories: list[dict]) -> dict:
    """Per-seed {variant: {metric: values}} -> the mean over seeds of each curve
    (``vdot_jax.train.logging.is_curve``)."""
    out = {}
    for name in histories[0]:
        out[name] = {}
        for k in histories[0][name]:
            if is_curve(k):
                out[name][k] = np.mean([np.asarray(h[name][k], float) for h in histories], 0)
    return out


def write_report(out: Path, plan: DemoPlan, rows: dict, spread: dict | None, histories: list[dict], clips: dict,
                 ev: EvalSet, timer: Timer, runs: list[dict] | None = None):
    from vdot_jax.data.toy_world import TASKS
    from vdot_jax.eval import report

    names = list(clips)
    t50, t4, vdot = names[0], names[1], "student VDOT"
    nseeds = len(histories)
    report.plot_curves(_mean_curves(histories), out / "training_curves.png",
                       "student distillation losses" + (f" (mean of {nseeds} seeds)" if nseeds > 1 else ""))
    report.plot_bars({n: rows[n] for n in names}, QUALITY, out / "metrics.png",
                     "evaluation" + (f": mean ± sd over {nseeds} seeds" if nseeds > 1 else " (one seed)")
                     + "; lower is better for artifacts, fragmented, Sinkhorn, coverage TV; sharpness best at 1",
                     spread=spread)
    first = {t: ev.batch.task.index(t) for t in TASKS if t in ev.batch.task}
    labels = ["condition", "real", f"teacher {plan.teacher_steps}", f"teacher {plan.student_steps}",
              "DMD only", "OT only", "VDOT"]
    picks = ["condition", "real", t50, START, "student DMD only", "student OT only", vdot]
    grids = []
    for task, i in first.items():
        row = [ev.batch.frames[i] if p == "condition" else ev.batch.video[i] if p == "real" else clips[p][i]
               for p in picks]
        grids.append(row)
        report.write_grid(report.video_grid([row], scale=3, col_labels=labels, row_labels=[task]),
                          out / f"grid_{task}")
    report.write_grid(report.video_grid(grids, scale=3, col_labels=labels, row_labels=list(first)), out / "grid_all")

    def sentence(a, b):
        better, worse = compare(rows, a, b, spread)
        return f"better on {', '.join(better) or 'nothing'}; worse on {', '.join(worse) or 'nothing'}"

    if nseeds > 1:
        margin = (f"Means ± sample sd over {nseeds} seeds ({plan.seed}..{plan.seed + nseeds - 1}: distillation data, "
                  "critic head, noise, and the sampling noise of every row; the evaluation clips are fixed). A '*' "
                  "marks a difference of the means larger than the two sds together.")
    else:
        margin = ("**One seed: these margins are single-seed and unmeasured.** `vdot demo --seeds 3` distils every "
                  "student with 3 seeds and reports mean ± sd, marking the differences that exceed the spread.")
    lines = [
        "# vdot demo report",
        "",
        "A 4-step student distilled from the "
        + (f"toy VACE teacher at `{plan.teacher}`" if plan.teacher else "shipped toy VACE teacher")
        + " with VDOT (DMD + OT + GAN), against the "
        f"teacher at {plan.teacher_steps} and {plan.student_steps} steps and against students trained with DMD "
        f"only and OT only. {len(ev.batch.task)} evaluation clips: {plan.eval_per_task} per task for "
        f"{len(first)} tasks, plus {plan.coverage_per_prompt} per prompt with an unspecified attribute "
        "(mode coverage). Every student: the same teacher, data, steps "
        f"({plan.steps}, generator every {plan.ttur}th), seed and compiled programs. Teacher sampling: UniPC, "
        f"CFG {plan.guidance:g}, shift {plan.teacher_shift:g} (chosen on held-out clips, docs/demo/teacher_sweep.md); "
        f"students and the teacher's no-CFG row: {plan.student_steps} steps, shift {plan.student_shift:g}.",
        "",
        margin,
        "",
        "## Summary",
        "",
        report.markdown_table(rows, SUMMARY, spread),
        "",
        "Caption accuracy: colour, shape and motion read off the pixels, over the attributes the prompt or "
        "condition fixes. Kept-region PSNR: editing and extension tasks, against the source where the mask "
        "keeps it. Control IoU: the generated object against the depth / edge map's object. Artifacts: "
        "fraction of off-world pixels. Object shown: fraction of frames with an object of at least 3 pixels "
        "(real clips: 1; a sampler that returns the conditional mean smears a moving object below the colour "
        "threshold). Fragmented frames: of the frames showing an object, those whose object is split into several "
        "pieces (real clips: 0). Sharpness: high-frequency energy against the real clips of the same samples (1 = as "
        "sharp; below 1 blurred, above 1 noisy or fragmented). Sinkhorn distance: debiased Sinkhorn divergence "
        "(ott-jax) between features of generated and real clips. Coverage TV: total variation from uniform of "
        "the unspecified attribute (0 = all values equally; the real-clips row is its sampling floor).",
        "",
        "## How the VDOT student compares",
        "",
        f"- Against the teacher at {plan.student_steps} steps (same budget of steps): {sentence(vdot, t4)}.",
        f"- Against the teacher at {plan.teacher_steps} steps ({rows[t50]['nfe']:.0f} network "
        f"evaluations vs {rows[vdot]['nfe']:.0f}): {sentence(vdot, t50)}.",
        f"- Against its own starting point (the teacher sampled like a student: {plan.student_steps} "
        f"steps, no CFG): {sentence(vdot, START)}.",
    ]
    for other in ("student DMD only", "student OT only"):
        lines.append(f"- Against the {other.split('student ')[1]} student: {sentence(vdot, other)}.")
    lines.append(f"- The teacher at {plan.teacher_steps} steps against itself at {plan.student_steps}: "
                 f"{sentence(t50, t4)}.")
    lines += [
        "",
        "The VDOT student minus each baseline (in each metric's units; 'better' / 'worse' for VDOT"
        + (", '*' where the difference exceeds the two sds together" if spread else ", one seed: no spread")
        + "):",
        "",
        difference_table(rows, vdot, [t50, t4, START, "student DMD only", "student OT only"], spread),
    ]
    per_task = {n: rows[n] for n in names}
    lines += [
        "",
        "## Per task",
        "",
        report.markdown_table(per_task, [(f"{t}/attr_acc", f"{t} acc", ".2f") for t in first], spread),
        "",
        report.markdown_table(per_task, [(f"{t}/fragmented", f"{t} fragm.", ".2f") for t in first], spread),
        "",
        report.markdown_table(per_task, [(f"{t}/sinkhorn", f"{t} Sinkhorn", ".2f") for t in first], spread),
        "",
        "## Files",
        "",
        "- `training_curves.png` (the three students' losses), `metrics.png` (each metric"
        + (", ± one sd)" if spread else ")"),
        f"- `grid_all.gif`: one row per task, columns {' | '.join(labels)} (first seed; each frame 96 px, "
        "nearest-neighbour); `grid_<task>.mp4/.gif`: one task",
        "- `metrics.json`: every metric (means), `metrics_per_seed.json`",
        "",
        "Time: " + ", ".join(f"{label} {timer.marks[k]:.0f} s" for k, label in TIME_MARKS if k in timer.marks)
        + f" on this machine ({nseeds} seed(s)).",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps(rows, indent=2, default=float))
    if spread:
        (out / "metrics_sd.json").write_text(json.dumps(spread, indent=2, default=float))
    (out / "metrics_per_seed.json").write_text(json.dumps(runs or [rows], indent=2, default=float))


# ----------------------------------------------------------------------------- the teacher's sampling settings


def sweep_teacher(out_dir: str | os.PathLike, plan: DemoPlan | None = None, grid: list | None = None,
                  log: Callable[[str], None] = _log, teacher=None) -> dict:
    """Measure the shipped teacher at every (steps, guidance, shift) of ``grid`` on held-out clips
    (``HOLDOUT_SEED``), rank the settings by their mean rank over the quality metrics, and write
    OUT/teacher_sweep.md and .json. The demo's teacher settings (DemoPlan.guidance, teacher_shift) are the
    best-ranked many-step setting; the report says on which metrics it beats every few-step setting."""
    from flax import nnx

    plan = plan or DemoPlan(eval_seed=HOLDOUT_SEED, eval_per_task=2, coverage_per_prompt=6)
    grid = grid or TEACHER_SWEEP
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    graphdef, params = nnx.split(load_teacher(teacher))
    ev = eval_set(plan)
    methods = {_teacher_name(n, g, s): (params, n, s, g) for n, g, s in grid}
    log(f"teacher sweep: {len(methods)} settings x {len(ev.batch.task)} held-out clips")
    rows, _ = evaluate_methods(plan, graphdef, methods, ev, log)
    names = list(rows)
    ranks = {n: [] for n in names}
    for key, _ in QUALITY:
        g = np.array([goodness(key, rows[n].get(key, np.nan)) for n in names])
        order = (-np.nan_to_num(g, nan=-np.inf)).argsort(kind="stable")
        for r, i in enumerate(order):
            ranks[names[i]].append(r + 1)
    for n in names:
        rows[n]["mean_rank"] = float(np.mean(ranks[n]))
    many, few = max(n for n, _, _ in grid), min(n for n, _, _ in grid)
    by_steps = {k: sorted((n for n in names if methods[n][1] == k), key=lambda n: rows[n]["mean_rank"])
                for k in (many, few)}
    best = by_steps[many][0]
    beats, loses = [], []
    for key, header in QUALITY:
        mine = goodness(key, rows[best].get(key, np.nan))
        rivals = [goodness(key, rows[n].get(key, np.nan)) for n in by_steps[few]]
        (beats if all(mine > r for r in rivals if np.isfinite(r)) else loses).append(header)
    from vdot_jax.eval import report

    cols = [("nfe", "network evals", ".0f"), ("mean_rank", "mean rank", ".1f")] + [
        (k, h, f) for k, h, f in SUMMARY if (k, h) in QUALITY]
    ordered = {n: rows[n] for k in (many, few) for n in by_steps[k]}
    lines = [
        "# The toy teacher's sampling settings",
        "",
        f"`vdot demo --sweep-teacher` on {len(ev.batch.task)} held-out clips (evaluation seed {plan.eval_seed}: "
        f"{plan.eval_per_task} per task, {plan.coverage_per_prompt} per coverage prompt; never the demo's clips), "
        f"UniPC, sampling noise seed {plan.seed}. Mean rank: the setting's rank among all {len(names)} on each "
        "quality metric, averaged (sharpness ranked by its distance from 1). Sorted by mean rank within each "
        "step count.",
        "",
        report.markdown_table(ordered, cols),
        "",
        f"Chosen: **{best}** (best mean rank at {many} steps). Against every {few}-step setting it is better on "
        f"{', '.join(beats) or 'nothing'}; not on {', '.join(loses) or 'nothing'}.",
        "",
        f"Measured in {(time.time() - t0) / 60:.1f} min on this machine.",
    ]
    (out / "teacher_sweep.md").write_text("\n".join(lines) + "\n")
    (out / "teacher_sweep.json").write_text(json.dumps(rows, indent=2, default=float))
    log(f"teacher sweep: chosen {best}; beats every {few}-step setting on {', '.join(beats) or 'nothing'}; "
        f"wrote {out / 'teacher_sweep.md'}")
    return {"best": best, "beats": beats, "loses": loses, "rows": rows}


# The premise the toy teacher must show (issue 26): 50 steps beat 4 at the same CFG on these metrics.
PROBE_SETTINGS = [(50, 2.0, 6.0), (4, 2.0, 6.0)]  # (steps, guidance, shift): the demo's teacher rows
PROBE_KEYS = ["all/attr_acc", "all/detect", "all/fragmented", "all/artifact"]
SHIPPED_STEPS = 4750  # training steps behind the shipped teacher (stage 1 4,000 + stage 2 750)


def probe_teacher(out_dir: str | os.PathLike, teacher=None, log: Callable[[str], None] = _log,
                  seeds: int = 1) -> dict:
    """A lighter ``sweep_teacher``: the teacher at ``teacher`` (a workdir -- its EMA at the newest step -- or a model
    folder; default the shipped one) at 50 and 4 steps with the demo's CFG, on the sweep's held-out clips, with
    sampling noise seeds 0 .. seeds-1 (means, and sample sds when seeds > 1: the spread the 3-seed report's
    teacher rows have). The row is added to OUT/teacher_probe.json under its training step (counted from stage
    1's start for the shipped teacher and runs that start from it; a run from scratch counts its own), and
    OUT/teacher_probe.md / .png are re-drawn over every row there, so probing each checkpoint draws the curve."""
    from flax import nnx

    from vdot_jax.sources import load_transformer, resolve

    total = SHIPPED_STEPS
    if teacher is not None:
        src = resolve(teacher, ema=True)
        if src.kind == "workdir":  # a run from scratch (stage 'wide') counts its own steps; one from a teacher
            started = json.loads((Path(teacher) / "config.json").read_text())["model"].get("teacher")
            total = (SHIPPED_STEPS if started else 0) + src.step  # (stage 3) adds the shipped teacher's
        model = load_transformer(teacher, ema=True)
    else:
        model = load_teacher()
    plan = DemoPlan(eval_seed=HOLDOUT_SEED, eval_per_task=2, coverage_per_prompt=6)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    graphdef, params = nnx.split(model)
    ev = eval_set(plan)
    methods = {_teacher_name(n, g, s): (params, n, s, g) for n, g, s in PROBE_SETTINGS}
    runs = []
    for seed in range(int(seeds)):  # one compiled sampler per step count: the seed only changes the noise
        log(f"teacher probe: sampling noise seed {seed}")
        runs.append(evaluate_methods(dataclasses.replace(plan, seed=seed), graphdef, methods, ev, log)[0])
    rows, sds = aggregate(runs)
    path = out / "teacher_probe.json"
    probes = json.loads(path.read_text()) if path.exists() else {}
    probes[str(total)] = {"teacher": str(teacher or "shipped"), "minutes": (time.time() - t0) / 60,
                          "seeds": len(runs), "rows": rows}
    if len(runs) > 1:  # the sds, and each seed's probe metrics: the curve follows noise seed 0 across probes
        probes[str(total)]["sd"] = sds
        probes[str(total)]["per_seed"] = [{n: {k: r[n][k] for k in PROBE_KEYS} for n in r} for r in runs]
    path.write_text(json.dumps(probes, indent=2, default=float))
    _draw_probes(out, probes)
    log(f"teacher probe at step {total}: wrote {out / 'teacher_probe.md'}")
    return probes[str(total)]


def _draw_probes(out: Path, probes: dict) -> None:
    steps = sorted(probes, key=int)
    names = [_teacher_name(n, g, s) for n, g, s in PROBE_SETTINGS]
    headers = dict((k, h) for k, h, _ in SUMMARY)
    lines = ["# The toy teacher over training: 50 vs 4 steps at the same CFG",
             "",
             f"`vdot demo --probe-teacher PATH [--seeds N]` on the held-out clips of `teacher_sweep.md` (evaluation "
             f"seed {HOLDOUT_SEED}), sampling noise seeds 0 .. N-1: the mean, and ± the sample sd over the seeds "
             "where N > 1. A metric is **bold** where the 50-step row is better than the 4-step row, with * where "
             "the difference exceeds the two sds together (the report's rule).",
             "",
             "| training step | seeds | sampler | " + " | ".join(headers[k] for k in PROBE_KEYS) + " |",
             "|---|---|---|" + "---|" * len(PROBE_KEYS)]
    for st in steps:
        rows, sds = probes[st]["rows"], probes[st].get("sd", {})
        for name in names:
            cells = []
            for k in PROBE_KEYS:
                v = rows[name][k]
                a, b = rows[names[0]][k], rows[names[1]][k]
                cell = f"{v:.3f}"
                if name == names[0] and goodness(k, a) > goodness(k, b):
                    cell = f"**{cell}**"
                    if beyond_spread(rows, sds, names[0], names[1], k):
                        cell += "*"
                if sds:
                    cell += f" ± {sds[name][k]:.3f}"
                cells.append(cell)
            lines.append(f"| {int(st):,} | {probes[st].get('seeds', 1)} | {name} | " + " | ".join(cells) + " |")
    (out / "teacher_probe.md").write_text("\n".join(lines) + "\n")
    from vdot_jax.eval.report import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(PROBE_KEYS), figsize=(4 * len(PROBE_KEYS), 3), squeeze=False)
    x = [int(s) for s in steps]
    several = [s for s in steps if "per_seed" in probes[s]]
    for ax, k in zip(axes[0], PROBE_KEYS):
        for i, name in enumerate(names):
            first = [probes[s]["per_seed"][0][name][k] if s in several else probes[s]["rows"][name][k] for s in steps]
            ax.plot(x, first, marker="o", color=f"C{i}", label=f"{name}: noise seed 0")
            if several:
                ax.errorbar([int(s) for s in several], [probes[s]["rows"][name][k] for s in several],
                            yerr=[probes[s]["sd"][name][k] for s in several], fmt="s", mfc="none", capsize=4,
                            color=f"C{i}", label="squares: mean ± sd over the probe's seeds" if i == 0 else None)
        ax.set_title(headers[k] + (" (lower is better)" if k in LOWER_IS_BETTER else ""))
        ax.set_xlabel("teacher training step")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "teacher_probe.png", dpi=100)
    plt.close(fig)
