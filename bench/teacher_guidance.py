"""The toy teacher's 50 vs 4 steps at several CFG scales on the probe's held-out clips, as JSON.

    python bench/teacher_guidance.py --teacher teacher_wide_run --guidance 1.5 2 3 --seeds 3 --out out/cfg.json

`vdot demo --probe-teacher` measures one setting (the demo's CFG 2, shift 6) over training; this asks, for one
checkpoint, at which CFG scale (same for both step counts, as issue 26 asks) its 50 steps beat its 4 on the probe's
metrics. Each scale is sampled with noise seeds 0 .. N-1 on the probe's 44 held-out clips; a metric is marked
``beyond_spread`` where the 50-step mean is better by more than the two sds together (the report's rule).
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
    p.add_argument("--teacher", default=None, help="training workdir (its EMA) or model folder (default: shipped)")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.5, 2.0, 3.0], help="CFG scales")
    p.add_argument("--shift", type=float, default=None, help="sampling shift (default: the demo's)")
    p.add_argument("--seeds", type=int, default=3, help="noise seeds per scale")
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)
    if args.seeds < 1 or any(g < 1 for g in args.guidance):
        p.error("--seeds must be at least 1 and every --guidance at least 1")
    if args.teacher is not None and not os.path.exists(args.teacher):
        p.error(f"--teacher {args.teacher}: no such workdir or model folder")

    from flax import nnx

    from vdot_jax import demo as D

    plan = D.DemoPlan(eval_seed=D.HOLDOUT_SEED, eval_per_task=2, coverage_per_prompt=6)
    shift = args.shift or plan.teacher_shift
    graphdef, params = nnx.split(D.load_teacher(args.teacher))
    ev = D.eval_set(plan)
    result = {"teacher": args.teacher or "shipped", "shift": shift, "seeds": args.seeds,
              "clips": len(ev.batch.task), "guidance": {}}
    t0 = time.time()
    for g in args.guidance:
        names = {n: D._teacher_name(n, g) for n in (plan.teacher_steps, plan.student_steps)}
        methods = {name: (params, n, shift, g) for n, name in names.items()}
        runs = [D.evaluate_methods(dataclasses.replace(plan, seed=s), graphdef, methods, ev, log=lambda m: None)[0]
                for s in range(args.seeds)]
        means, sds = D.aggregate(runs)
        many, few = names[plan.teacher_steps], names[plan.student_steps]
        entry = {}
        for k in D.PROBE_KEYS:
            a, b = means[many][k], means[few][k]
            better = D.goodness(k, a) > D.goodness(k, b)
            entry[k] = {"50": a, "4": b, "sd50": sds[many][k], "sd4": sds[few][k], "better": bool(better),
                        "beyond_spread": bool(better) and D.beyond_spread(means, sds, many, few, k)}
        result["guidance"][f"{g:g}"] = entry
        print(f"CFG {g:g}: " + "; ".join(
            f"{k.split('/')[1]} {v['50']:.3f} vs {v['4']:.3f}{' *' if v['beyond_spread'] else ''}"
            for k, v in entry.items()) + f" ({(time.time() - t0) / 60:.1f} min)", flush=True)
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
