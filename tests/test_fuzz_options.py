"""Every numeric option of every command, fed 0, negative, NaN, inf and huge values: a one-line refusal naming the
option, or (for a value that is allowed) the run goes on -- here into a decoy path that stops it cheaply with its
own one-line error. Never a traceback. All of this runs before any model is loaded."""

from __future__ import annotations

import math

import pytest

from vdot_jax.cli import main as vdot

BAD_ALWAYS = ("nan", "inf", "-inf")
INT_VALUES = ("0", "-5", str(10**30))
FLOAT_VALUES = ("0", "-1.5", "1e308", *BAD_ALWAYS)

# (command, option, kind, what must be refused): kind int or float; refuse is "positive" (<= 0 refused),
# "nonnegative" (< 0 refused), "fraction" (outside (0, 1]), "unit" (outside [0, 1]), "seed" (outside 0..2**32-1), "finite" (only nan/inf) or "size" (<= 0, and a video
# too large for this machine's memory: refused with the estimate).
OPTIONS = [
    *[("generate", o, "int", "positive") for o in ("--steps", "--clip-frames")],
    *[("generate", o, "int", "size") for o in ("--frames", "--height", "--width")],
    ("generate", "--seed", "int", "seed"),
    *[("generate", o, "float", r) for o, r in (("--guide-scale", "nonnegative"), ("--shift", "positive"),
                                              ("--context-scale", "finite"), ("--fps", "positive"))],
    *[("eval", o, "int", "positive") for o in ("--steps", "--limit")],
    *[("eval", o, "int", "size") for o in ("--frames", "--height", "--width")],
    ("eval", "--seed", "int", "seed"),
    *[("eval", o, "float", r) for o, r in (("--guide-scale", "nonnegative"), ("--shift", "positive"),
                                          ("--fps", "positive"))],
    ("demo", "--steps", "int", "positive"),
    ("precompute", "--rows-per-shard", "int", "positive"),
    ("train", "--stop-after", "int", "nonnegative"),
    ("export", "--step", "int", "nonnegative"),
    ("export", "--shift", "float", "positive"),
    ("export", "--rank", "int", "positive"),
    ("export", "--max-shard-size", "float", "size"),  # 1e308 is not written like a size (5GB): refused
    *[("prepare", o, "int", "size") for o in ("--frames", "--height", "--width")],
    *[("prepare", o, "int", "positive") for o in ("--ref-num", "--clip-frames", "--expand-iters")],
    ("prepare", "--seed", "int", "seed"),
    *[("prepare", o, "float", r) for o, r in (("--fps", "positive"), ("--expand-ratio", "nonnegative"),
                                             ("--edge-low", "nonnegative"), ("--edge-high", "nonnegative"),
                                             ("--edge-sigma", "nonnegative"))],
    *[("data", o, "int", r) for o, r in (("--min-frames", "positive"), ("--min-size", "nonnegative"),
                                         ("--sheet", "nonnegative"), ("--seed", "seed"))],
    *[("data", o, "float", r) for o, r in (("--cut-threshold", "fraction"), ("--dup-threshold", "fraction"),
                                          ("--black-level", "unit"), ("--max-seconds", "nonnegative"),
                                          ("--fps", "nonnegative"), ("--min-motion", "nonnegative"))],
]


PREPARE_TASK = {"--ref-num": "frameref", "--clip-frames": "first_clip", "--edge-low": "edges", "--edge-high": "edges",
                "--edge-sigma": "edges"}


def _base(cmd: str, tmp, option: str = "") -> list[str]:
    """Arguments that make an otherwise valid run stop at once on a decoy (a missing file, a file as --out)."""
    missing = str(tmp / "missing")
    (tmp / "a_file").write_text("x")
    return {
        "generate": ["generate", "--model", missing, "--prompt", "a cat", "--frames", "5", "--height", "32",
                     "--width", "32", "--out", str(tmp / "o.mp4")],
        "eval": ["eval", "--model", missing, "--index", missing + ".jsonl", "--root", str(tmp), "--out", str(tmp / "e"),
                 "--frames", "5", "--height", "32", "--width", "32"],
        "demo": ["demo", "--out", str(tmp / "a_file")],
        "precompute": ["precompute", "--config", missing + ".py", "--out", str(tmp / "p")],
        "train": ["train", "--config", missing + ".py", "--workdir", str(tmp / "w")],
        "prepare": ["prepare", PREPARE_TASK.get(option, "inpaint"), "--src-video", missing + ".mp4", "--out",
                    str(tmp / "p")],
        "data": ["data", missing, "--out", str(tmp / "d"), "--max-seconds", "0"],
        "export": ["export", "--ckpt", missing, "--format", "lora", "--rank", "4", "--out",
                   str(tmp / "x")],
    }[cmd]


def _must_refuse(value: str, refuse: str) -> bool:
    v = float(value)
    if not math.isfinite(v):
        return True
    return {"positive": v <= 0, "nonnegative": v < 0, "fraction": not 0 < v <= 1, "unit": not 0 <= v <= 1, "seed": not 0 <= v <= 2**32 - 1, "finite": False,
            "size": v <= 0 or v > 10**6}[refuse]


@pytest.mark.parametrize("cmd, option, kind, refuse", OPTIONS, ids=[f"{c}{o}" for c, o, *_ in OPTIONS])
def test_numeric_options_never_give_a_traceback(cmd, option, kind, refuse, tmp_path, capsys):
    for value in (INT_VALUES + BAD_ALWAYS if kind == "int" else FLOAT_VALUES):
        argv = [*_base(cmd, tmp_path, option), f"{option}={value}"]
        try:
            rc = vdot(argv)
        except SystemExit as e:  # argparse: not a number of the option's type (usage + one error line)
            rc = e.code
            err = capsys.readouterr().err
            assert rc == 2 and "invalid" in err and "Traceback" not in err, (argv, err)
            assert kind == "int" and value in BAD_ALWAYS, (argv, err)
            continue
        err = capsys.readouterr().err.strip()
        lines = [x for x in err.splitlines() if x.startswith(f"vdot {cmd}: error:")]
        assert rc == 2 and len(lines) == 1 and "Traceback" not in err, (argv, rc, err)
        if _must_refuse(value, refuse):
            assert option in lines[0], (argv, lines[0])  # the refusal names the option
        else:
            assert option not in lines[0], (argv, lines[0])  # an allowed value reached the decoy
