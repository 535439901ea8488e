"""Helpers shared by the subcommands."""

from __future__ import annotations

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


def check_model_arguments(args) -> None:
    """The checks that go with ``add_model_arguments`` and the shared sampling sizes, for generate and eval."""
    if args.model is None and not (args.transformer and args.vae and args.text_encoder):
        raise UserError("give --model DIR (a converted model directory or a diffusers pipeline folder) or all of "
                        "--transformer, --vae and --text-encoder")
    for name in ("steps", "frames", "height", "width"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be a positive integer, got {getattr(args, name)}")
