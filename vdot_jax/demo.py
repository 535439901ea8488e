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

# The world and encoders the teacher was trained with (configs/toy_teacher.py reads these).
# 5 frames at 32x32 -> 5x16x16 latents, 320 tokens (384 with a reference image): small enough for 2 CPU cores.
# latent_std_floor tames the toy VAE's heavy-tailed detail bands (see its docstring).
TOY_WORLD = dict(frames=5, height=32, width=32, text_dim=32, text_len=8, text_seed=0, latent_std_floor=0.25)
TEACHER_ASSET = "assets/toy_teacher"
START = "teacher 4 steps, no CFG (students' start)"


@dataclass
class DemoPlan:
    steps: int = 150  # distillation steps per student (critic every step, generator every ttur-th)
    batch: int = 4
    eval_per_task: int = 5
    coverage_per_prompt: int = 8
    teacher_steps: int = 50
    guidance: float = 3.0
    teacher_shift: float = 3.0
    student_steps: int = 4  # release: 4 UniPC steps, no CFG
    student_shift: float = 3.0  # release 16 at 81x480x832; the toy clips are sampled at the teacher's shift
    generator_lr: float = 2e-5
    critic_lr: float = 1e-4
    ttur: int = 5
    seed: int = 0

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
    return c


class Timer:
    def __init__(self):
        self.t0 = time.time()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = time.time() - self.t0 - sum(self.marks.values())


def _log(msg: str) -> None:
    print(msg, flush=True)


def load_teacher():
    from vdot_jax.weights.convert import load_transformer

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


def distill(plan: DemoPlan, teacher, log: Callable[[str], None] = _log):
    """Train the three students; returns ({variant: generator params}, {variant: metric history}, distiller)."""
    from flax import nnx

    from vdot_jax.distill.critic import critic_from_teacher
    from vdot_jax.distill.steps import Distiller

    config = distill_settings(plan, teacher.cfg.num_layers)
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(plan.seed + 1), token_dim=config.gan.token_dim,
                                 num_heads=config.gan.num_heads, ffn_dim=config.gan.ffn_dim)
    # The generator starts as the teacher (init_state copies, so the teacher itself is never donated).
    distiller = Distiller(teacher, critic, teacher, config)
    students, histories = {}, {}
    for name, (weights, use_gan) in VARIANTS.items():
        state = distiller.init_state(teacher, critic, teacher, seed=plan.seed, loss_weights=weights)
        batches = make_batches(plan)
        history: dict[str, list[float]] = {}
        t0 = time.time()
        for step in range(plan.steps):
            state, metrics = distiller.train_step(state, next(batches), use_gan=use_gan)
            for k, v in metrics.items():
                history.setdefault(k, []).append(float(v))
            if step % max(1, plan.steps // 10) == 0 or step == plan.steps - 1:
                shown = {k: round(v[-1], 4) for k, v in history.items() if k.endswith("loss")}
                log(f"  {name}: step {step + 1}/{plan.steps} {shown} ({time.time() - t0:.0f} s)")
        students[name] = state.generator
        histories[name] = history
    return students, histories, distiller


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
    main = world.sample_batch(np.random.default_rng([plan.seed, 7]), len(tasks), tasks)
    cover = world.coverage_batch(np.random.default_rng([plan.seed, 8]), n_per_prompt=plan.coverage_per_prompt)
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


def generate_eval(graphdef, params, ev: EvalSet, *, steps: int, shift: float, guidance: float, seed: int):
    """Decoded clips [N, 3, T, H, W] in [-1, 1] for the whole evaluation set, and seconds spent."""
    import jax

    from vdot_jax.data.pipeline import toy_vae_config
    from vdot_jax.models.toy_vae import ToyVAE

    vae = ToyVAE(toy_vae_config(data_config(DemoPlan())))
    from vdot_jax.sampling.model_sampler import model_sampler

    fn = model_sampler(graphdef, steps=steps, shift=shift, guidance=guidance)
    clips = [None] * len(ev.batch.task)
    seconds = 0.0
    for g, (idx, a) in enumerate(ev.groups):
        noise = jax.random.normal(jax.random.key(seed + g), a["latents"].shape)
        args = (params, noise, a["text"], a["neg_text"], a["context"])
        compiled = fn.lower(*args).compile()  # compilation stays outside the clock
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
    ("all/sinkhorn", "Sinkhorn distance", ".3f"), ("coverage/tv", "coverage TV", ".3f"),
]
LOWER_IS_BETTER = {"all/artifact", "all/sinkhorn", "coverage/tv", "nfe", "sec_per_clip"}


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


def compare(rows: dict, a: str, b: str) -> tuple[list[str], list[str]]:
    """Summary metrics on which row ``a`` is better / worse than row ``b``."""
    better, worse = [], []
    for key, header, _ in SUMMARY:
        if key in ("nfe", "sec_per_clip"):
            continue
        x, y = rows[a].get(key, np.nan), rows[b].get(key, np.nan)
        if not (np.isfinite(x) and np.isfinite(y)) or x == y:
            continue
        (better if (x < y) == (key in LOWER_IS_BETTER) else worse).append(header)
    return better, worse


def run_demo(out_dir: str | os.PathLike = "vdot_demo", quick: bool = False, plan: DemoPlan | None = None,
             log: Callable[[str], None] = _log) -> dict:
    """Distil, evaluate and write the report; returns the summary rows."""
    from flax import nnx

    from vdot_jax.eval.toy_metrics import evaluate

    plan = plan or (DemoPlan.quick() if quick else DemoPlan())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    teacher = load_teacher()
    graphdef, teacher_params = nnx.split(teacher)
    log(f"loaded the toy teacher ({teacher.cfg.describe()}); distilling 3 students x {plan.steps} steps")
    students, histories, _ = distill(plan, teacher, log)
    timer.mark("distill")
    ev = eval_set(plan)
    log(f"evaluating {len(ev.batch.task)} clips per method")
    methods = {
        f"teacher {plan.teacher_steps} steps + CFG": (teacher_params, plan.teacher_steps, plan.teacher_shift,
                                                      plan.guidance),
        f"teacher {plan.student_steps} steps + CFG": (teacher_params, plan.student_steps, plan.teacher_shift,
                                                      plan.guidance),
        START: (teacher_params, plan.student_steps, plan.student_shift, 1.0),  # every student's starting point
        **{name: (params, plan.student_steps, plan.student_shift, 1.0) for name, params in students.items()},
    }
    rows, clips = {}, {}
    for name, (params, steps, shift, guidance) in methods.items():
        video, seconds = generate_eval(graphdef, params, ev, steps=steps, shift=shift, guidance=guidance,
                                       seed=plan.seed)
        m = summarise(evaluate(video, ev.batch, min_group=min(8, plan.coverage_per_prompt)))
        m["nfe"] = steps * (2 if guidance != 1.0 else 1)
        m["sec_per_clip"] = seconds / len(ev.batch.task)
        rows[name], clips[name] = m, video
        log(f"  {name}: caption acc {m['all/attr_acc']:.3f}, Sinkhorn {m['all/sinkhorn']:.3f}")
    real = summarise(evaluate(ev.batch.video, ev.batch, min_group=min(8, plan.coverage_per_prompt)))
    rows["real clips (reference)"] = real
    timer.mark("evaluate")
    write_report(out, plan, rows, histories, clips, ev, timer)
    timer.mark("report")
    total = sum(timer.marks.values())
    log(f"vdot demo: wrote {out / 'report.md'} in {total / 60:.1f} min "
        f"(distillation {timer.marks['distill']:.0f} s, evaluation {timer.marks['evaluate']:.0f} s)")
    return rows


def write_report(out: Path, plan: DemoPlan, rows: dict, histories: dict, clips: dict, ev: EvalSet, timer: Timer):
    from vdot_jax.data.toy_world import TASKS
    from vdot_jax.eval import report

    names = list(clips)
    t50, t4, vdot = names[0], names[1], "student VDOT"
    curves = {n: {k: v for k, v in h.items() if k.endswith("loss")} for n, h in histories.items()}
    report.plot_curves(curves, out / "training_curves.png", "distillation losses")
    report.plot_bars({n: rows[n] for n in names}, [(k, h) for k, h, _ in SUMMARY[2:]], out / "metrics.png",
                     "evaluation (higher is better except artifacts, Sinkhorn, coverage TV)")
    grids = []
    first = {t: ev.batch.task.index(t) for t in TASKS if t in ev.batch.task}
    for task, i in first.items():
        cond = ev.batch.frames[i]
        row = [cond, clips[t50][i], clips[t4][i], clips[vdot][i]]
        grids.append(row)
        report.write_grid(report.video_grid([row], scale=3), out / f"grid_{task}")
    report.write_grid(report.video_grid(grids, scale=2), out / "grid_all")

    better4, worse4 = compare(rows, vdot, t4)
    better50, worse50 = compare(rows, vdot, t50)
    lines = [
        "# vdot demo report",
        "",
        f"A 4-step student distilled from the shipped toy VACE teacher with VDOT (DMD + OT + GAN), against the "
        f"teacher at {plan.teacher_steps} and {plan.student_steps} steps and against students trained with DMD "
        f"only and OT only. {len(ev.batch.task)} evaluation clips: {plan.eval_per_task} per task for "
        f"{len(first)} tasks, plus {plan.coverage_per_prompt} per prompt with an unspecified attribute "
        "(mode coverage). Every student: the same teacher, data, steps "
        f"({plan.steps}, generator every {plan.ttur}th), seed and compiled programs.",
        "",
        "## Summary",
        "",
        report.markdown_table(rows, SUMMARY),
        "",
        "Caption accuracy: colour, shape and motion read off the pixels, over the attributes the prompt or "
        "condition fixes. Kept-region PSNR: editing and extension tasks, against the source where the mask "
        "keeps it. Control IoU: the generated object against the depth / edge map's object. Artifacts: "
        "fraction of off-world pixels. Sinkhorn distance: debiased Sinkhorn divergence (ott-jax) between "
        "features of generated and real clips (the real-clips row is the floor of two real sets of this size). "
        "Coverage TV: total variation from uniform of the unspecified attribute (0 = all values equally).",
        "",
        "## How the VDOT student compares",
        "",
        f"- Against the teacher at {plan.student_steps} steps (same budget of steps): better on "
        f"{', '.join(better4) or 'nothing'}; worse on {', '.join(worse4) or 'nothing'}.",
        f"- Against the teacher at {plan.teacher_steps} steps with CFG ({rows[t50]['nfe']:.0f} network "
        f"evaluations vs {rows[vdot]['nfe']:.0f}): better on {', '.join(better50) or 'nothing'}; worse on "
        f"{', '.join(worse50) or 'nothing'}.",
    ]
    b, w = compare(rows, vdot, START)
    lines.append(f"- Against its own starting point (the teacher sampled like a student: {plan.student_steps} "
                 f"steps, no CFG): better on {', '.join(b) or 'nothing'}; worse on {', '.join(w) or 'nothing'}.")
    for other in ("student DMD only", "student OT only"):
        b, w = compare(rows, vdot, other)
        lines.append(f"- Against the {other.split('student ')[1]} student: better on {', '.join(b) or 'nothing'}; "
                     f"worse on {', '.join(w) or 'nothing'}.")
    per_task = {n: rows[n] for n in names}
    task_cols = [(f"{t}/attr_acc", f"{t} acc", ".2f") for t in first]
    lines += [
        "",
        "## Per task",
        "",
        report.markdown_table(per_task, task_cols),
        "",
        report.markdown_table(per_task, [(f"{t}/sinkhorn", f"{t} Sinkhorn", ".2f") for t in first]),
        "",
        "## Files",
        "",
        "- `training_curves.png`, `metrics.png`",
        "- `grid_<task>.mp4/.gif`: condition | teacher "
        f"{plan.teacher_steps} steps | teacher {plan.student_steps} steps | VDOT student; `grid_all.gif`: one row "
        "per task",
        "",
        f"Time: distillation {timer.marks.get('distill', 0):.0f} s, evaluation {timer.marks.get('evaluate', 0):.0f} s "
        "on this machine.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "metrics.json").write_text(json.dumps(rows, indent=2, default=float))
