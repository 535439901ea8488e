"""Checks on lowered programs, for compiling ahead of time on a host without the target accelerator.

- ``kernel_calls(text)``: every Pallas (``tpu_custom_call``) and cuDNN (``__cudnn$...``, or JAX's
  ``CustomSPMDPartitioning`` wrapper that a bare cuDNN call gets under a mesh) custom call in a lowered
  StableHLO module, and whether it runs inside a shard_map (``sdy.manual_computation`` region, or a function
  only called from one). XLA cannot partition these calls; under a sharded ``jit`` they must sit inside.
- ``cuda_lowering()``: lower for ``"cuda"`` on a CPU host. JAX asks the local cuDNN for its version while
  tracing ``dot_product_attention(implementation="cudnn")``; there is none here, so this pretends one.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Iterator

# CustomSPMDPartitioning: a bare cuDNN call under a mesh (JAX wraps it in its own partitioner)
KERNEL_TARGETS = re.compile(r"custom_call @(tpu_custom_call|__cudnn\$\w+|CustomSPMDPartitioning)")
_FUNC = re.compile(r"^\s*func\.func (?:public |private )?@([\w$.-]+)\(")
_CALL = re.compile(r"(?:func\.)?call @([\w$.-]+)\(")


@dataclass(frozen=True)
class KernelCall:
    target: str
    function: str
    inside_shard_map: bool


def kernel_calls(text: str) -> list[KernelCall]:
    """The kernel custom calls of a lowered module (``jitted.lower(...).as_text()``), each placed."""
    funcs: dict[str, list[tuple[str, bool]]] = {}  # function -> [(line, inside a manual region)]
    current, manual_indents = None, []
    for line in text.splitlines():
        m = _FUNC.match(line)
        if m:
            current, manual_indents = m.group(1), []
            funcs[current] = []
            continue
        if current is None:
            continue
        indent = len(line) - len(line.lstrip())
        if manual_indents and indent == manual_indents[-1] and line.lstrip().startswith("}"):
            manual_indents.pop()  # the region's closing line (``} : (...)``) belongs to the outside
        funcs[current].append((line, bool(manual_indents)))
        if "sdy.manual_computation(" in line:
            manual_indents.append(indent)
    # functions reachable from outside any manual region, starting at the public entry points
    entry = [name for name in funcs if re.search(rf"func\.func public @{re.escape(name)}\(", text)]
    outside, todo = set(entry), list(entry)
    while todo:
        f = todo.pop()
        for line, manual in funcs.get(f, []):
            if manual:
                continue
            for callee in _CALL.findall(line):
                if callee in funcs and callee not in outside:
                    outside.add(callee)
                    todo.append(callee)
    out = []
    for f, lines in funcs.items():
        for line, manual in lines:
            for target in KERNEL_TARGETS.findall(line):
                out.append(KernelCall(target, f, manual or f not in outside))
    return out


def kernels_outside_shard_map(text: str) -> list[KernelCall]:
    return [k for k in kernel_calls(text) if not k.inside_shard_map]


@contextlib.contextmanager
def cuda_lowering(cudnn_version: int = 91000) -> Iterator[None]:
    """Let ``jax.nn.dot_product_attention(implementation="cudnn")`` trace on a host without cuDNN."""
    from jax._src.cudnn import fused_attention_stablehlo as fa

    old = fa.check_cudnn_version
    fa.check_cudnn_version = lambda: cudnn_version
    try:
        yield
    finally:
        fa.check_cudnn_version = old
