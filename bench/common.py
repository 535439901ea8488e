"""Shared helpers of the benchmark scripts: timing, device description, JSON output."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable

import jax


def device_info() -> dict:
    d = jax.devices()[0]
    return {"platform": d.platform, "device": getattr(d, "device_kind", str(d)), "count": jax.device_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def time_fn(fn: Callable[[], object], iters: int = 3, warmup: int = 1) -> dict:
    """Median wall time of ``fn()`` (its result blocked on), after ``warmup`` untimed calls."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "warmup_s": first, "iters": iters}


def torch_time_fn(fn: Callable[[], object], iters: int = 3, warmup: int = 1) -> dict:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"median_s": times[len(times) // 2], "min_s": times[0], "iters": iters}


def torch_cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def write_json(result: dict, out: str | None) -> None:
    text = json.dumps(result, indent=2)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
