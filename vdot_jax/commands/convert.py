"""``vdot convert``: official checkpoints -> a vdot-jax model directory."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from vdot_jax.commands.common import UserError, progress
from vdot_jax.errors import read_json

COMPONENTS = ("transformer", "vae", "text_encoder")
INDEX = "vdot_model.json"  # vdot_jax.weights.store.INDEX (not imported: store pulls in jax and orbax)


def _is_pipeline_folder(path: Path) -> bool:
    """A diffusers pipeline folder: model_index.json, or a transformer/ sub-folder beside other components."""
    return path.is_dir() and ((path / "model_index.json").exists() or (
        (path / "transformer").is_dir() and not list(path.glob("*.safetensors*"))))


def _within(a: Path, b: Path) -> bool:
    """Whether ``a`` is ``b`` or lies inside it (both resolved)."""
    return a == b or b in a.parents


def check_destination(dst: Path, writes: list[str], sources: list[Path], overwrite: bool) -> None:
    """Refuse, before any work, a --dst whose writing could destroy something the user owns: a source (or a
    folder holding one), a non-empty folder that is not a vdot-jax model directory, or a component it already
    holds -- the last two unless --overwrite."""
    if dst.exists() and not dst.is_dir():
        raise UserError(f"--dst {dst} is a file; give a new or empty folder")
    d = dst.resolve()
    for s in sources:
        s = s.resolve()
        hit = [t.name for t in [d / c for c in writes] + [d / INDEX] if _within(s, t)]
        if d == s or hit:
            what = f"would replace {hit[0]}, which holds the source {s}" if hit else "is the source"
            raise UserError(f"--dst {dst} {what}; choose another --dst (a source is never modified)")
    if not dst.is_dir():
        return
    entries = sorted(p.name for p in dst.iterdir())
    if INDEX in entries:
        read_json(dst / INDEX, "model index", UserError)  # a truncated index: refused before the work, not after
    if not entries or overwrite:
        return
    if INDEX not in entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise UserError(f"--dst {dst} is not empty and not a vdot-jax model directory (it holds {shown}); choose a "
                        "new folder, or pass --overwrite to write the converted components into it")
    held = [c for c in writes if (dst / c).exists()]
    if held:
        raise UserError(f"--dst {dst} already holds {', '.join(held)}; pass --overwrite to replace "
                        f"{'it' if len(held) == 1 else 'them'}")


def commit(staging: Path, dst: Path) -> None:
    """Move the components written in ``staging`` into ``dst``: a new ``dst`` appears whole by one rename; in an
    existing one each component is swapped by renames, so an interrupted convert leaves the old or the new one."""
    if not dst.exists():
        os.replace(staging, dst)
        return
    index = read_json(staging / INDEX, "model index", UserError)
    old_index = read_json(dst / INDEX, "model index", UserError) if (dst / INDEX).exists() else {
        "format": index["format"], "components": {}}
    for name in index["components"]:
        final, old = dst / name, dst / f".{name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(staging / name, final)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        old_index["components"][name] = name
    if "sampling" in index:
        old_index["sampling"] = index["sampling"]
    tmp = dst / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(old_index, indent=2))
    os.replace(tmp, dst / INDEX)
    shutil.rmtree(staging)


def sampling_kind(args, src: Path | None) -> str | None:
    """The sampling defaults a converted transformer records: --sampling, else the VDOT release's student for a
    torch state dict (vdot_14b.pt; Wan and VACE ship safetensors), else the VACE teacher."""
    if src is None:
        return None
    if args.sampling is not None:
        return args.sampling
    pt = src.suffix.lower() in (".pt", ".pth") or (src.is_dir() and any(src.glob("*.pt")))
    return "student" if pt or (args.key or "").startswith("generator") else "teacher"


def _describe(record: dict) -> str:
    cfg = "no CFG" if record["guide_scale"] == 1.0 else f"CFG {record['guide_scale']:g}"
    return f"{record['kind']} ({record['steps']} steps, shift {record['shift']:g}, {cfg})"


def record_sampling(args) -> None:
    """``--dst DIR --sampling KIND`` alone: change what an existing model directory records."""
    from vdot_jax.weights import store

    dst = Path(args.dst)
    if not (dst / INDEX).is_file():
        raise UserError(f"--dst {dst} is not a vdot-jax model directory (no {INDEX}); --sampling alone changes "
                        "an existing one")
    read_json(dst / INDEX, "model index", UserError)
    record = store.sampling_record(args.sampling)
    store.write_sampling(dst, record)
    print(f"model directory {args.dst} now samples by default as the {_describe(record)}")


def run(args) -> None:
    if args.src is None and args.vae is None and args.text_encoder is None:
        if args.sampling is not None:
            return record_sampling(args)
        raise UserError("nothing to convert: give --src and/or --vae / --text-encoder (or --sampling alone)")
    if args.sampling is not None and args.src is None:
        raise UserError("--sampling goes with --src (the transformer it describes), or alone with --dst to change "
                        "what a model directory records")
    if args.tokenizer is not None and args.text_encoder is None:
        raise UserError("--tokenizer goes with --text-encoder (a pipeline folder's tokenizer/ is found by itself)")
    src = Path(args.src) if args.src is not None else None
    pipeline = src is not None and _is_pipeline_folder(src)
    # Every source named or found, checked before the slow work starts.
    vae_src = Path(args.vae) if args.vae else (src / "vae" if pipeline and (src / "vae").is_dir() else None)
    te_src = Path(args.text_encoder) if args.text_encoder else (
        src if pipeline and (src / "text_encoder").is_dir() else None)
    for what, p in (("VAE", args.vae), ("text encoder", args.text_encoder), ("tokenizer", args.tokenizer)):
        if p is not None and not Path(p).exists():
            raise UserError(f"{what} path {p} does not exist")
    if src is not None and not src.exists():
        raise UserError(f"checkpoint path {src} does not exist")
    config = _config_arg(args.config)
    dst = Path(args.dst)
    writes = [c for c, on in zip(COMPONENTS, (src is not None, vae_src is not None, te_src is not None)) if on]
    sources = [Path(p) for p in (src, vae_src, te_src, args.tokenizer) if p is not None]
    check_destination(dst, writes, sources, args.overwrite)
    # Everything is written into a hidden sibling and moved into place at the end (see ``commit``).
    dst.resolve().parent.mkdir(parents=True, exist_ok=True)
    staging = dst.resolve().parent / f".{dst.resolve().name}.converting-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _convert(args, src, vae_src, te_src, staging, config)
        commit(staging, dst)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    index = dst / INDEX
    have = sorted(json.loads(index.read_text())["components"]) if index.exists() else []
    missing = [c for c in COMPONENTS if c not in have]
    note = f"; add {', '.join(missing)} for vdot generate" if missing else "; ready for vdot generate"
    print(f"model directory {args.dst} holds {', '.join(have)}{note}")


def _config_arg(value: str | None):
    """--config: a preset name, or a diffusers / original Wan / vdot-jax config.json (checked before any work)."""
    if value is None:
        return None
    from vdot_jax.models.config import PRESETS
    from vdot_jax.weights.wan_transformer import config_from_json

    if value in PRESETS:
        return PRESETS[value]
    p = Path(value)
    if not p.is_file():
        raise UserError(f"--config {value} is neither a file nor a preset name ({', '.join(sorted(PRESETS))})")
    try:
        d = json.loads(p.read_text())
    except ValueError as e:
        raise UserError(f"--config {value} is not valid JSON ({e})") from None
    return config_from_json(d, f"--config {value}")


def _convert(args, src, vae_src, te_src, out_root: Path, config) -> None:
    t0 = time.time()
    if src is not None:
        from vdot_jax.models.config import WanConfig
        from vdot_jax.weights.convert import convert_transformer

        out = convert_transformer(src, out_root, dtype=args.dtype, config=config, key=args.key,
                                  progress=lambda it: progress("converting", "tensor")(list(it)))
        cfg = WanConfig.from_dict(json.loads((out / "config.json").read_text())["config"])
        print(f"converted a {cfg.describe()} to {args.dst}/transformer as {args.dtype} in {time.time() - t0:.1f} s")
        from vdot_jax.weights import store

        record = store.sampling_record(sampling_kind(args, src))
        store.write_sampling(out_root, record)
        print(f"sampling defaults for vdot generate and vdot ui: the {_describe(record)}"
              + ("" if args.sampling else "; --sampling student|teacher to choose"))
    if vae_src is not None:
        from vdot_jax.weights.wan_vae import convert_vae

        t1 = time.time()
        out = convert_vae(vae_src, out_root, dtype=args.vae_dtype,
                          progress=lambda it: progress("converting the VAE", "tensor")(list(it)))
        print(f"converted the Wan VAE from {vae_src} to {args.dst}/vae as {args.vae_dtype} in {time.time() - t1:.1f} s")
    if te_src is not None:
        from vdot_jax.weights.text_encoder import convert_text_encoder

        t1 = time.time()
        out = convert_text_encoder(te_src, out_root, dtype=args.text_encoder_dtype, tokenizer=args.tokenizer,
                                   progress=lambda it: progress("converting the text encoder", "tensor")(list(it)))
        print(f"converted the umT5 text encoder (with its tokenizer) from {te_src} to {args.dst}/text_encoder as "
              f"{args.text_encoder_dtype} in {time.time() - t1:.1f} s")


def register(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert official Wan/VACE/VDOT or diffusers checkpoints into a vdot-jax model directory",
        description=(
            "Convert checkpoints into one model directory DST (one orbax sub-directory per component + "
            "vdot_model.json). SRC is the transformer: a diffusers folder (config.json + safetensors, sharded "
            "with an index), an original Wan/VACE *.safetensors file or folder (with or without index), or a "
            "torch .pt/.pth state dict (e.g. the released vdot_14b.pt), possibly nested and with wrapper "
            "prefixes; or a whole diffusers WanVACEPipeline/WanPipeline folder, whose transformer, VAE and text "
            "encoder (with tokenizer) are all converted. --vae and --text-encoder add components from Wan's "
            "original files (Wan2.1_VAE.pth, models_t5_umt5-xxl-enc-bf16.pth with --tokenizer google/umt5-xxl) "
            "or diffusers/transformers folders, to a new or an existing DST. Pickles are read with "
            "weights_only=True; one that would run code is refused. The transformer's architecture is read from "
            "the config.json beside the weights (diffusers or original Wan), else --config, else the released model "
            "(1.3B/14B, T2V/VACE) whose tensor shapes match exactly; anything else is refused, naming what the "
            "tensors leave open."
        ),
    )
    p.add_argument("--src", default=None, help="transformer checkpoint file or folder, or a diffusers pipeline folder")
    p.add_argument("--dst", required=True,
                   help="output model directory: new, empty, or a vdot-jax model directory to add components to")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty --dst and replace the components it holds (sources are never "
                        "written, with or without it)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="stored transformer parameter dtype")
    p.add_argument("--key", default=None,
                   help="which state dict of a .pt holding several, e.g. 'generator' or 'generator_ema'")
    p.add_argument("--config", default=None,
                   help="architecture of a bare checkpoint: a config.json (diffusers or original Wan) or a preset name "
                        "(wan2.1-vace-14b, ...); default: the config.json beside the weights, else the released model "
                        "the tensor shapes match")
    p.add_argument("--sampling", default=None, choices=("student", "teacher"),
                   help="sampling defaults recorded with the transformer for vdot generate and vdot ui: student (4 "
                        "steps, shift 16, no CFG) or teacher (50 steps, shift 16, CFG 5); default: student for a "
                        "torch .pt/.pth state dict or --key generator* (the VDOT release), teacher otherwise (Wan/VACE "
                        "safetensors, diffusers). Alone with --dst: change what an existing model directory records")
    p.add_argument("--vae", default=None, help="VAE checkpoint (Wan2.1_VAE.pth or a diffusers AutoencoderKLWan folder)")
    p.add_argument("--vae-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="stored VAE parameter dtype (default float32)")
    p.add_argument("--text-encoder", default=None,
                   help="umT5 checkpoint (models_t5_umt5-xxl-enc-bf16.pth or a transformers UMT5EncoderModel folder)")
    p.add_argument("--tokenizer", default=None,
                   help="umT5 tokenizer folder with tokenizer.json (default: found beside the text encoder)")
    p.add_argument("--text-encoder-dtype", default="bfloat16", choices=("float32", "bfloat16"),
                   help="stored text encoder parameter dtype (default bfloat16, as released)")
    p.set_defaults(func=run)
