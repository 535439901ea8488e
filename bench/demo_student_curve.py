"""How a demo student's report metrics move over distillation steps, for a given toy teacher, as JSON.

    python bench/demo_student_curve.py --teacher DIR --steps 600 --every 150 --out out/curve.json

The student is distilled with `vdot demo`'s plan (`vdot_jax.demo.DemoPlan`; `--steps` and `--generator-lr`
override it) from the teacher at DIR (a training workdir such as `teacher_wide_run/`, whose EMA is used, a diffusers transformer
folder or a converted model directory; default the shipped teacher), and sampled on the
demo's 82 evaluation clips (4 steps, no CFG, noise seed `--seed`) every `--every` steps. The teacher's own rows
(50 and 4 steps at the demo's CFG, and the students' 4-step no-CFG start) are sampled once with `--with-teacher`.
It answers "how many steps does the student need with this teacher" without running the whole demo
(docs/demo/README.md has the curve measured for the 128-wide teacher).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import write_json  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None, help="toy teacher folder (default: the shipped one)")
    p.add_argument("--variant", default="student VDOT", help="which student: 'student VDOT', 'student DMD only', "
                                                            "'student OT only'")
    p.add_argument("--steps", type=int, default=600, help="distillation steps")
    p.add_argument("--every", type=int, default=150, help="evaluate the student every N steps")
    p.add_argument("--generator-lr", type=float, default=None, help="default: the demo's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a distillation setting, e.g. ema.decay=0.9 or loss.gan_generator_weight=0.3 (repeatable); "
                        "with ema.decay > 0 the student evaluated is the EMA")
    p.add_argument("--with-teacher", action="store_true", help="also sample the teacher's rows once")
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)

    from flax import nnx

    from vdot_jax import demo as D

    if args.variant not in D.VARIANTS:
        p.error(f"--variant must be one of {sorted(D.VARIANTS)}, not {args.variant!r}")
    if args.steps < 1 or args.every < 1:
        p.error("--steps and --every must be at least 1")
    overrides = []
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--set takes KEY=VALUE, not {item!r}")
        overrides.append((key, float(value)))
    plan = dataclasses.replace(D.DemoPlan(seed=args.seed), steps=args.steps, overrides=tuple(overrides),
                               **({"generator_lr": args.generator_lr} if args.generator_lr else {}))
    try:
        D.distill_settings(plan, 1)  # an unknown key fails here, before the teacher is loaded
    except (KeyError, ValueError) as e:
        p.error(str(e))
    teacher = D.load_teacher(args.teacher)
    graphdef, teacher_params = nnx.split(teacher)
    ev = D.eval_set(plan)
    result = {"teacher": args.teacher or "shipped", "model": teacher.cfg.describe(), "variant": args.variant,
              "plan": dataclasses.asdict(plan), "clips": len(ev.batch.task), "curve": {}, "teacher_rows": {}}

    keys = [k for k, _, _ in D.SUMMARY if k != "nfe"]  # the report's columns

    def row(metrics):
        return {k: float(metrics[k]) for k in keys}

    if args.with_teacher:
        rows, _ = D.evaluate_methods(plan, graphdef, D._eval_methods(plan, teacher_params, {}), ev)
        result["teacher_rows"] = {n: row(r) for n, r in rows.items()}

    t0 = time.time()

    def after_step(name, done, state):
        if done % args.every and done != args.steps:
            return
        student = state.ema if state.ema is not None else state.generator
        rows, _ = D.evaluate_methods(plan, graphdef, {name: (student, plan.student_steps,
                                                             plan.student_shift, 1.0)}, ev, log=lambda s: None)
        result["curve"][str(done)] = {**row(rows[name]), "minutes": (time.time() - t0) / 60}
        print(f"step {done}: " + ", ".join(f"{k} {v:.3f}" for k, v in result["curve"][str(done)].items()),
              flush=True)

    D.distill(plan, teacher, variants={args.variant}, after_step=after_step)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
