"""Helpers shared by the subcommands."""

from __future__ import annotations

import math
import os
from pathlib import Path

from vdot_jax.errors import VdotError


class UserError(VdotError):
    """An error the user can fix; ``vdot`` prints it as one sentence without a traceback."""


def progress(desc: str, unit: str = "it"):
    """A tqdm wrapper for iterables; silent when stderr is not a terminal (logs, tests)."""
    from tqdm import tqdm

    return lambda it: tqdm(it, desc=desc, unit=unit, leave=False, mininterval=1.0, disable=None)


def add_model_arguments(parser) -> None:
    """--model and the per-component overrides, shared by generate and eval."""
    m = parser.add_argument_group("model")
    m.add_argument("--model", default=None, help="converted model directory (or a diffusers WanVACEPipeline folder)")
    m.add_argument("--transformer", default=None, help="transformer path (overrides the model directory's)")
    m.add_argument("--vae", default=None, help="VAE path (overrides the model directory's)")
    m.add_argument("--text-encoder", default=None, help="umT5 text encoder path (overrides the model directory's)")
    m.add_argument("--tokenizer", default=None, help="umT5 tokenizer folder (default: found beside the text encoder)")


SEED_MAX = 2**32 - 1


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_finite(args) -> None:
    """Every float option of ``args`` is a finite number (argparse's ``float`` accepts nan and inf)."""
    for name, v in sorted(vars(args).items()):
        if isinstance(v, float) and not math.isfinite(v):
            raise UserError(f"{_flag(name)} must be a finite number, got {v}")


def check_numbers(args, *, positive=(), nonnegative=(), seed=()) -> None:
    """Count and size options: ``positive`` > 0, ``nonnegative`` >= 0 (None, an unset optional, passes), and
    ``seed`` options within 0..2**32-1. Run before any heavy work."""
    check_finite(args)
    for names, ok, what in ((positive, lambda v: v > 0, "a positive number"),
                            (nonnegative, lambda v: v >= 0, "a number >= 0"),
                            (seed, lambda v: 0 <= v <= SEED_MAX, f"an integer in 0..{SEED_MAX}")):
        for name in names:
            v = getattr(args, name, None)
            if v is not None and not ok(v):
                kind = "a positive integer" if isinstance(v, int) and what == "a positive number" else what
                raise UserError(f"{_flag(name)} must be {kind}, got {v}")


def check_video_memory(frames: int, height: int, width: int) -> None:
    """Refuse a video size whose decoded frames alone (float32 RGB, twice: decoder output and its copy) would not
    fit in this machine's memory -- the model needs far more, so such a size can only end in an out-of-memory."""
    need = 2 * 4 * 3 * frames * height * width
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > have:
        raise UserError(f"--frames {frames} --height {height} --width {width} needs at least {need / 2**30:.1f} GiB "
                        f"for the decoded video alone, more than this machine's {have / 2**30:.1f} GiB; lower "
                        "--height, --width or --frames")


def model_inputs(args) -> dict:
    """The model paths of ``add_model_arguments``, as inputs for ``check_no_overlap``."""
    return {f"--{n.replace('_', '-')}": getattr(args, n, None) for n in ("model", "transformer", "vae", "text_encoder",
                                                                         "tokenizer")}


def check_model_arguments(args) -> None:
    """The checks that go with ``add_model_arguments`` and the shared sampling options, for generate and eval."""
    if args.model is None and not (args.transformer and args.vae and args.text_encoder):
        raise UserError("give --model DIR (a converted model directory or a diffusers pipeline folder) or all of "
                        "--transformer, --vae and --text-encoder")
    check_numbers(args, positive=("steps", "frames", "height", "width", "shift", "fps", "limit", "clip_frames",
                                  "batch_size"),
                  nonnegative=("guide_scale",), seed=("seed",))
    check_video_memory(args.frames, args.height, args.width)
    check_attention(getattr(args, "attention", None))
    check_mesh(getattr(args, "mesh", None))


def check_mesh(mesh: str | None) -> None:
    """--mesh (generate, eval, ui) names mesh axes (e.g. fsdp=4,context=2), checked before any model is loaded."""
    if mesh:
        from vdot_jax.parallel.mesh import parse_axes

        try:
            parse_axes(mesh)
        except ValueError as e:
            raise UserError(f"--mesh {mesh}: {e}") from None


def check_attention(impl: str | None) -> None:
    """--attention names a registered implementation (or ulysses:<one>), checked before any model is loaded."""
    if impl is None:
        return
    from vdot_jax.models import attention

    try:
        attention.check(impl)
    except attention.AttentionSpecError as e:
        raise UserError(f"--attention {impl}: {e}") from None


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")  # containers ffmpeg writes H.264 into


def _writable_folder(path: Path, flag: str, given: str) -> None:
    """The nearest existing folder at or above ``path`` is a writable folder (not a file, not read-only)."""
    q = path.absolute()
    while not q.exists():
        q = q.parent
    if not q.is_dir():
        raise UserError(f"{flag} {given}: {q} is a file, not a folder")
    if not os.access(q, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {given}: {q} is not writable (read-only file system or no permission)")


MARKER = ".vdot-{command}"  # the file that says "vdot COMMAND made this folder" (the convert/export rule)


def check_output_folder(path: str, flag: str = "--out", *, command: str | None = None, overwrite: bool = False,
                        markers: tuple[str, ...] = ()) -> None:
    """The one rule for every folder a command writes into: new, empty, one this command made earlier (its
    ``MARKER`` file, or one of ``markers``), or ``overwrite``; and somewhere writable and local (only training
    workdirs may be gs://). ``command=None``: only "a folder, somewhere writable" (a folder the command merely
    reads back, e.g. demo --rescore)."""
    if "://" in str(path):  # pathlib would make a local folder named "gs:"
        raise UserError(f"{flag} {path}: this command writes local files; give a local folder (or a gcsfuse mount) "
                        "and copy it to the bucket with `gcloud storage cp -r`")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {path} is a file; give a folder")
    _writable_folder(p, flag, path)
    if command is None or overwrite or not p.is_dir():
        return
    entries = sorted(e.name for e in p.iterdir())
    if not entries or MARKER.format(command=command) in entries or any(m in entries for m in markers):
        return
    other = [e[len(".vdot-"):] for e in entries if e.startswith(".vdot-")]
    made = f" (vdot {other[0]} made it)" if other else ""
    shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
    raise UserError(f"{flag} {path} is not empty and was not made by vdot {command}{made}: it holds {shown}; choose a "
                    "new folder, or pass --overwrite to write into it (files of the same names are replaced)")


def mark_output_folder(path, command: str) -> Path:
    """Create ``path`` (after every check passed) and mark it as ``vdot COMMAND``'s, so a rerun may write there."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    marker = p / MARKER.format(command=command)
    if not marker.exists():
        marker.write_text(f"made by vdot {command}; a rerun of it may write here\n")
    return p


def _resolved(path) -> Path | str:
    text = str(path)
    return text if "://" in text else Path(os.path.expanduser(text)).resolve()  # gs://: compared as written


def check_no_overlap(outputs: dict, inputs: dict) -> None:
    """No output path (``{flag: path}``) is an input path or holds one, links resolved: a command never writes
    onto what it reads. ``None`` values (options not given) are skipped; an input may be a list of paths."""
    for oflag, out in outputs.items():
        if out is None:
            continue
        o = _resolved(out)
        for iflag, given in inputs.items():
            for inp in (given if isinstance(given, (list, tuple)) else [given]):
                if inp is None or str(inp) == "":
                    continue
                i = _resolved(inp)
                if o == i:
                    raise UserError(f"{oflag} {out} is the input {iflag} {inp}; choose another {oflag} (an input "
                                    "is never written)")
                if isinstance(o, Path) and isinstance(i, Path) and o in i.parents:
                    raise UserError(f"{oflag} {out} holds the input {iflag} {inp}; choose another {oflag} (an "
                                    "input is never written)")


def check_output_video(path: str, flag: str = "--out") -> None:
    """An output video file: not a folder, a suffix ffmpeg can write H.264 into, in a writable place."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a video file name such as {p / 'out.mp4'}")
    if p.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"{flag} {path} must end in {', '.join(VIDEO_SUFFIXES)} (an H.264 video)")
    _writable_folder(p.parent, flag, path)
