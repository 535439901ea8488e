"""CPU seconds to compile and to run each of the demo's programs for a toy teacher, as JSON.

    python bench/demo_programs.py --out out/shipped.json
    python bench/demo_programs.py --teacher DIR --out out/wide.json          # compare the two: ratios
    XLA_FLAGS=--xla_backend_optimization_level=1 python bench/demo_programs.py --out out/o1.json

Process CPU time (all threads), not wall time, so that two runs on a machine doing other work can still be
compared as ratios. Programs: the distillation phases at the r2v batch shape (`--phases`), each compiled and then
run `--iters` times on its own output state, and the 50-step CFG sampler on the first evaluation group (17 clips).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

from common import write_json  # noqa: E402


def cpu(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default=None, help="toy teacher folder (default: the shipped one)")
    p.add_argument("--phases", default="critic_flow,critic_gan,generator_dmd_ot,generator_gan")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--out", default=None, help="JSON file")
    args = p.parse_args(argv)

    import jax
    from flax import nnx

    from vdot_jax import demo as D
    from vdot_jax.distill.critic import critic_from_teacher
    from vdot_jax.distill.steps import PHASES, Distiller

    phases = args.phases.split(",") if args.phases else []
    if not set(phases) <= set(PHASES):
        p.error(f"--phases takes names from {PHASES}")
    plan = D.DemoPlan()
    teacher = D.load_teacher(args.teacher)
    config = D.distill_settings(plan, teacher.cfg.num_layers)
    critic = critic_from_teacher(teacher, rngs=nnx.Rngs(1), token_dim=config.gan.token_dim,
                                 num_heads=config.gan.num_heads, ffn_dim=config.gan.ffn_dim)
    distiller = Distiller(teacher, critic, teacher, config)
    state = distiller.init_state(teacher, critic, teacher, seed=0)
    batch = D._with_frames(next(D.make_batches(plan)), D.TOY_WORLD["frames"] + 1)
    result = {"teacher": args.teacher or "shipped", "model": teacher.cfg.describe(),
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "cpu_seconds": {}}
    secs = result["cpu_seconds"]
    for name in phases:
        compiled, secs[f"{name}/compile"] = cpu(distiller.phase(name).lower(state, batch).compile)
        state, _ = jax.block_until_ready(compiled(state, batch))  # warm-up
        for _ in range(args.iters):
            (state, _), t = cpu(lambda: jax.block_until_ready(compiled(state, batch)))
            secs[f"{name}/run"] = secs.get(f"{name}/run", 0.0) + t / args.iters
    ev = D.eval_set(D.DemoPlan(eval_per_task=1, coverage_per_prompt=2))
    graphdef, params = nnx.split(teacher)
    fn, fargs = D._sampler_jobs(graphdef, params, ev, steps=plan.teacher_steps, shift=plan.teacher_shift,
                                guidance=plan.guidance, seed=0)[0]
    compiled, secs["sampler50/compile"] = cpu(fn.jitted.lower(*fargs).compile)
    jax.block_until_ready(compiled(*fargs))
    _, secs["sampler50/run"] = cpu(lambda: jax.block_until_ready(compiled(*fargs)))
    result["sampler_clips"] = int(fargs[1].shape[0])
    write_json(result, args.out)
    return result


if __name__ == "__main__":
    main()
