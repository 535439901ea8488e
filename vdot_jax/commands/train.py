"""``vdot train``: VDOT distillation or flow-matching training from a config file, resumable."""

from __future__ import annotations

import json
import sys


def run(args) -> int | None:
    from vdot_jax.commands.common import check_numbers

    check_numbers(args, nonnegative=("stop_after",))
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain reads absl flags; the vdot CLI is argparse

    from vdot_jax.commands.common import UserError
    from vdot_jax.parallel.distributed import initialize
    from vdot_jax.train.checkpoint import check_workdir, lock_workdir
    from vdot_jax.train.config import (ConfigError, apply_overrides, check_data, load_config, parse_override_args,
                                       validate)
    from vdot_jax.train.loop import train

    initialize()  # multi-host: TPU pods and SLURM are detected; VDOT_COORDINATOR etc. for custom launchers
    try:
        config = load_config(args.config)
        apply_overrides(config, parse_override_args(args.extra))
    except ConfigError as e:
        raise UserError(str(e)) from None
    # Everything that needs no model, before the workdir is made or a model built: the config (every key's range),
    # the workdir, the data (manifest rows, the precomputed index), and no other run holding the workdir.
    validate(config)
    check_workdir(args.workdir)
    check_data(config)
    with lock_workdir(args.workdir):
        # Ctrl-C is handled like SIGTERM: stop at the next phase boundary, save, stop (a second Ctrl-C aborts at
        # once).
        summary = train(config, args.workdir, stop_after=args.stop_after, catch_sigint=True)
    if args.summary:
        print(json.dumps({k: v for k, v in summary.items() if k != "last_metrics"}, default=str))
    if summary.get("stopped") == "SIGINT":
        print(f"vdot train: interrupted: saved step {summary['checkpoint_step']} in {summary['workdir']}; run the "
              "same command to resume", file=sys.stderr)
        return 130


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train: VDOT distillation (mode vdot) or flow matching (mode flow), resumable",
        description=(
            "Train from a config file (Python, get_config() returning an ml_collections ConfigDict; see configs/). "
            "Any config field can be overridden with --config.KEY=VALUE (typed by the field, e.g. "
            "--config.optim.critic_lr=1e-6 --config.mesh.ici=fsdp=4). If WORKDIR already holds checkpoints the "
            "run resumes from the latest; a workdir written by an incompatible config, or a non-empty folder that "
            "is not a training workdir, is refused untouched. SIGTERM stops at the next phase boundary, saves a "
            "checkpoint there (the resume continues exactly) and exits 0; Ctrl-C does the same and exits 130 (a "
            "second Ctrl-C aborts without saving). Checkpoints: every train.checkpoint_every steps and, with "
            "train.checkpoint_every_minutes, every that many minutes."
        ),
    )
    p.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py (FILE.py:ARG passes ARG)")
    p.add_argument("--workdir", required=True, help="checkpoints, metrics, plots and samples go here")
    p.add_argument("--stop-after", type=int, default=None, help="run at most this many steps now, then save")
    p.add_argument("--summary", action="store_true", help="print the run summary as one JSON line at the end")
    p.set_defaults(func=run, accepts_extra=True)
