"""Bytes a compiled program moves per execution, read from its optimized HLO text (``compiled.as_text()``).

``collective_bytes``: every all-gather, reduce-scatter, all-reduce, all-to-all and collective-permute (the plain
op or the ``-start`` of an async pair), each counted at its per-device payload -- the larger of its result and
its operands (an all-gather's gathered result, a reduce-scatter's full input) -- times the number of times the
computation holding it runs: a ``while`` body times its trip count (XLA's ``known_trip_count`` where present,
else the loop condition's ``counter < N`` with the counter's constant start), called and fused computations
as often as their caller. A loop whose count is not a constant (the rollout's random exit) counts once and is
reported in ``unknown_loops``.

``host_transfer_bytes``: the same count for copies between host memory (TPU memory space ``S(5)``) and the
device: an instruction whose result is in host memory and an operand is not (or the reverse), at the size of the
device side, loops multiplied out -- what offloaded activations and host-resident state cost on the host link.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
HOST_SPACE = "S(5)"  # TPU host memory space in a layout

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\](\{[^}]*\})?")
_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([\w\-]+)\((.*)$")
_CALLS = re.compile(r"\b(condition|body|calls|to_apply|branch_computations|true_computation|false_computation)="
                    r"(\{[^}]*\}|%?[\w.\-]+)")


@dataclass
class Instr:
    name: str
    shape: str  # the result shape text (may be a tuple)
    op: str
    operands: list[str]
    args: str  # the operand text (a constant's value)
    rest: str  # attributes after the operand list


@dataclass
class HloCost:
    collective_bytes: float = 0.0
    host_transfer_bytes: float = 0.0
    by_op: dict | None = None  # collective op -> bytes
    unknown_loops: int = 0


def _dtype_size(dt: str) -> float:
    return 1 if dt.startswith(("f8", "s8", "u8")) else _DTYPE_BYTES.get(dt, 0)


def array_bytes(shape: str, host: bool | None = None, scalars: bool = True) -> float:
    """Bytes of every array in a shape text (``bf16[8,256]{1,0}`` or a tuple of them); ``host`` True/False keeps
    only arrays in / not in host memory; ``scalars=False`` leaves out rank-0 arrays (indices)."""
    total = 0.0
    for dt, dims, layout in _ARRAY.findall(shape):
        if (host is not None and (HOST_SPACE in (layout or "")) != host) or (not scalars and not dims):
            continue
        n = 1
        for d in (x for x in dims.split(",") if x):
            n *= int(d)
        total += n * _dtype_size(dt)
    return total


def _split_operands(text: str) -> tuple[str, str]:
    """``a, b), attr=...`` -> (operand text, attribute text after the closing parenthesis)."""
    depth, i = 1, 0
    while i < len(text) and depth:
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        i += 1
    return text[:i - 1], text[i:]


def parse(text: str) -> tuple[dict[str, list[Instr]], str]:
    """{computation: instructions} of an HLO module and the entry computation's name."""
    comps: dict[str, list[Instr]] = {}
    entry, current = "", None
    for line in text.splitlines():
        if current is None:
            m = _COMP.match(line)
            if m and not line.startswith("HloModule"):
                current = m.group(1)
                comps[current] = []
                if line.startswith("ENTRY"):
                    entry = current
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            args, rest = _split_operands(m.group(4))
            comps[current].append(Instr(m.group(1), m.group(2), m.group(3), re.findall(r"%([\w.\-]+)", args),
                                        args, rest))
    return comps, entry


def _constant(i: Instr | None) -> int | None:
    m = re.fullmatch(r"\s*(-?\d+)\s*", i.args) if i is not None and i.op == "constant" else None
    return int(m.group(1)) if m else None


def _trip_count(w: Instr, names: dict[str, Instr], comps: dict[str, list[Instr]]) -> int | None:
    """A while loop's trip count: XLA's ``known_trip_count``, else ``counter < N`` from a constant start."""
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', w.rest)
    if m:
        return int(m.group(1))
    cond = re.search(r"condition=%?([\w.\-]+)", w.rest)
    if not cond or cond.group(1) not in comps:
        return None
    body = {i.name: i for i in comps[cond.group(1)]}
    cmp = next((i for i in reversed(comps[cond.group(1)]) if i.op == "compare"), None)
    if cmp is None or "direction=LT" not in cmp.rest or len(cmp.operands) != 2:
        return None
    counter, limit = (body.get(o) for o in cmp.operands)
    idx = re.search(r"index=(\d+)", counter.rest) if counter is not None and counter.op == "get-tuple-element" else None
    init = names.get(w.operands[0]) if w.operands else None
    if _constant(limit) is None or idx is None or init is None or init.op != "tuple":
        return None
    k = int(idx.group(1))
    start = names.get(init.operands[k]) if k < len(init.operands) else None
    while start is not None and start.op in ("copy", "bitcast", "convert") and start.operands:
        start = names.get(start.operands[0])
    s = _constant(start)
    return None if s is None else max(_constant(limit) - s, 0)


def _multipliers(comps: dict[str, list[Instr]], entry: str) -> tuple[dict[str, float], int]:
    """How many times each computation runs per execution of the entry computation."""
    mult, unknown, order = {entry: 1.0}, 0, [entry]
    for name in order:  # grows as callees are found; callers come before callees (HLO has no recursion)
        names = {i.name: i for i in comps.get(name, [])}
        for ins in comps.get(name, []):
            trips = 1
            if ins.op == "while":
                t = _trip_count(ins, names, comps)
                unknown += t is None
                trips = 1 if t is None else t
            for key, val in _CALLS.findall(ins.rest):
                for callee in re.findall(r"%?([\w.\-]+)", val.strip("{}")):
                    if callee not in comps:
                        continue
                    times = {"body": trips, "condition": trips + 1}.get(key, 1) if ins.op == "while" else 1
                    mult[callee] = mult.get(callee, 0.0) + mult[name] * times
                    if callee not in order:
                        order.append(callee)
    return mult, unknown


_NO_TRANSFER = ("while", "conditional", "call", "tuple", "get-tuple-element", "parameter", "bitcast", "async-start",
                "async-update", "async-done", "constant")


def _async_result(shape: str) -> str:
    """What an async ``-start`` writes: ``((operands), result, context)`` or, for copy-start,
    ``(destination, source, context)``."""
    if shape.startswith("(("):
        depth = 0
        for k, ch in enumerate(shape[1:], 1):
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                shape = shape[k + 1:]
                break
    m = _ARRAY.search(shape)
    return m.group(0) if m else ""


def hlo_cost(text: str) -> HloCost:
    """Collective and host-transfer bytes per execution of the compiled module ``text`` (per device)."""
    comps, entry = parse(text)
    out = HloCost(by_op={op: 0.0 for op in COLLECTIVES})
    if not entry:
        return out
    mult, out.unknown_loops = _multipliers(comps, entry)
    for name, instrs in comps.items():
        m = mult.get(name, 0.0)
        if not m:
            continue
        shapes = {i.name: i.shape for i in instrs}
        for i in instrs:
            base = i.op[:-len("-start")] if i.op.endswith("-start") else i.op
            if base in COLLECTIVES:
                parts = [array_bytes(a.group(0)) for a in _ARRAY.finditer(i.shape)]
                payload = max(parts + [array_bytes(shapes.get(o, "")) for o in i.operands] + [0.0])
                out.by_op[base] += payload * m
                out.collective_bytes += payload * m
            elif not (i.op.endswith("-done") or i.op in _NO_TRANSFER):
                result = _async_result(i.shape) if i.op.endswith("-start") else i.shape
                ops = [shapes.get(o, "") for o in i.operands]
                if array_bytes(result, host=True):  # written to host memory: its device operands went there
                    sent = sum(array_bytes(s, host=False, scalars=False) for s in ops)  # not the indices
                    moved = min(array_bytes(result, host=True), sent)
                else:  # read from host memory into a device result
                    moved = min(sum(array_bytes(s, host=True) for s in ops), array_bytes(result, host=False))
                out.host_transfer_bytes += moved * m
    return out
