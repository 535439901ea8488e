"""The device mesh: axes ``data, fsdp, context, tensor``, per-slice (ICI) and across-slice (DCN) shapes.

Shapes are written ``"fsdp=4,context=2"`` (CLI) or as dicts (config). One axis may be ``-1`` and takes
what is left; when none is ``-1`` and ``data`` is not given, ``data`` takes what is left. Axis types are
``Auto`` explicitly (``jax.make_mesh`` defaults to Explicit), so sharding is propagated by the compiler
from parameter shardings and the activation constraints in the models.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

from vdot_jax.errors import VdotError

AXES = ("data", "fsdp", "context", "tensor")


class MeshError(VdotError, ValueError):
    """A mesh or topology the user named that cannot be built (the message says why)."""


def parse_axes(spec: str | Mapping[str, int] | None) -> dict[str, int]:
    """``"fsdp=4,context=2"`` or a mapping -> {axis: size}, validated."""
    if spec is None or spec == "":
        return {}
    if isinstance(spec, Mapping):
        items = {str(k): int(v) for k, v in spec.items()}
    else:
        items = {}
        for part in str(spec).split(","):
            name, sep, size = part.strip().partition("=")
            if not sep:
                raise MeshError(f"mesh entry {part!r} is not of the form axis=size (e.g. fsdp=4,context=2)")
            try:
                items[name.strip()] = int(size)
            except ValueError:  # int() of the size
                raise MeshError(f"mesh size {size!r} for axis {name!r} is not an integer") from None
    unknown = sorted(set(items) - set(AXES))
    if unknown:
        raise MeshError(f"unknown mesh axes {unknown}; the axes are {list(AXES)}")
    if any(v == 0 or v < -1 for v in items.values()):
        raise MeshError(f"mesh sizes must be positive or -1, got {items}")
    return items


def resolve_shape(spec: Mapping[str, int], n: int, what: str = "devices") -> tuple[int, ...]:
    """Sizes of all four axes, multiplying to ``n``."""
    sizes = {a: spec.get(a, 1) for a in AXES}
    free = [a for a, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {free}")
    if not free and "data" not in spec:
        sizes["data"], free = -1, ["data"]
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if free:
        if n % fixed:
            raise MeshError(f"mesh {dict(spec)} does not divide the {n} {what}")
        sizes[free[0]] = n // fixed
    elif fixed != n:
        raise MeshError(f"mesh {dict(spec)} uses {fixed} {what} but there are {n}")
    return tuple(sizes[a] for a in AXES)


def make_mesh(
    ici: str | Mapping[str, int] | None = None,
    dcn: str | Mapping[str, int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh over ``devices`` (default all) with axes ``AXES``; DCN axes span slices (granules)."""
    devices = list(devices if devices is not None else jax.devices())
    dcn_spec = parse_axes(dcn)
    types = (AxisType.Auto,) * len(AXES)
    if not dcn_spec or all(v == 1 for v in dcn_spec.values()):
        shape = resolve_shape(parse_axes(ici), len(devices))
        return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)
    from jax.experimental import mesh_utils

    slices = len({getattr(d, "slice_index", 0) for d in devices})
    dcn_shape = resolve_shape(dcn_spec, slices, what="slices")
    ici_shape = resolve_shape(parse_axes(ici), len(devices) // slices)
    arr = mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices)
    return Mesh(arr, AXES, axis_types=types)


def current_mesh_shape() -> dict[str, int]:
    """{axis: size} of the mesh set with ``jax.set_mesh``; empty without one."""
    mesh = jax.sharding.get_abstract_mesh()
    return dict(mesh.shape) if mesh is not None and not mesh.empty else {}


def describe(mesh: Mesh) -> str:
    return ", ".join(f"{a}={s}" for a, s in mesh.shape.items()) + f" ({np.prod(list(mesh.shape.values()))} devices)"


# HBM per chip, by the device kind libtpu reports (public TPU specs).
TPU_HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5e": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32,
               "TPU v6e": 32}


def topology_devices(name: str) -> list:
    """The devices of a TPU topology (e.g. ``v5e:2x2``, ``v5p:4x4x4``) for ahead-of-time compilation on a host
    without TPUs (needs libtpu: ``pip install .[tpu]``; run with ``JAX_PLATFORMS=cpu``)."""
    import os

    # compiling needs no TPU, so several processes on one host may load libtpu at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise MeshError(f"compiling for TPU topology {name!r} needs libtpu: pip install 'vdot-jax[tpu]'") from None
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as e:  # noqa: BLE001 -- libtpu's message names the problem
        raise MeshError(f"unknown TPU topology {name!r} (expected e.g. v5e:2x2, v5p:4x4x4, v6e:8x8): "
                         f"{str(e).splitlines()[0][:200]}") from None


def hbm_bytes(device) -> int | None:
    """HBM of one TPU chip, or None when unknown."""
    kind = getattr(device, "device_kind", "")
    gib = TPU_HBM_GIB.get(kind)
    return None if gib is None else gib * 2**30
