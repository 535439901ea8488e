"""``vdot export``: a trained student (or any converted model) -> diffusers, original Wan, vdot-jax or LoRA files."""

from __future__ import annotations

import argparse
import re
import shutil
import time
from pathlib import Path

from vdot_jax.errors import disk_full_error, is_disk_full

FORMATS = ("diffusers", "wan", "jax", "lora")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """'5GB', '500MiB', '1000000' -> bytes."""
    from vdot_jax.commands.common import UserError

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise UserError(f"--max-shard-size must be a positive size such as 5GB or 500MiB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def _rank(text: str) -> int | None:
    if str(text).lower() == "full":
        return None
    try:
        r = int(text)
    except ValueError:
        r = 0
    if r < 1:
        from vdot_jax.commands.common import UserError

        raise UserError(f"--rank must be a positive integer or 'full', got {text!r}")
    return r


# ----------------------------------------------------------------------------- where the models come from


def _run_meta(path: Path, what: str = "--ckpt") -> dict | None:
    """The latest checkpoint's meta when ``path`` is a training workdir (its config records the teacher), else None."""
    from vdot_jax import sources

    src = sources.resolve(path, what=what)
    return src.meta if src.kind == "workdir" else None


def load_model(path: Path, *, ema: bool = False, step: int | None = None, log=print):
    """(WanModel, description) from a training workdir (its generator; the model of a flow run) or anything
    ``vdot_jax.sources`` resolves (converted model directory, diffusers folder, Wan/VACE/VDOT checkpoint)."""
    from vdot_jax import sources
    from vdot_jax.commands.common import UserError

    src = sources.resolve(path, what="--ckpt")
    if src.kind != "workdir":
        if ema or step is not None:
            raise UserError(f"--ema and --step are for training workdirs; {path} is not one (it has no checkpoints/)")
        return sources.load_transformer(src), f"the transformer of {path}"
    if ema or step is not None:
        src = sources.resolve(path, step=step, ema=ema)
    if ema and not src.ema:
        raise UserError(f"the run in {path} kept no EMA of its {src.network}; leave out --ema")
    return sources.load_transformer(src), f"the {'EMA ' if src.ema else ''}{src.network} of {path} at step {src.step}"


def _component_sources(args, ckpt: Path) -> tuple[Path | None, Path | None, str]:
    """(VAE source, text encoder source, where they came from) for a pipeline export."""
    from vdot_jax.commands.common import UserError
    from vdot_jax.sources import has_component

    for flag, p in (("--vae", args.vae), ("--text-encoder", args.text_encoder), ("--tokenizer", args.tokenizer)):
        if p is not None and not Path(p).exists():
            raise UserError(f"{flag} {p} does not exist")
    vae = Path(args.vae) if args.vae else None
    te = Path(args.text_encoder) if args.text_encoder else None
    candidates = [ckpt]
    meta = _run_meta(ckpt)
    if meta is not None:
        teacher = (meta.get("config") or {}).get("model", {}).get("teacher")
        if teacher:
            candidates.append(Path(teacher))
    found = []
    for c in candidates:
        if vae is None and has_component(c, "vae"):
            vae = c
            found.append(f"VAE from {c}")
        if te is None and has_component(c, "text_encoder"):
            te = c
            found.append(f"text encoder from {c}")
    return vae, te, "; ".join(found)


def _vae_params(src: Path):
    from vdot_jax.sources import load_vae
    from vdot_jax.weights.params import flat_state

    vae = load_vae(src)
    return flat_state(vae), vae.config, vae


def _text_encoder(src: Path, tokenizer, param_dtype: str):
    """The text encoder as stored in a model directory, else read in ``param_dtype``."""
    from vdot_jax import sources

    source = sources.resolve(src)
    return sources.load_text_encoder(source, None if source.kind == "model_dir" else param_dtype, tokenizer=tokenizer)


# ----------------------------------------------------------------------------- formats


def _export_diffusers(args, model, out: Path, vae_src, te_src, log) -> str:
    from vdot_jax.commands.common import progress
    from vdot_jax.weights.export import export_transformer, write_pipeline_folder
    from vdot_jax.weights.params import flat_state

    flat = flat_state(model)
    if vae_src is None or te_src is None or args.transformer_only:
        if not args.transformer_only:
            log("no VAE/text encoder given or found (--vae, --text-encoder): writing the transformer folder only")
        export_transformer(flat, model.cfg, out, layout="diffusers", dtype=args.dtype, max_shard_bytes=args.shard)
        cls = "WanVACETransformer3DModel" if model.cfg.is_vace else "WanTransformer3DModel"
        return f"a diffusers {cls} folder"
    vae_flat, vae_cfg, _ = _vae_params(vae_src)
    te = _text_encoder(te_src, args.tokenizer, args.text_encoder_dtype)
    write_pipeline_folder(out, transformer=(flat, model.cfg), vae=(vae_flat, vae_cfg),
                          text_encoder=(flat_state(te.model), te.config), tokenizer=te.tokenizer.path, dtype=args.dtype,
                          text_encoder_dtype=args.text_encoder_dtype, shift=args.shift,
                          max_shard_bytes=args.shard, progress=progress("exporting", "component"))
    cls = "WanVACEPipeline" if model.cfg.is_vace else "WanPipeline"
    return f"a diffusers {cls} folder (4 steps, shift {args.shift:g}, no CFG: see its README.md)"


def _export_wan(args, model, out: Path, vae_src, te_src, log) -> str:
    from vdot_jax.weights.export import copy_tokenizer, export_text_encoder, export_transformer, export_vae
    from vdot_jax.weights.params import flat_state

    export_transformer(flat_state(model), model.cfg, out, layout="wan", dtype=args.dtype, max_shard_bytes=args.shard)
    parts = ["the transformer (diffusion_pytorch_model*.safetensors + config.json)"]
    if vae_src is not None and not args.transformer_only:
        vae_flat, vae_cfg, _ = _vae_params(vae_src)
        export_vae(vae_flat, vae_cfg, out, layout="wan", dtype="float32")
        parts.append("Wan2.1_VAE.safetensors")
    if te_src is not None and not args.transformer_only:
        te = _text_encoder(te_src, args.tokenizer, args.text_encoder_dtype)
        export_text_encoder(flat_state(te.model), te.config, out, layout="wan", dtype=args.text_encoder_dtype)
        copy_tokenizer(te.tokenizer.path, out / "google" / "umt5-xxl")
        parts.append("models_t5_umt5-xxl-enc.safetensors + google/umt5-xxl/")
    return "original Wan/VACE names: " + ", ".join(parts)


def sampling_record(ckpt: Path) -> dict:
    """The sampling defaults the exported model directory records: a distilled generator samples as the student
    (at the shift it was trained for when its run used the "consistent" schedule), a flow run's model as the
    teacher, a model directory as it recorded (else as the student)."""
    from vdot_jax import sources
    from vdot_jax.weights import store

    src = sources.resolve(ckpt, what="--ckpt")
    if src.kind == "workdir":
        config = (src.meta or {}).get("config") or {}
        if src.network == "model":
            return store.sampling_record("teacher")
        consistent = config.get("schedule") == "consistent" and config.get("student_shift")
        return store.sampling_record("student", **({"shift": float(config["student_shift"])} if consistent else {}))
    recorded = store.read_sampling(src.path) if src.kind == "model_dir" else None
    return recorded or store.sampling_record("student")


def _export_jax(args, model, out: Path, vae_src, te_src, log) -> str:
    from vdot_jax.sources import load_vae
    from vdot_jax.weights import store
    from vdot_jax.weights.convert import save_transformer
    from vdot_jax.weights.text_encoder import save_text_encoder
    from vdot_jax.weights.wan_vae import save_vae

    save_transformer(model, out, dtype=args.dtype)
    record = sampling_record(Path(args.ckpt))
    store.write_sampling(out, record)
    log(f"sampling defaults recorded for vdot generate and vdot ui: {record['kind']}, {record['steps']} steps, "
        f"shift {record['shift']:g}, guide scale {record['guide_scale']:g}")
    have = ["transformer"]
    if vae_src is not None and not args.transformer_only:
        save_vae(load_vae(vae_src), out)
        have.append("vae")
    if te_src is not None and not args.transformer_only:
        save_text_encoder(_text_encoder(te_src, args.tokenizer, args.text_encoder_dtype), out,
                          dtype=args.text_encoder_dtype)
        have.append("text_encoder")
    note = "" if len(have) == 3 else " (add the VAE and text encoder with --vae/--text-encoder for vdot generate)"
    return f"a vdot-jax model directory with {', '.join(have)}{note}"


def _export_lora(args, model, out: Path, ckpt: Path, log) -> str:
    from vdot_jax.commands.common import UserError, progress
    from vdot_jax.weights.lora import LoraError, export_lora
    from vdot_jax.weights.params import flat_state

    teacher_path = Path(args.teacher) if args.teacher else None
    teacher_ema = False
    if teacher_path is None:
        meta = _run_meta(ckpt)
        model_cfg = ((meta or {}).get("config") or {}).get("model", {})
        if not model_cfg.get("teacher"):
            raise UserError("--format lora needs --teacher DIR (the model the LoRA is applied to); "
                            f"{ckpt} does not record a teacher")
        teacher_path, teacher_ema = Path(model_cfg["teacher"]), bool(model_cfg.get("teacher_ema"))
        log(f"teacher: {teacher_path} (recorded by the training run)")
    if not teacher_path.exists():
        raise UserError(f"teacher {teacher_path} does not exist")
    teacher, _ = load_model(teacher_path, ema=teacher_ema and _run_meta(teacher_path, "teacher") is not None, log=log)
    if teacher.cfg != model.cfg:
        raise UserError(f"the teacher {teacher_path} is a {teacher.cfg.describe()} but the student is a "
                        f"{model.cfg.describe()}; a LoRA needs the same architecture")
    try:
        report = export_lora(flat_state(model), flat_state(teacher), model.cfg, out, rank=args.rank,
                             layout=args.lora_layout, dtype=args.dtype, probe=args.probe,
                             progress=lambda it: progress("factorising", "tensor")(list(it)))
    except LoraError as e:
        raise UserError(str(e)) from None
    for line in report.summary_lines():
        print(line)
    if report.output_error:
        print("output error on the probe input (relative to the student): " + ", ".join(
            f"{k} {v:.3e}" for k, v in report.output_error.items()))
    s = report.to_json()["summary"]
    rank = "full rank" if args.rank is None else f"rank {args.rank}"
    return (f"a {args.lora_layout}-layout LoRA at {rank} ({report.file}, {s['lora_layers']} LoRA layers, delta error "
            f"mean {s['mean_lora_error']:.2e} / max {s['max_lora_error']:.2e}; per-layer report in lora_report.md)")


def run(args) -> None:
    from vdot_jax.commands.common import (UserError, check_no_overlap, check_numbers, check_output_folder,
                                          mark_output_folder)

    t0 = time.time()
    ckpt, out = Path(args.ckpt), Path(args.out)
    check_numbers(args, positive=("shift",), nonnegative=("step",))
    inputs = {"--ckpt": args.ckpt, "--vae": args.vae, "--text-encoder": args.text_encoder,
              "--tokenizer": args.tokenizer, "--teacher": args.teacher}
    check_no_overlap({"--out": args.out}, inputs)
    check_output_folder(args.out, command="export", overwrite=args.overwrite)
    if ckpt.resolve() in out.resolve().parents:  # and not inside the checkpoint either (a workdir, a model dir)
        raise UserError(f"--out {out} overlaps --ckpt {ckpt}; export to a separate folder (a source is never modified)")
    if args.format == "lora":
        args.rank = _rank(args.rank if args.rank is not None else "")
    elif args.rank is not None or args.teacher is not None:
        raise UserError("--rank and --teacher are for --format lora")
    args.shard = parse_size(args.max_shard_size)

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[vdot export] {msg}", flush=True)

    vae_src = te_src = None
    if args.format != "lora":
        vae_src, te_src, found = _component_sources(args, ckpt)
        if found:
            log(found)
    model, what = load_model(ckpt, ema=args.ema, step=args.step, log=log)
    from vdot_jax.weights.params import flat_state, non_finite

    bad = non_finite(flat_state(model))  # a NaN model is not exported as if it were a result
    if bad:
        raise UserError(f"{what} has non-finite values in {len(bad)} tensor(s) ({', '.join(bad[:3])}"
                        f"{', ...' if len(bad) > 3 else ''}); nothing was written to {out}")
    log(f"exporting {what}: a {model.cfg.describe()}")
    new = not out.exists()
    mark_output_folder(out, "export")
    try:
        if args.format == "diffusers":
            done = _export_diffusers(args, model, out, vae_src, te_src, log)
        elif args.format == "wan":
            done = _export_wan(args, model, out, vae_src, te_src, log)
        elif args.format == "jax":
            done = _export_jax(args, model, out, vae_src, te_src, log)
        else:
            done = _export_lora(args, model, out, ckpt, log)
    except BaseException as e:
        if new:  # a failed export into a new folder leaves nothing (a full disk, Ctrl-C)
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, Exception) and not isinstance(e, OSError) and is_disk_full(e):
            raise disk_full_error(out) from None
        raise
    print(f"exported {what} to {out} as {done}, {args.dtype}, in {time.time() - t0:.1f} s")


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained student: diffusers pipeline folder, original Wan files, vdot-jax model, or a LoRA",
        description=(
            "Export the student transformer of a training workdir (the latest checkpoint's generator -- the model "
            "of a flow run; --ema for its EMA, --step for an older checkpoint) or of a converted model directory "
            "(or any checkpoint vdot convert reads). --format diffusers: a whole WanVACEPipeline folder "
            "(model_index.json, the student's UniPC scheduler with shift 16, transformer/vae/text_encoder/tokenizer) "
            "when a VAE and text encoder are given or found (in --ckpt, or the workdir's teacher), else the "
            "transformer folder alone; loads with from_pretrained. --format wan: original Wan/VACE tensor names "
            "(what the VACE and VDOT code loads; VAE and umT5 as safetensors in their original names). --format jax: "
            "a vdot-jax model directory for vdot generate --model, recording its sampling defaults (a distilled "
            "generator: the student's 4 steps, no CFG, shift 16 or its consistent-schedule shift; a flow run's model: "
            "the teacher's 50 steps, CFG 5). --format lora: the student minus the teacher "
            "(--teacher, default the run's teacher) as a rank --rank LoRA, in diffusers' PEFT names (default) or "
            "the original/ComfyUI names, with a per-layer error report and the list of what the layout cannot "
            "carry. Large tensors are written in safetensors shards with an index, one tensor at a time."
        ),
    )
    p.add_argument("--ckpt", required=True, help="training workdir, converted model directory or transformer checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output folder: new, empty, or one vdot export made, unless --overwrite")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                   help="stored parameter dtype of the exported transformer (or LoRA factors); default float32")
    p.add_argument("--ema", action="store_true", help="export the EMA of the workdir's generator")
    p.add_argument("--step", type=int, default=None, help="checkpoint step of the workdir (default: the latest)")
    c = p.add_argument_group("pipeline components (--format diffusers, wan, jax)")
    c.add_argument("--vae", default=None, help="VAE: model directory, diffusers folder or Wan2.1_VAE.pth")
    c.add_argument("--text-encoder", default=None,
                   help="umT5: model directory, transformers folder or models_t5_umt5-xxl-enc-bf16.pth")
    c.add_argument("--tokenizer", default=None, help="umT5 tokenizer folder (default: found beside the text encoder)")
    c.add_argument("--text-encoder-dtype", default="bfloat16", choices=("float32", "bfloat16"),
                   help="stored parameter dtype of the exported text encoder (default bfloat16, as released); the VAE "
                        "stays float32")
    c.add_argument("--transformer-only", action="store_true", help="write the transformer alone")
    c.add_argument("--shift", type=float, default=16.0, help="flow shift of the exported scheduler (default 16)")
    c.add_argument("--max-shard-size", default="5GB", help="largest safetensors shard (default 5GB)")
    lo = p.add_argument_group("LoRA (--format lora)")
    lo.add_argument("--teacher", default=None,
                    help="the model the LoRA is applied to (default: the teacher the training run recorded)")
    lo.add_argument("--rank", default=None, help="LoRA rank, or 'full' for an exact delta")
    lo.add_argument("--lora-layout", default="diffusers", choices=("diffusers", "wan", "comfyui"),
                    help="diffusers: PEFT names (transformer.blocks.N.attn1.to_q.lora_A.weight), everything linear "
                         "incl. VACE; wan: original names (diffusion_model.blocks.N.self_attn.q.lora_down.weight, "
                         ".diff_b, .diff) read by diffusers and ComfyUI; comfyui: wan + the VACE blocks (ComfyUI only)")
    lo.add_argument("--probe", action=argparse.BooleanOptionalAction, default=None,
                    help="measure the end-to-end output error on a small input (default: on below 3B parameters)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    p.add_argument("--quiet", action="store_true", help="only the summary line")
    p.set_defaults(func=run)
