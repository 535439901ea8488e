"""Wan2.1 VAE benchmark: our JAX encode/decode against PyTorch diffusers' ``AutoencoderKLWan``.

    python bench/vae.py --out out/vae_bench.json                  # 81x480x832, float32 and bfloat16
    python bench/vae.py --tiny --out out/vae_tiny.json            # tiny model and video: a CPU smoke test
    python bench/vae.py --conv 3d,2d --dtypes bfloat16 --out ...  # compare the two conv lowerings

Both models hold the same random weights (diffusers' initialisation copied into ours; our own random
initialisation when torch/diffusers are not importable, and then only our numbers are reported). Each
variant is compiled once (compile time reported apart), run once to warm up, then timed ``--repeats``
times; times are medians in seconds. Memory: XLA's ``memory_analysis`` of each compiled program
(arguments + output + temporaries) and, on GPUs, the device's peak bytes in use; for PyTorch
``torch.cuda.max_memory_allocated``. Errors: our bfloat16 decode/encode against our float32 ones, and
our outputs against diffusers' in the same dtype. The JSON holds everything; a summary is printed.

On GPUs, both sides run float32 convolutions with TF32 allowed by default (PyTorch's
``torch.backends.cudnn.allow_tf32`` and XLA's default precision), so their float32 results differ at
the 1e-3 level; ``--highest`` makes ours exact float32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave room for PyTorch in the same process
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from vdot_jax.models import vae as V  # noqa: E402
from vdot_jax.weights.checkpoint_io import TensorSource  # noqa: E402
from vdot_jax.weights.keymap import convert_tensors  # noqa: E402
from vdot_jax.weights.params import abstract_model, assign  # noqa: E402
from vdot_jax.weights.wan_vae import vae_keymap  # noqa: E402

TINY = V.VAEConfig(base_dim=8, z_dim=4, dim_mult=(1, 2, 4, 4), latents_mean=(0.0,) * 4, latents_std=(1.0,) * 4)


def _args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=None, help="video frames, 1+4k (default 81; 9 with --tiny)")
    p.add_argument("--height", type=int, default=None, help="default 480 (32 with --tiny)")
    p.add_argument("--width", type=int, default=None, help="default 832 (48 with --tiny)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tiny", action="store_true", help="tiny model and video (CPU smoke test)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="our compute dtypes")
    p.add_argument("--torch-dtypes", default="float32,bfloat16", help="diffusers' dtypes ('' to skip PyTorch)")
    p.add_argument("--conv", default="3d", help="conv lowerings to time: 3d, 2d or 3d,2d")
    p.add_argument("--tiling", default=None, help="TILE,OVERLAP in pixels (default: untiled)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--nhwc", action="store_true", help="compile with xla_gpu_force_conv_nhwc")
    p.add_argument("--highest", action="store_true", help="float32 matmuls/convs at HIGHEST precision (no TF32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON result path")
    a = p.parse_args()
    a.frames = a.frames or (9 if a.tiny else 81)
    a.height = a.height or (32 if a.tiny else 480)
    a.width = a.width or (48 if a.tiny else 832)
    return a


def _timed(fn, repeats):
    """(first call seconds, [repeat seconds]) of ``fn`` (which must block until its result is ready)."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, first, times


def _summary(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "all_s": times}


def _err(a, b):
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "mean_abs_signal": float(np.abs(b).mean())}


def _torch_model(cfg, seed):
    """diffusers' AutoencoderKLWan with its random init, or None when torch/diffusers are missing."""
    try:
        import torch
        from diffusers import AutoencoderKLWan
    except ImportError as e:
        print(f"[bench] PyTorch reference skipped: {e}")
        return None
    torch.manual_seed(seed)
    return AutoencoderKLWan(**{k: v for k, v in cfg.to_diffusers().items() if k != "_class_name"}).eval()


def _ours_from(model, cfg, seed):
    if model is None:
        return V.WanVAE(cfg, rngs=nnx.Rngs(seed))
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    src = TensorSource({k: (lambda v=v: v) for k, v in sd.items()}, {k: v.shape for k, v in sd.items()}, "diffusers")
    keymap, shapes = vae_keymap(cfg)
    return assign(abstract_model(lambda: V.WanVAE(cfg, rngs=nnx.Rngs(0))), convert_tensors(src, keymap, shapes))


def _bench_torch(model, video, latents, dtypes, repeats):
    import torch

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res, outs = {}, {}
    x_cpu, z_cpu = torch.from_numpy(np.array(video)), torch.from_numpy(np.array(latents))
    for name in dtypes:
        dt = getattr(torch, name)
        m = model.to(dev, dt)
        x, z = x_cpu.to(dev, dt), z_cpu.to(dev, dt)

        def sync():
            if dev == "cuda":
                torch.cuda.synchronize()

        def enc():
            with torch.no_grad():
                out = m.encode(x).latent_dist.mean
            sync()
            return out

        def dec():
            with torch.no_grad():
                out = m.decode(z).sample
            sync()
            return out

        entry = {}
        for kind, fn in (("encode", enc), ("decode", dec)):
            if dev == "cuda":
                torch.cuda.reset_peak_memory_stats()
            out, first, times = _timed(fn, repeats)
            entry[kind] = {"first_call_s": first, **_summary(times)}
            if dev == "cuda":
                entry[kind]["peak_bytes"] = torch.cuda.max_memory_allocated()
            outs[(name, kind)] = out.float().cpu().numpy()
            del out
        res[name] = entry
        print(f"[bench] diffusers {name}: encode {entry['encode']['median_s']:.3f}s "
              f"decode {entry['decode']['median_s']:.3f}s")
    model.to("cpu", torch.float32)
    if dev == "cuda":
        torch.cuda.empty_cache()
    info = {"device": torch.cuda.get_device_name() if dev == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    return res, outs, info


def _flops(vae, kind, shape):
    """XLA's flop count of one whole encode/decode: the first chunk plus the steady-state chunk times the
    number of chunks (each lowered alone, outside the scan, whose body XLA would count once)."""
    graphdef, state = nnx.split(vae)
    cfg = vae.config
    b = shape[0]
    if kind == "encode":
        f, h, w = shape[2:]
        first = jax.ShapeDtypeStruct((b, 1, h, w, cfg.in_channels), jnp.float32)
        body = jax.ShapeDtypeStruct((b, cfg.temporal_factor, h, w, cfg.in_channels), jnp.float32)
        n = (f - 1) // cfg.temporal_factor
        net = "encoder"
    else:
        f, h, w = shape[2:]
        first = body = jax.ShapeDtypeStruct((b, 1, h, w, cfg.z_dim), jnp.float32)
        n = f - 1
        net = "decoder"

    def run(st, x, cache):
        m = nnx.merge(graphdef, st)
        return getattr(m, net)(x, cache, **m._kw())

    def cost(*args):
        c = jax.jit(run).lower(*args).cost_analysis()
        c = c[0] if isinstance(c, (list, tuple)) else c
        return float(c.get("flops", 0.0))

    cache = jax.eval_shape(run, state, first, None)[1]
    return cost(state, first, None) + n * cost(state, body, cache)


def _bench_ours(vae, video, latents, dtypes, convs, repeats, options):
    res, outs = {}, {}
    dev = jax.devices()[0]
    video, latents = jax.device_put(video, dev), jax.device_put(latents, dev)  # as diffusers' inputs: on device
    for name in dtypes:
        for conv in convs:
            vae.set_runtime(dtype=name, conv=conv)
            graphdef, state = nnx.split(vae)
            entry = {}
            for kind, fn, arg in (("encode", V._encode_jit, video), ("decode", V._decode_jit, latents)):
                t = time.perf_counter()
                compiled = fn.lower(graphdef, name, state, arg).compile(compiler_options=options or None)
                compile_s = time.perf_counter() - t
                mem = compiled.memory_analysis()
                out, first, times = _timed(lambda: jax.block_until_ready(compiled(state, arg)), repeats)
                entry[kind] = {"compile_s": compile_s, "first_call_s": first, **_summary(times)}
                if mem is not None:
                    entry[kind]["memory_analysis"] = {
                        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
                        "temp_bytes": mem.temp_size_in_bytes, "alias_bytes": mem.alias_size_in_bytes,
                        "total_bytes": mem.argument_size_in_bytes + mem.output_size_in_bytes
                        + mem.temp_size_in_bytes - mem.alias_size_in_bytes,
                    }
                stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
                if stats and "peak_bytes_in_use" in stats:
                    entry[kind]["process_peak_bytes"] = stats["peak_bytes_in_use"]  # cumulative over the run
                outs[(name, conv, kind)] = np.asarray(out)
                del out, compiled
            res[f"{name}/{conv}"] = entry
            print(f"[bench] ours {name}/{conv}: encode {entry['encode']['median_s']:.3f}s "
                  f"decode {entry['decode']['median_s']:.3f}s (compile {entry['encode']['compile_s']:.1f}s + "
                  f"{entry['decode']['compile_s']:.1f}s)")
    vae.set_runtime(dtype="float32", conv=convs[0])
    return res, outs


def main():
    a = _args()
    if a.highest:
        jax.config.update("jax_default_matmul_precision", "highest")
    cfg = TINY if a.tiny else V.VAEConfig()
    if (a.frames - 1) % cfg.temporal_factor or a.height % 8 or a.width % 8:
        raise SystemExit(f"--frames must be 1+4k and --height/--width multiples of 8, got "
                         f"{a.frames}x{a.height}x{a.width}")
    dtypes = [d for d in a.dtypes.split(",") if d]
    torch_dtypes = [d for d in a.torch_dtypes.split(",") if d]
    convs = [c for c in a.conv.split(",") if c]
    tiling = tuple(int(v) for v in a.tiling.split(",")) if a.tiling else None

    model = _torch_model(cfg, a.seed) if torch_dtypes else None
    vae = _ours_from(model, cfg, a.seed).set_runtime(tiling=tiling)
    rs = np.random.RandomState(a.seed)
    video = rs.uniform(-1, 1, (a.batch, 3, a.frames, a.height, a.width)).astype(np.float32)
    lat_shape = (a.batch, cfg.z_dim, 1 + (a.frames - 1) // cfg.temporal_factor, a.height // 8, a.width // 8)
    latents = np.asarray(vae.denormalize(rs.randn(*lat_shape).astype(np.float32)))

    result = {
        "what": "Wan2.1 VAE encode/decode, ours (JAX) vs diffusers AutoencoderKLWan",
        "shape": {"batch": a.batch, "frames": a.frames, "height": a.height, "width": a.width,
                  "latent": list(lat_shape)},
        "config": "tiny" if a.tiny else "wan2.1 (diffusers defaults)",
        "jax": {"version": jax.__version__, "device": str(jax.devices()[0].device_kind),
                "backend": jax.default_backend(), "highest_precision": a.highest,
                "compiler_options": {"xla_gpu_force_conv_nhwc": True} if a.nhwc else {}},
        "tiling": tiling, "repeats": a.repeats,
        "flops": {"encode": _flops(vae, "encode", video.shape), "decode": _flops(vae, "decode", latents.shape)},
    }
    t_outs = {}
    if model is not None:
        result["diffusers"], t_outs, result["torch"] = _bench_torch(model, video, latents, torch_dtypes, a.repeats)
        del model
    result["ours"], o_outs = _bench_ours(vae, video, latents, dtypes, convs, a.repeats,
                                         {"xla_gpu_force_conv_nhwc": True} if a.nhwc else None)

    for key, entry in result["ours"].items():
        for kind in ("encode", "decode"):
            e = entry[kind]
            e["tflops_per_s"] = result["flops"][kind] / e["median_s"] / 1e12
            ref = result.get("diffusers", {}).get(key.split("/")[0], {}).get(kind)
            if ref:
                e["time_vs_diffusers_same_dtype"] = e["median_s"] / ref["median_s"]
            ref32 = result.get("diffusers", {}).get("float32", {}).get(kind)
            if ref32:
                e["time_vs_diffusers_float32"] = e["median_s"] / ref32["median_s"]

    errors = {}
    c0 = convs[0]
    if ("float32", c0, "decode") in o_outs:
        base = {k: o_outs[("float32", c0, k)] for k in ("encode", "decode")}
        for (name, conv, kind), out in o_outs.items():
            if (name, conv) != ("float32", c0):
                errors[f"ours {name}/{conv} vs ours float32/{c0}: {kind}"] = _err(out, base[kind])
    for (name, kind), out in t_outs.items():
        if (name, c0, kind) in o_outs:
            errors[f"ours {name}/{c0} vs diffusers {name}: {kind}"] = _err(o_outs[(name, c0, kind)], out)
        if name != "float32" and ("float32", kind) in t_outs:
            errors[f"diffusers {name} vs diffusers float32: {kind}"] = _err(out, t_outs[("float32", kind)])
    result["errors"] = errors

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"[bench] XLA flop counts: encode {result['flops']['encode'] / 1e9:.4g} GFLOP, "
          f"decode {result['flops']['decode'] / 1e9:.4g} GFLOP")
    for k, e in errors.items():
        print(f"[bench] error {k}: max {e['max_abs']:.3g} mean {e['mean_abs']:.3g} (signal {e['mean_abs_signal']:.3g})")
    for key, entry in result["ours"].items():
        r = [f"{kind} x{entry[kind]['time_vs_diffusers_same_dtype']:.2f}" for kind in ("encode", "decode")
             if "time_vs_diffusers_same_dtype" in entry[kind]]
        if r:
            print(f"[bench] ours {key} time / diffusers {key.split('/')[0]}: {', '.join(r)}")
    print(f"[bench] wrote {out}")


if __name__ == "__main__":
    main()
