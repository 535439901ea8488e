"""End-to-end generation latency: the 4-step student and the 50-step CFG teacher, ours vs diffusers, as JSON.

    python bench/generate.py --out out/generate.json                      # GPU: 81x480x832, VACE-1.3B
    python bench/generate.py --tiny --torch-cpu --out out/gen_tiny.json   # CPU smoke test (both sides)
    python bench/generate.py --no-text-encoder --no-teacher ...           # skip umT5-XXL / the teacher
    python bench/generate.py --memory-plan --out out/gen_memory.json      # compile only: memory per program
    python bench/generate.py --tiny --batch 1x1,2x2,4x4,8x8 --out out/gen_batch.json  # videos/s vs devices

Random weights: VACE-1.3B DiT (bf16 parameters and compute), umT5-XXL (bf16) with a WordLevel tokenizer
built here (the real vocabulary is not needed for timing: 512 padded tokens either way), the Wan VAE
(float32 by default, as diffusers runs it; ``--vae-dtype bfloat16`` to try ours in bf16). Each run is one
``Pipeline.generate`` call, timed per stage: text encoding (the prompt cache emptied before each run, so it
really encodes), condition encoding, denoising (one compiled program) and decoding.

Per setting (student: 4 UniPC steps, shift 16, no CFG; teacher: 50 steps, CFG 5 with a negative prompt):
a warm-up run (compiles everything), for the student a "cold cache" run (the zero-latent cache emptied: a
text-to-video request then pays one encode of the all-zero video, once per process and shape), then
``--repeats`` warm runs, reported as medians. The diffusers reference (``WanVACEPipeline``, same
architectures, its own random weights, bf16 DiT and umT5, fp32 VAE, SDPA) runs first in the same process when
torch with CUDA and diffusers are importable (``--torch-cpu``: on the CPU, for the smoke test), and is freed
before JAX allocates.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the card with the torch reference
sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from common import device_info, torch_cuda_available, write_json  # noqa: E402
from dit_forward import forward_flops  # noqa: E402
from vdot_jax import conditions as C  # noqa: E402
from vdot_jax.models.config import PRESETS, Runtime, WanConfig  # noqa: E402
from vdot_jax.models.text_encoder import TextEncoder  # noqa: E402
from vdot_jax.models.umt5 import UMT5_XXL, UMT5Config, UMT5EncoderModel  # noqa: E402
from vdot_jax.models.vae import VAEConfig, WanVAE  # noqa: E402
from vdot_jax.models.wan import WanModel  # noqa: E402
from vdot_jax.models.attention import resolve  # noqa: E402
from vdot_jax.sampling.pipeline import STUDENT, TEACHER, Pipeline, model_bytes  # noqa: E402

PROMPT = ("a corgi in a red raincoat runs along a wet beach at sunset, waves rolling in, the camera tracking "
          "low beside it, warm light, shallow depth of field, cinematic")
NEGATIVE = "blurry, static, low quality, distorted, watermark"
TINY_DIT = WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_channels=4, out_channels=4, text_dim=32,
                     freq_dim=32, vace_layers=(0,), vace_in_channels=2 * 4 + 64)
TINY_VAE = VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 2, 2), num_res_blocks=1,
                     latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)
TINY_UMT5 = UMT5Config(vocab_size=256, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4)


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny models at 9x32x48 (CPU smoke test)")
    p.add_argument("--frames", type=int, default=None, help="default 81 (9 with --tiny)")
    p.add_argument("--height", type=int, default=None, help="default 480 (32 with --tiny)")
    p.add_argument("--width", type=int, default=None, help="default 832 (48 with --tiny)")
    p.add_argument("--task", default="t2v", choices=("t2v", "inpaint"),
                   help="t2v (all-zero conditions) or inpaint (a random video with a box mask: both halves encoded)")
    p.add_argument("--dtype", default="bfloat16", help="DiT and umT5 compute (and DiT parameter) dtype")
    p.add_argument("--vae-dtype", default="float32", help="our VAE compute dtype")
    p.add_argument("--attention", default="auto", help="auto: cudnn on GPU, splash on TPU, xla elsewhere")
    p.add_argument("--repeats", type=int, default=3, help="warm student runs")
    p.add_argument("--teacher-repeats", type=int, default=1, help="warm teacher runs")
    p.add_argument("--no-teacher", action="store_true", help="skip the 50-step CFG teacher")
    p.add_argument("--no-text-encoder", action="store_true",
                   help="skip umT5-XXL: random text embeddings (the text stage then reads 0)")
    p.add_argument("--no-torch", action="store_true", help="skip the diffusers reference")
    p.add_argument("--batch", default=None, metavar="DxB,...",
                   help="throughput of the batched sampler (vdot generate --batch): for each D devices x B videos a "
                        "subprocess (D fake devices on a CPU host, the first D otherwise) samples calls of B videos "
                        "over mesh data=D; videos/s and the ratio to the first item (student only, random text)")
    p.add_argument("--batch-calls", type=int, default=3, help="timed calls per --batch item (after a warm-up call)")
    p.add_argument("--batch-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--torch-cpu", action="store_true", help="run the diffusers reference on the CPU (smoke test)")
    p.add_argument("--memory-plan", action="store_true",
                   help="only compile (abstract parameters, nothing allocated) and report memory_analysis() of the "
                        "denoising programs and the VAE encode/decode; works on the CPU")
    p.add_argument("--out", default=None, help="JSON result path")
    a = p.parse_args()
    a.frames = a.frames or (9 if a.tiny else 81)
    a.height = a.height or (32 if a.tiny else 480)
    a.width = a.width or (48 if a.tiny else 832)
    return a


def _tokenizer(folder: Path) -> Path:
    """A WordLevel tokenizer.json over the prompt's words (+ <pad>, </s>, <unk>), umT5's conventions."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = sorted(set((PROMPT + " " + NEGATIVE).replace(",", " , ").split()))
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def _random(make, dtype=None):
    """An NNX module with random parameters made on the device (cast to ``dtype``), never on the host."""
    graphdef, _ = nnx.split(nnx.eval_shape(make))

    @jax.jit
    def init():
        state = nnx.state(make())
        return state if dtype is None else jax.tree.map(lambda a: a.astype(dtype), state)

    return nnx.merge(graphdef, init())


def _vcu(task, frames, height, width):
    if task == "t2v":
        return C.t2v(frames, height, width)
    r = np.random.default_rng(0)
    video = r.uniform(-1, 1, (1, 3, frames, height, width)).astype(np.float32)
    mask = np.zeros((1, 1, frames, height, width), np.float32)
    mask[..., height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1.0
    return C.inpaint(video, mask)


def _median(runs, key):
    return statistics.median(r[key] for r in runs)


# ----------------------------------------------------------------------------- ours


def bench_ours(a, dit_cfg, vae_cfg, te_cfg, tok_dir, vcu, settings):
    dtype = jnp.dtype(a.dtype)
    runtime = Runtime(dtype=a.dtype, attention=resolve(a.attention))
    t0 = time.perf_counter()
    dit = _random(lambda: WanModel(dit_cfg, rngs=nnx.Rngs(0), runtime=runtime), dtype)
    vae = _random(lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(1))).set_runtime(dtype=a.vae_dtype)
    te = None
    if te_cfg is not None:
        model = _random(lambda: UMT5EncoderModel(te_cfg, rngs=nnx.Rngs(2), runtime=Runtime(dtype=a.dtype)), dtype)
        te = TextEncoder(model, tok_dir)
    pipe = Pipeline(dit, vae, te, log=lambda m: print(f"[bench] ours: {m}", flush=True))
    setup_s = time.perf_counter() - t0
    params = {"transformer": model_bytes(dit), "vae": model_bytes(vae),
              "text_encoder": model_bytes(te.model) if te is not None else 0}
    text = neg = None
    if te is None:
        r = np.random.default_rng(0)
        text = r.standard_normal((1, 512, dit_cfg.text_dim)).astype(np.float32)
        neg = r.standard_normal((1, 512, dit_cfg.text_dim)).astype(np.float32)

    out = {"setup_s": setup_s, "param_bytes": params}
    for name, s in settings.items():
        kw = dict(negative_prompt=NEGATIVE, vcu=vcu, steps=s["steps"], shift=s["shift"], guide_scale=s["guide_scale"],
                  progress=False, text_embeds=text, negative_text_embeds=neg)

        def run(seed, clear_zero_cache=False):
            if te is not None:
                te.clear_cache()  # encode for real every time, as a fresh prompt would
            if clear_zero_cache:
                C.ZERO_LATENTS.clear()
            return pipe.generate(PROMPT, seed=seed, **kw).timings

        first = run(0)
        entry = {"first_call": first}
        if name == "student":  # once is enough: the cache does not depend on the setting
            entry["cold_zero_cache"] = run(1, clear_zero_cache=True)
        warm = [run(2 + i) for i in range(s["repeats"])]
        stages = ("text", "conditions", "denoise", "decode", "total")
        entry.update(warm_runs=warm, median={k: _median(warm, k) for k in stages})
        evals = s["steps"] * (2 if s["guide_scale"] != 1.0 else 1)
        n = (vcu.num_frames - 1) // 4 + 1
        tokens = (n + vcu.num_refs) * (vcu.height // 16) * (vcu.width // 16)
        flops = forward_flops(dit_cfg, tokens, 512) * evals
        entry["denoise_tflops_per_s"] = flops / entry["median"]["denoise"] / 1e12
        dev = jax.devices()[0]
        stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            entry["process_peak_bytes"] = stats["peak_bytes_in_use"]
        m = entry["median"]
        print(f"[bench] ours {name}: total {m['total']:.3f} s = text {m['text']:.3f} + conditions "
              f"{m['conditions']:.3f} + denoise {m['denoise']:.3f} + decode {m['decode']:.3f} "
              f"(first call {first['total']:.1f} s, of which denoise compile {first['compile']:.1f} s)", flush=True)
        out[name] = entry
    return out


# ----------------------------------------------------------------------------- diffusers


def bench_torch(a, dit_cfg, vae_cfg, te_cfg, tok_dir, vcu, settings, device):
    import torch
    import transformers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanVACEPipeline, WanVACETransformer3DModel

    dt = torch.bfloat16 if a.dtype == "bfloat16" else torch.float32

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    torch.manual_seed(0)
    with torch.device(device):
        torch.set_default_dtype(dt)
        transformer = WanVACETransformer3DModel(**dit_cfg.to_diffusers()).eval()
        text_encoder = None
        if te_cfg is not None:
            text_encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
                **te_cfg.to_hf(), dropout_rate=0.0)).eval()
        torch.set_default_dtype(torch.float32)
        vae = AutoencoderKLWan(**{k: v for k, v in vae_cfg.to_diffusers().items() if k != "_class_name"}).eval()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"), pad_token="<pad>",
                                                     eos_token="</s>", unk_token="<unk>")
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=STUDENT["shift"])
    pipe = WanVACEPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                           transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    text = neg = None
    if te_cfg is None:
        r = np.random.default_rng(0)
        text = torch.from_numpy(r.standard_normal((1, 512, dit_cfg.text_dim)).astype(np.float32)).to(device, dt)
        neg = torch.from_numpy(r.standard_normal((1, 512, dit_cfg.text_dim)).astype(np.float32)).to(device, dt)
    video = mask = None
    if vcu.kind != "text":
        video = ((vcu.frames + 1) / 2).transpose(0, 2, 3, 4, 1)
        mask = np.repeat(vcu.masks.transpose(0, 2, 3, 4, 1), 3, axis=-1)

    out = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__}
    for name, s in settings.items():
        def run():
            with torch.no_grad():
                kw = (dict(prompt=PROMPT, negative_prompt=NEGATIVE) if text is None
                      else dict(prompt_embeds=text, negative_prompt_embeds=neg))
                pipe(video=video, mask=mask, height=vcu.height, width=vcu.width, num_frames=vcu.num_frames,
                     num_inference_steps=s["steps"], guidance_scale=s["guide_scale"], output_type="np",
                     generator=torch.Generator(device).manual_seed(0), **kw)
            sync()

        times = []
        for i in range(s["torch_warmup"] + s["repeats"]):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            run()
            if i >= s["torch_warmup"]:
                times.append(time.perf_counter() - t)
        out[name] = {"median_s": statistics.median(times), "all_s": times}
        if device == "cuda":
            out[name]["peak_bytes"] = torch.cuda.max_memory_allocated()
        print(f"[bench] diffusers {name}: {out[name]['median_s']:.3f} s", flush=True)
    del pipe, transformer, text_encoder, vae
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def memory_plan(a, dit_cfg, vae_cfg):
    """XLA's memory_analysis of the real-size programs, compiled ahead of time with abstract parameters. Without
    a GPU the attention is a block-wise XLA stand-in for cuDNN (whose score blocks it reports separately)."""
    from vdot_jax.models import attention as A
    from vdot_jax.models import vae as V
    from vdot_jax.sampling.model_sampler import model_sampler

    attention = resolve(a.attention)
    if attention == "xla":  # plain XLA would materialise all scores (72 GB at 32k tokens); cuDNN never does
        attention = "blockwise_memory_plan"

        @A.register(attention)
        def _blockwise(q, k, v):
            b, n, h, d = q.shape
            blk = next(c for c in range(min(n, 1024), 0, -1) if n % c == 0)
            qb = jnp.moveaxis(q.reshape(b, n // blk, blk, h, d), 1, 0)
            out = jax.lax.map(lambda x: jax.nn.dot_product_attention(x, k, v, implementation="xla"), qb)
            return jnp.moveaxis(out, 0, 1).reshape(b, n, h, d)

    def report(c):
        m = c.memory_analysis()
        return {k: getattr(m, f"{k}_size_in_bytes") / 2**30 for k in ("argument", "output", "temp")}

    f, h, w = (a.frames - 1) // 4 + 1, a.height // 8, a.width // 8
    sd = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    dit = nnx.eval_shape(lambda: WanModel(dit_cfg, rngs=nnx.Rngs(0), runtime=Runtime(dtype=a.dtype,
                                                                                      attention=attention)))
    out = {"attention": attention, "gib": {}}
    for param_dtype in ("float32", a.dtype):
        graphdef, state = nnx.split(dit)
        state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(param_dtype)), state)
        for name, s in (("student", STUDENT), ("teacher", TEACHER)):
            fn = model_sampler(graphdef, steps=s["steps"], shift=s["shift"], guidance=s["guide_scale"]).jitted
            text = sd(1, 512, dit_cfg.text_dim)
            c = fn.lower(state, sd(1, dit_cfg.in_channels, f, h, w), text, text if s["guide_scale"] != 1 else None,
                         sd(1, dit_cfg.vace_in_channels, f, h, w)).compile()
            out["gib"][f"denoise {name}, {param_dtype} parameters"] = report(c)
    vae = nnx.eval_shape(lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(vae)
    for name, fn, shape in (("vae decode", V._decode_jit, (1, vae_cfg.z_dim, f, h, w)),
                            ("vae encode video", V._encode_jit, (1, 3, a.frames, a.height, a.width)),
                            ("vae encode one reference", V._encode_jit, (1, 3, 1, a.height, a.width))):
        out["gib"][name] = report(fn.lower(graphdef, a.vae_dtype, state, sd(*shape)).compile())
    out["param_gib"] = {"transformer_fp32": model_bytes(dit) / 2**30, "vae": model_bytes(vae) / 2**30,
                        "umt5_xxl_bf16": model_bytes(nnx.eval_shape(
                            lambda: UMT5EncoderModel(UMT5_XXL, rngs=nnx.Rngs(0)))) / 2**30 / 2}
    for k, v in out["gib"].items():
        print(f"[bench] {k}: " + ", ".join(f"{kk} {vv:.2f} GiB" for kk, vv in v.items()), flush=True)
    return out


def batch_child(a, dit_cfg, vae_cfg) -> dict:
    """One --batch item in this process: B videos a call over data=D, timed as ``vdot generate --batch`` runs them
    (conditions, denoise, decode; text embeddings given)."""
    d, b = (int(x) for x in a.batch_child.split("x"))
    runtime = Runtime(dtype=a.dtype, attention=resolve(a.attention))
    dit = _random(lambda: WanModel(dit_cfg, rngs=nnx.Rngs(0), runtime=runtime), jnp.dtype(a.dtype))
    vae = _random(lambda: WanVAE(vae_cfg, rngs=nnx.Rngs(1))).set_runtime(dtype=a.vae_dtype)
    from vdot_jax.parallel.mesh import make_mesh

    pipe = Pipeline(dit, vae, mesh=make_mesh(f"data={d}", devices=jax.devices()[:d]) if d > 1 else None)
    text = np.random.default_rng(0).standard_normal((b, 512, dit_cfg.text_dim)).astype(np.float32)
    vcu = C.batch_vcus([_vcu(a.task, a.frames, a.height, a.width)] * b)

    def call(seed):
        t0 = time.perf_counter()
        pipe.generate([""] * b, vcu=vcu, seed=seed, text_embeds=text, progress=False, **STUDENT)
        return time.perf_counter() - t0

    warm = call(0)
    times = sorted(call(1 + i) for i in range(a.batch_calls))
    med = times[len(times) // 2]
    return {"devices": d, "videos_per_call": b, "warmup_s": warm, "call_s": times, "median_call_s": med,
            "videos_per_s": b / med}


def batch_bench(a) -> dict:
    """Every --batch item in its own subprocess (the device count is fixed when JAX starts)."""
    import json
    import subprocess

    items, rows = a.batch.split(","), []
    for item in items:
        d = int(item.split("x")[0])
        env = dict(os.environ)
        if jax.default_backend() == "cpu":
            flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f)
            env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={d}".strip()
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            argv = [x for x in sys.argv[1:] if x not in ("--batch", a.batch, "--out", a.out)]
            subprocess.run([sys.executable, __file__, *argv, "--batch-child", item, "--out", f.name], env=env,
                           check=True)
            rows.append(json.loads(Path(f.name).read_text()))
        rows[-1]["speedup_vs_first"] = rows[-1]["videos_per_s"] / rows[0]["videos_per_s"]
        rows[-1]["ideal"] = rows[-1]["devices"] / rows[0]["devices"]
        print(f"[bench] {item}: {rows[-1]['videos_per_s']:.3f} videos/s", flush=True)
        result = {"bench": "generate_batch", "task": a.task, "video": [a.frames, a.height, a.width],
                  "models": "tiny" if a.tiny else "wan2.1-vace-1.3b (random weights)", "dtype": a.dtype,
                  "host_cpus": os.cpu_count(), "rows": rows, **device_info()}
        write_json(result, a.out)  # after each item: a run cut off keeps what finished
    return result


def main():
    a = _args()
    dit_cfg = TINY_DIT if a.tiny else PRESETS["wan2.1-vace-1.3b"]
    vae_cfg = TINY_VAE if a.tiny else VAEConfig()
    te_cfg = None if a.no_text_encoder else (TINY_UMT5 if a.tiny else UMT5_XXL)
    if te_cfg is not None and te_cfg.d_model != dit_cfg.text_dim:
        raise SystemExit(f"text encoder width {te_cfg.d_model} != DiT text_dim {dit_cfg.text_dim}")
    if a.batch_child:
        write_json(batch_child(a, dit_cfg, vae_cfg), a.out)
        return
    if a.batch:
        batch_bench(a)
        return
    if a.memory_plan:
        write_json({"bench": "generate_memory_plan", "video": [a.frames, a.height, a.width], "dtype": a.dtype,
                    **memory_plan(a, dit_cfg, vae_cfg), **device_info()}, a.out)
        return
    vcu = _vcu(a.task, a.frames, a.height, a.width)
    settings = {"student": dict(STUDENT, repeats=a.repeats, torch_warmup=1)}
    if not a.no_teacher:
        settings["teacher"] = dict(TEACHER, repeats=a.teacher_repeats, torch_warmup=0)
    tok_dir = _tokenizer(Path(tempfile.mkdtemp(prefix="vdot_bench_tok_")))

    result = {"bench": "generate", "task": vcu.task, "video": [a.frames, a.height, a.width],
              "models": "tiny" if a.tiny else "wan2.1-vace-1.3b + umt5-xxl + wan2.1 vae (random weights)",
              "text_encoder": te_cfg is not None, "dtype": a.dtype, "vae_dtype": a.vae_dtype,
              "attention": resolve(a.attention),
              "settings": {k: {kk: vv for kk, vv in v.items() if kk != "torch_warmup"} for k, v in settings.items()},
              **device_info()}
    torch_device = "cpu" if a.torch_cpu else ("cuda" if torch_cuda_available() else None)
    if not a.no_torch and torch_device is not None:
        try:
            result["diffusers"] = bench_torch(a, dit_cfg, vae_cfg, te_cfg, tok_dir, vcu, settings, torch_device)
        except ImportError as e:
            print(f"[bench] diffusers reference skipped: {e}")
    result["ours"] = bench_ours(a, dit_cfg, vae_cfg, te_cfg, tok_dir, vcu, settings)
    ours = result["ours"]
    if "teacher" in ours:
        result["teacher_over_student"] = ours["teacher"]["median"]["total"] / ours["student"]["median"]["total"]
    for name in settings:
        ref = result.get("diffusers", {}).get(name)
        if ref:
            ours[name]["speedup_vs_diffusers"] = ref["median_s"] / ours[name]["median"]["total"]
            print(f"[bench] {name}: ours {ours[name]['median']['total']:.3f} s vs diffusers {ref['median_s']:.3f} s "
                  f"-> x{ours[name]['speedup_vs_diffusers']:.2f}")
    write_json(result, a.out)


if __name__ == "__main__":
    main()
