"""``vdot data``: raw videos -> filtered clips, a raw-row training manifest and a report (``vdot_jax.data.curate``)."""

from __future__ import annotations

from pathlib import Path

from vdot_jax.commands.common import UserError, check_no_overlap, check_numbers, check_output_folder, mark_output_folder


def run(args) -> None:
    from vdot_jax.data import curate as CU

    check_numbers(args, positive=("min_frames", "cut_threshold", "dup_threshold"),
                  nonnegative=("max_seconds", "min_size", "fps", "black_level", "min_motion", "sheet"),
                  seed=("seed",))
    for name in ("cut_threshold", "dup_threshold", "black_level"):
        if getattr(args, name) > 1:
            raise UserError(f"--{name.replace('_', '-')} is a fraction in 0..1, got {getattr(args, name)}")
    opts = CU.Options(cut_threshold=args.cut_threshold, max_seconds=args.max_seconds, min_size=args.min_size,
                      min_frames=args.min_frames, fps=args.fps, black_level=args.black_level,
                      min_motion=args.min_motion, dup_threshold=args.dup_threshold, sheet=args.sheet, seed=args.seed)
    if opts.max_seconds and opts.fps and (opts.min_frames - 1) / opts.fps > opts.max_seconds / 2:
        raise UserError(f"--max-seconds {args.max_seconds} cuts long shots into pieces as short as half of it, "
                        f"below --min-frames {args.min_frames} at --fps {args.fps:g}; raise --max-seconds to at least "
                        f"{2 * (opts.min_frames - 1) / opts.fps:g} (or 0: no limit)")
    src, out = Path(args.src).absolute(), Path(args.out).absolute()
    if src.is_dir() and (out == src or src in out.parents):
        raise UserError(f"--out {args.out} is inside SRC {args.src}; a rerun would take the clips for sources; "
                        "choose a folder outside it")
    if out in src.parents or out == src:
        raise UserError(f"--out {args.out} holds SRC {args.src}; choose another --out (an input is never written)")
    check_output_folder(args.out, command="data", overwrite=args.overwrite)
    captioner = CU.load_captioner(args.captioner) if args.captioner else None
    try:
        sources = CU.list_sources(args.src, args.captions)
    except CU.CurateError as e:
        raise UserError(str(e)) from None
    check_no_overlap({"--out": args.out}, {"SRC": [s.path for s in sources]})  # clips of a run are never its sources
    mark_output_folder(args.out, "data")
    result = CU.curate(sources, args.out, opts, captioner)
    c = result["counts"]
    dropped = ", ".join(f"{k} {v}" for k, v in c.items() if k != "kept" and v)
    print(f"{result['sources']} videos -> {result['clips']} clips: {c['kept']} kept ({result['kept_seconds']:.1f} s)"
          f"{'; dropped: ' + dropped if dropped else ''}")
    print(f"manifest {Path(args.out) / 'manifest.jsonl'} (train with --config.data.source=manifest "
          f"--config.data.manifest=...); report {Path(args.out) / 'report.md'}")


def register(sub) -> None:
    from vdot_jax.data.curate import Options

    d = Options()
    p = sub.add_parser(
        "data",
        help="filter raw videos into training clips: scene cuts, too short / black / static / low-resolution, "
             "near-duplicates; writes a manifest and a report",
        description=(
            "Split raw videos at scene cuts, drop clips that are too short, black, near-static or low-resolution and "
            "near-duplicates, write each kept clip as an mp4 with a raw training row (video + caption; the "
            "training pipeline derives every model-free task from it), and a report: report.json, report.md and "
            "contact_sheet.png (counts per reason, every dropped clip with its reason, a sample). Captions come from "
            "--captioner, else --captions, a .jsonl SRC list, or a same-stem .txt beside each video; a clip "
            "without one is dropped (no_caption). An unreadable video is reported, not fatal. The detectors and "
            "their defaults are described in vdot_jax/data/curate.py."),
    )
    p.add_argument("src", metavar="SRC",
                   help="a folder (walked recursively for .mp4/.mkv/.mov/.avi/.webm/.m4v), a .txt list of video paths "
                        "(one a line) or a .jsonl list ({\"video\": PATH, \"caption\": TEXT} a line); relative paths "
                        "are relative to the list's folder")
    p.add_argument("--out", required=True,
                   help="output folder: new, empty, or one vdot data made (a rerun there re-encodes only clips not "
                        "yet written, and removes clips it no longer keeps)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out that vdot data did not make")
    p.add_argument("--captions", default=None,
                   help="JSON lines {\"video\": PATH, \"caption\": TEXT}: PATH relative to this file's folder, "
                        "absolute, or a bare file name (matched when unique)")
    p.add_argument("--captioner", default=None,
                   help="caption each kept clip: module:function or file.py:function (called with the clip's mp4 "
                        "path, returns the text), or a command (run with the path appended; its output is the "
                        "caption); replaces sidecar captions")
    p.add_argument("--cut-threshold", type=float, default=d.cut_threshold,
                   help="scene cut when consecutive frames' colour histograms differ by more than this (0..1, "
                        f"default {d.cut_threshold})")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help=f"cut longer shots into equal pieces at most this long, in seconds (default {d.max_seconds:g}; "
                        "0: no limit)")
    p.add_argument("--min-size", type=int, default=d.min_size,
                   help=f"drop videos whose shorter side is below this many pixels (default {d.min_size})")
    p.add_argument("--min-frames", type=int, default=d.min_frames,
                   help=f"drop clips with fewer frames at --fps (default {d.min_frames}: data.num_frames)")
    p.add_argument("--fps", type=float, default=d.fps,
                   help=f"the rate --min-frames counts at (default {d.fps:g}: data.fps; 0: each video's own)")
    p.add_argument("--black-level", type=float, default=d.black_level,
                   help=f"drop clips whose median frame luma is below this (0..1, default {d.black_level})")
    p.add_argument("--min-motion", type=float, default=d.min_motion,
                   help="drop clips whose mean grey change between frames a quarter second apart is below this "
                        f"(0..1, default {d.min_motion})")
    p.add_argument("--dup-threshold", type=float, default=d.dup_threshold,
                   help="drop a clip whose perceptual hash differs from a kept clip's in at most this fraction of "
                        f"bits (default {d.dup_threshold})")
    p.add_argument("--sheet", type=int, default=d.sheet,
                   help=f"clips shown on the contact sheet, a random sample (default {d.sheet})")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the contact sheet's sample")
    p.set_defaults(func=run)
