"""Peak figures of the accelerators ``vdot plan`` targets, and the step-time lower bound they give.

Sources (docs/scaling.md, "Predicted step time"): Cloud TPU docs' system-architecture pages for v4, v5e, v5p
and v6e (peak bf16 compute, HBM bandwidth, bidirectional ICI bandwidth per chip; v4's ICI, not on its Cloud
page, is the figure usually quoted from the TPU v4 paper, unverified); the NVIDIA H100 SXM datasheet (dense bf16,
HBM3, NVLink). The host link is the chip's PCIe link one way: Gen4 x16 (32 GB/s) for v4/v5e/v5p, Gen5 x16 (64 GB/s) for v6e (its
Cloud page names PCIe Gen5) and H100 -- an assumption of the link's nominal rate, not a measured transfer rate.

A prediction, not a measurement: each part is the time the chip would need if it did nothing else at its peak.
The step cannot be faster than the largest part (the bound); real steps are slower (overlap is imperfect, the
MXUs do not run at peak, and the HBM part counts only what a step must read and write at least once).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vdot_jax.errors import VdotError


@dataclass(frozen=True)
class Chip:
    name: str
    flops: float  # peak dense bf16 FLOP/s
    hbm: float  # HBM bytes/s
    ici: float  # chip-to-chip bytes/s (bidirectional, per chip)
    host: float  # host link bytes/s, one way


CHIPS = {
    "v4": Chip("TPU v4", 275e12, 1200e9, 300e9, 32e9),
    "v5e": Chip("TPU v5e", 197e12, 819e9, 400e9, 32e9),
    "v5p": Chip("TPU v5p", 459e12, 2765e9, 1200e9, 32e9),
    "v6e": Chip("TPU v6e", 918e12, 1638e9, 800e9, 64e9),
    "h100": Chip("H100 SXM", 989e12, 3350e9, 900e9, 64e9),
}
# libtpu's device_kind -> CHIPS key
_KINDS = {"TPU v4": "v4", "TPU v5 lite": "v5e", "TPU v5e": "v5e", "TPU v5": "v5p", "TPU v5p": "v5p",
          "TPU v6 lite": "v6e", "TPU v6e": "v6e"}


def chip_of(topology: str, device=None) -> Chip | None:
    """The chip of a ``vdot plan --topology`` (``v5p:2x2x1``, ``h100:8``), by libtpu's device kind when given."""
    kind = _KINDS.get(getattr(device, "device_kind", ""))
    if kind is None:
        kind = topology.split(":")[0].lower()
    return CHIPS.get(kind)


# Cloud TPU accelerator types (gcloud's --accelerator-type): the number counts TensorCores, which are two per chip
# on v4 and v5p (one JAX device per chip: megacore) and one on v5e and v6e. So v5p-16 is 8 chips (2 hosts of 4),
# v4-32 16 chips, v5litepod-8 and v6e-8 8 chips. Cloud TPU docs: cloud.google.com/tpu/docs/v5p (topology 2x2x1:
# 8 cores, 4 chips, 1 host; 2x2x2: 16, 8, 2), /v4, /v5e ("v$VERSION_NUMBER-$CHIP_COUNT"; each chip one
# TensorCore), /v6e (v6e-8: 8 chips, one TensorCore each).
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}


def accelerator_chips(accelerator: str) -> int:
    """Chips (= JAX devices) of a Cloud TPU accelerator type such as ``v5p-16`` (8); a name it does not know is
    refused in one sentence rather than guessed."""
    m = re.fullmatch(r"(v\w+?)-(\d+)", accelerator)
    cores = CORES_PER_CHIP.get(m.group(1)) if m else None
    if cores is None or int(m.group(2)) < cores or int(m.group(2)) % cores:
        raise VdotError(f"unknown TPU accelerator type {accelerator!r}: the chip count is known for v4-N and v5p-N "
                        "(N TensorCores, N/2 chips; N even) and v5litepod-N and v6e-N (N chips)")
    return int(m.group(2)) // cores


def accelerator_type(like: str, chips: int) -> str:
    """The accelerator type of ``like``'s generation with ``chips`` chips (``v5p-32``, 8 -> ``v5p-16``)."""
    kind = like.rsplit("-", 1)[0]
    return f"{kind}-{chips * CORES_PER_CHIP[kind]}"


@dataclass(frozen=True)
class Bound:
    """Seconds per execution, per part; ``seconds`` is their maximum and ``limit`` names it."""
    compute: float
    hbm: float
    ici: float
    host: float

    @property
    def seconds(self) -> float:
        return max(self.compute, self.hbm, self.ici, self.host)

    @property
    def limit(self) -> str:
        parts = {"compute": self.compute, "HBM": self.hbm, "ICI": self.ici, "host": self.host}
        return max(parts, key=parts.get)


def step_bound(chip: Chip, *, flops: float, hbm_bytes: float, ici_bytes: float, host_bytes: float) -> Bound:
    """The lower bound on one execution's time, per chip: FLOPs at peak, HBM bytes, collective bytes over ICI,
    host transfers over the host link."""
    return Bound(flops / chip.flops, hbm_bytes / chip.hbm, ici_bytes / chip.ici, host_bytes / chip.host)
