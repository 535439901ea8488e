"""``vdot precompute``: encode a training manifest into ArrayRecord shards for ``data.source = "precomputed"``."""

from __future__ import annotations


def run(args) -> None:
    from vdot_jax.commands.common import check_no_overlap, check_numbers, check_output_folder, mark_output_folder

    check_numbers(args, positive=("rows_per_shard",))
    check_no_overlap({"--out": args.out}, {"--config": args.config.split(":")[0], "--manifest": args.manifest})
    check_output_folder(args.out, command="precompute", overwrite=args.overwrite)
    from absl import flags

    flags.FLAGS.mark_as_parsed()

    from vdot_jax.commands.common import UserError
    from vdot_jax.data.precompute import precompute
    from vdot_jax.parallel.distributed import initialize
    from vdot_jax.train.config import ConfigError, apply_overrides, load_config, parse_override_args

    initialize()
    try:
        config = load_config(args.config)
        apply_overrides(config, parse_override_args(args.extra))
    except ConfigError as e:
        raise UserError(str(e)) from None
    if args.manifest:
        config.data.manifest = args.manifest
    if not config.data.manifest:
        raise UserError("no manifest: give --manifest or set config.data.manifest.")
    if args.annotate:
        return _annotate(args, config)
    m = config.model
    check_no_overlap({"--out": args.out}, {"--manifest": config.data.manifest, "config.model.teacher": m.teacher,
                                           "config.model.vae": m.vae, "config.model.text_encoder": m.text_encoder})
    mark_output_folder(args.out, "precompute")
    precompute(config, args.out, rows_per_shard=args.rows_per_shard)


def parse_annotate(values: list[str]) -> dict[str, str]:
    """``["depth=DIR", "flow=FILE"]`` -> {task: weights path}."""
    from vdot_jax.commands.common import UserError

    weights = {}
    for v in values:
        task, sep, path = v.partition("=")
        if not sep or not task or not path or task in weights:
            raise UserError(f"--annotate takes TASK=WEIGHTS once per task (e.g. depth=models/da2), got {v!r}")
        weights[task] = path
    return weights


def _annotate(args, config) -> None:
    """--annotate: the annotator tasks' control videos and a manifest listing them (``data.precompute.annotate``)."""
    from vdot_jax.commands.common import check_no_overlap, mark_output_folder
    from vdot_jax.data.precompute import annotate, check_annotation

    weights = parse_annotate(args.annotate)
    paths = [p for v in weights.values() for p in v.split(",")]
    check_no_overlap({"--out": args.out}, {"--manifest": config.data.manifest, "--annotate": paths})
    check_annotation(config, args.out, weights)  # every refusal before the folder is made
    mark_output_folder(args.out, "precompute")
    annotate(config, args.out, weights)


def register(sub) -> None:
    p = sub.add_parser(
        "precompute",
        help="encode a training manifest into ArrayRecord shards (VAE latents, VACE contexts, text embeddings)",
        description=(
            "Decode every row of a manifest (CSV/JSONL: task, src_video, src_mask, src_ref_images, caption, video) "
            "with the training config's sizes and encoder, and write ArrayRecord shards plus an index to OUT. "
            "Train on them with --config.data.source=precomputed --config.data.precomputed=OUT. Resumable: a "
            "rerun skips finished shards. Unreadable rows are skipped with a warning and listed in the index. "
            "With --annotate TASK=WEIGHTS (the annotators extra): instead of encoding, run that annotator over the "
            "ground-truth video of every row of TASK without condition files (depth, flow, pose), at the config's "
            "frames and size, into OUT/conditions/, and write OUT/annotated.jsonl (all rows, those with their new "
            "src_video; unreadable rows left out and listed in OUT/annotated_report.json) to train on or to "
            "precompute. "
            "Resumable and sharded alike (row i by process i mod P)."
        ),
    )
    p.add_argument("--config", required=True, help="training config (sizes, encoder, model paths)")
    p.add_argument("--out", required=True,
                   help="output directory: new, empty, or one vdot precompute made (finished shards are reused when "
                        "they were made from the same manifest, config and model)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --out that vdot precompute did not make")
    p.add_argument("--manifest", default=None, help="manifest file (default: config.data.manifest)")
    p.add_argument("--rows-per-shard", type=int, default=256)
    p.add_argument("--annotate", action="append", default=[], metavar="TASK=WEIGHTS",
                   help="annotate instead of encoding: e.g. depth=models/Depth-Anything-V2-Large-hf, "
                        "flow=models/raft_large_C_T_V1.pth, pose=yolox_l.onnx,dw-ll_ucoco_384.onnx (repeat per task; "
                        "weights by path, nothing is downloaded)")
    p.set_defaults(func=run, accepts_extra=True)
