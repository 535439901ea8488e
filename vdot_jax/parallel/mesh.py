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


def _fixed(spec: Mapping[str, int]) -> tuple[dict[str, int], str | None, int]:
    """(sizes of all four axes, the axis that takes what is left or None, the product of the others)."""
    sizes = {a: spec.get(a, 1) for a in AXES}
    free = [a for a, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise MeshError(f"only one mesh axis may be -1, got {free}")
    if not free and "data" not in spec:
        sizes["data"], free = -1, ["data"]
    return sizes, (free or [None])[0], math.prod(v for v in sizes.values() if v != -1)


def resolve_shape(spec: Mapping[str, int], n: int, what: str = "devices") -> tuple[int, ...]:
    """Sizes of all four axes, multiplying to ``n``."""
    sizes, free, fixed = _fixed(spec)
    if free:
        if n % fixed:
            raise MeshError(f"mesh {dict(spec)} does not divide the {n} {what}")
        sizes[free] = n // fixed
    elif fixed != n:
        raise MeshError(f"mesh {dict(spec)} uses {fixed} {what} but there are {n}")
    return tuple(sizes[a] for a in AXES)


def check_accelerator(ici: str | Mapping[str, int] | None, dcn: str | Mapping[str, int] | None, accelerator: str,
                      source: str = "the config") -> str:
    """Whether ``vdot train`` can lay the mesh ``ici`` (and ``dcn``) on the chips of one slice of ``accelerator``
    (``v5p-16``) by the rule of ``resolve_shape``, checked before renting it. Returns a line naming the mesh it gets;
    raises ``MeshError`` otherwise: one sentence with both chip counts and the slice to rent."""
    from vdot_jax.parallel.chips import accelerator_chips, accelerator_type

    chips = accelerator_chips(accelerator)
    spec = parse_axes(ici)
    shown = ",".join(f"{a}={v}" for a, v in spec.items()) or "(empty: data takes every chip)"
    slices = _fixed(parse_axes(dcn) or {"data": 1})[2]
    if slices > 1:
        raise MeshError(f"{source}'s mesh.dcn {dcn} spans {slices} slices, but one {accelerator} is one slice: "
                        "drop mesh.dcn to train on it")
    _, free, fixed = _fixed(spec)
    if free and chips % fixed:
        need = f"needs a multiple of {fixed} chips"
    elif not free and fixed != chips:
        need = f"uses {fixed} chips"
    else:
        shape = resolve_shape(spec, chips)
        return f"{source}'s mesh {shown} on {accelerator}'s {chips} chips: {_spec_str(shape)}"
    raise MeshError(f"{source}'s mesh {shown} {need}, but {accelerator} has {chips}: rent "
                    f"{accelerator_type(accelerator, fixed)} or change mesh.ici")


def make_mesh(
    ici: str | Mapping[str, int] | None = None,
    dcn: str | Mapping[str, int] | None = None,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """A mesh over ``devices`` (default all) with axes ``AXES``; DCN axes span slices (granules).

    On a TPU slice each axis is laid on whole physical (ICI) axes when it can be (``jax.make_mesh``); otherwise
    on parts of them (jax's ``allow_split_physical_axes``, as MaxText does; ``split_axes`` says which). A shape
    that cannot be laid out even so is refused in one line listing shapes that can."""
    devices = list(devices if devices is not None else jax.devices())
    dcn_spec = parse_axes(dcn)
    ici_spec = parse_axes(ici)
    types = (AxisType.Auto,) * len(AXES)
    from jax.experimental import mesh_utils

    one_slice = not dcn_spec or all(v == 1 for v in dcn_spec.values())
    if one_slice:
        shape = resolve_shape(ici_spec, len(devices))
        build = lambda s, split: mesh_utils.create_device_mesh(s, devices, allow_split_physical_axes=split)
    else:
        slices = len({getattr(d, "slice_index", 0) for d in devices})
        dcn_shape = resolve_shape(dcn_spec, slices, what="slices")
        shape = resolve_shape(ici_spec, len(devices) // slices)
        build = lambda s, split: mesh_utils.create_hybrid_device_mesh(s, dcn_shape, devices,
                                                                       allow_split_physical_axes=split)
    try:
        if one_slice:
            return jax.make_mesh(shape, AXES, axis_types=types, devices=devices)  # jax's own choice first
        return Mesh(build(shape, False), AXES, axis_types=types)
    except NotImplementedError:  # no whole physical axes of these sizes: split some (less ICI bandwidth)
        pass
    except AssertionError as e:  # jax's checks that the devices are one per chip and a block of the torus
        if "megacore" in str(e):
            raise MeshError(str(e).splitlines()[0][:200]) from None
        raise MeshError(f"the {len(devices)} TPU devices do not form a whole slice or a block of it, so no mesh "
                        "can be laid on them (does config.mesh.num_devices take part of the slice?)") from None
    try:
        return Mesh(build(shape, True), AXES, axis_types=types)
    except NotImplementedError:
        pass
    named = [a for a in AXES if a in ici_spec] or ["fsdp"]
    works = []
    for sizes in _factorizations(int(np.prod(shape)), len(named)):
        try:
            build(tuple(dict(zip(named, sizes)).get(a, 1) for a in AXES), True)
            works.append(",".join(f"{a}={s}" for a, s in zip(named, sizes)))
        except NotImplementedError:
            continue
    raise MeshError(f"mesh {_spec_str(shape)} cannot be laid out on the physical axes of these {len(devices)} "
                    f"devices; shapes that can: {'; '.join(works) or 'none with these axes'}")


def _spec_str(shape) -> str:
    return ",".join(f"{a}={s}" for a, s in zip(AXES, shape) if s > 1) or "data=1"


def _factorizations(n: int, k: int):
    """Every way to write n as an ordered product of k positive integers."""
    if k == 1:
        yield (n,)
        return
    for d in range(1, n + 1):
        if n % d == 0:
            for rest in _factorizations(n // d, k - 1):
                yield (d, *rest)


def split_axes(mesh: Mesh) -> dict[str, str]:
    """{mesh axis: how it sits on the physical torus} for each axis laid on part of a physical axis (empty when
    every axis of size > 1 uses whole physical axes, or the devices have no coordinates, e.g. CPU).

    A split axis's collectives run over a sub-ring of a physical ring (no wraparound link of its own) and share
    that ring's links with the other axis laid on it: less ICI bandwidth than an axis on whole physical axes."""
    devs = mesh.devices
    coords = [getattr(d, "coords", None) for d in devs.flat]
    if any(c is None for c in coords) or len({getattr(d, "slice_index", 0) for d in devs.flat}) > 1:
        return {}
    full = [len({c[i] for c in coords}) for i in range(len(coords[0]))]
    out = {}
    for k, name in enumerate(mesh.axis_names):
        if devs.shape[k] == 1:
            continue
        line = np.moveaxis(devs, k, 0).reshape(devs.shape[k], -1)[:, 0]  # the devices along this axis
        used = [len({d.coords[i] for d in line}) for i in range(len(full))]
        parts = [f"{u} of {f}" for u, f in zip(used, full) if 1 < u < f]
        if parts:
            dims = ", ".join(f"{u} of the {f} chips of physical axis {'xyz'[i]}" for i, (u, f) in
                             enumerate(zip(used, full)) if u > 1)
            out[name] = f"{name}={devs.shape[k]} runs on {dims}"
    return out


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
