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
    m = config.model
    check_no_overlap({"--out": args.out}, {"--manifest": config.data.manifest, "config.model.teacher": m.teacher,
                                           "config.model.vae": m.vae, "config.model.text_encoder": m.text_encoder})
    mark_output_folder(args.out, "precompute")
    precompute(config, args.out, rows_per_shard=args.rows_per_shard)


def register(sub) -> None:
    p = sub.add_parser(
        "precompute",
        help="encode a training manifest into ArrayRecord shards (VAE latents, VACE contexts, text embeddings)",
        description=(
            "Decode every row of a manifest (CSV/JSONL: task, src_video, src_mask, src_ref_images, caption, video) "
            "with the training config's sizes and encoder, and write ArrayRecord shards plus an index to OUT. "
            "Train on them with --config.data.source=precomputed --config.data.precomputed=OUT. Resumable: a "
            "rerun skips finished shards. Unreadable rows are skipped with a warning and listed in the index."
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
    p.set_defaults(func=run, accepts_extra=True)
