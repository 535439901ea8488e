"""``vdot train``: VDOT distillation or flow-matching training from a config file, resumable."""

from __future__ import annotations

import json


def run(args) -> None:
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags; the vdot CLI is argparse

    from vdot_jax.commands.common import UserError
    from vdot_jax.parallel.distributed import initialize
    from vdot_jax.train.config import ConfigError, apply_overrides, load_config, parse_override_args
    from vdot_jax.train.loop import TrainingError, train

    initialize()  # multi-host: TPU pods and SLURM are detected; VDOT_COORDINATOR etc. for custom launchers
    try:
        config = load_config(args.config)
        apply_overrides(config, parse_override_args(args.extra))
    except ConfigError as e:
        raise UserError(str(e)) from None
    try:
        summary = train(config, args.workdir, stop_after=args.stop_after)
    except TrainingError as e:
        raise UserError(str(e)) from None
    if args.summary:
        print(json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}, default=str))


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train: VDOT distillation (mode vdot) or flow matching (mode flow), resumable",
        description=(
            "Train from a config file (Python, get_config() returning an ml_collections ConfigDict; see configs/). "
            "Any config field can be overridden with --config.KEY=VALUE (typed by the field, e.g. "
            "--config.optim.critic_lr=1e-6 --config.mesh.ici=fsdp=4). If WORKDIR already holds checkpoints the "
            "run resumes from the latest; a workdir written by an incompatible config is refused. SIGTERM saves "
            "a checkpoint and exits 0."
        ),
    )
    p.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py (FILE.py:ARG passes ARG)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, plots and samples go here")
    p.add_argument("--stop-after", type=int, default=None, help="run at most this many steps now, then save")
    p.add_argument("--summary", action="store_true", help="print the run summary as one JSON line at the end")
    p.set_defaults(func=run, accepts_extra=True)
