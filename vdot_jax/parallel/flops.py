"""Matmul FLOPs of a traced program, loops counted in full: what one execution of a step computes.

XLA's ``cost_analysis()`` counts each loop body once and custom calls (Pallas, cuDNN) as zero, so for our
programs -- layers, micro-batches and sampling steps are all loops -- it reports a fraction of a step.
``matmul_flops`` walks the jaxpr instead: every ``dot_general`` and convolution, a ``scan`` body times its
length, a ``while`` body times ``while_trips`` (the caller's expected trip count: a data-dependent loop's
count is not in the program), a ``cond`` at its most expensive branch, remat recomputation and the backward
pass as they appear. Per device: work outside a ``shard_map`` is global and split evenly over the mesh's
devices; inside one, shapes are already per device. Trace the program with an attention that is plain XLA
(``attention="xla"``) so attention's matmuls are counted; a Pallas or cuDNN kernel counts zero here too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from jax.extend import core


@dataclass(frozen=True)
class Flops:
    global_: float = 0.0  # outside any shard_map: shared by all devices
    local: float = 0.0  # inside a shard_map: already per device

    def __add__(self, o: "Flops") -> "Flops":
        return Flops(self.global_ + o.global_, self.local + o.local)

    def __mul__(self, k: float) -> "Flops":
        return Flops(self.global_ * k, self.local * k)

    def per_device(self, devices: int) -> float:
        return self.global_ / max(devices, 1) + self.local


def _dot_general(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    free = lambda shape, *skip: math.prod(s for d, s in enumerate(shape) if d not in skip[0] + skip[1])  # noqa: E731
    # 2 x batch x contracted x (lhs free) x (rhs free)
    return 2.0 * math.prod(lhs[d] for d in lb) * math.prod(lhs[d] for d in lc) * free(lhs, lc, lb) * free(rhs, rc, rb)


def _conv(eqn) -> float:
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    dn = eqn.params["dimension_numbers"]
    kernel_in = rhs[dn.rhs_spec[1]]  # input features per group
    window = math.prod(rhs[d] for d in dn.rhs_spec[2:])
    return 2.0 * math.prod(out) * kernel_in * window


def _jaxprs(value):
    """The jaxprs held by one equation parameter (a jaxpr, a closed jaxpr, or a tuple of them)."""
    if isinstance(value, core.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, core.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _jaxprs(v)


def matmul_flops(jaxpr, *, while_trips: float = 1.0, _local: bool = False) -> Flops:
    """FLOPs of the matmuls and convolutions of ``jaxpr`` (a ``Jaxpr`` or ``ClosedJaxpr``; e.g.
    ``jitted.trace(*args).jaxpr``), loops multiplied out."""
    if isinstance(jaxpr, core.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    total = Flops()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            f = _dot_general(eqn)
            total += Flops(local=f) if _local else Flops(global_=f)
            continue
        if name == "conv_general_dilated":
            f = _conv(eqn)
            total += Flops(local=f) if _local else Flops(global_=f)
            continue
        local = _local or name == "shard_map"
        sub = lambda j: matmul_flops(j, while_trips=while_trips, _local=local)  # noqa: E731
        if name == "scan":
            total += sub(eqn.params["jaxpr"]) * eqn.params["length"]
        elif name == "while":
            total += (sub(eqn.params["body_jaxpr"]) + sub(eqn.params["cond_jaxpr"])) * while_trips
        elif name == "cond":
            branches = [sub(b) for b in eqn.params["branches"]]
            total += max(branches, key=lambda f: f.global_ + f.local)
        else:  # jit, remat, custom_jvp/vjp, shard_map, ...: their inner jaxprs run once
            for value in eqn.params.values():
                for j in _jaxprs(value):
                    total += sub(j)
    return total
