"""Per-host batch rows on the device layouts of real TPU topologies (libtpu, no TPU needed), simulated per process.

On a TPU slice the mesh's device order follows the physical torus, so the batch rows a host's devices hold are
not a contiguous run (``v5p:4x4x4`` with ``fsdp=16,context=4``: host 0 holds rows [0, 4]). For every process of
each topology: the rows it loads are the rows its devices hold, and its per-device shards, put where the mesh
puts them, are exactly the one-process batch. CPU fake devices have no coordinates and cannot show this."""

import os

import numpy as np
import pytest
from absl import flags

from vdot_jax.data.pipeline import DataPipeline, Layout
from vdot_jax.parallel.distributed import batch_sharding, device_shards, host_rows
from vdot_jax.parallel.mesh import make_mesh, topology_devices
from vdot_jax.train.config import load_config
from vdot_jax.train.loop import build

if os.environ.get("CI"):  # CI installs the test extra, which has libtpu: a missing one must fail, not skip
    import libtpu  # noqa: F401
else:
    libtpu = pytest.importorskip("libtpu", reason="TPU topologies need libtpu (pip install '.[tpu]')")

flags.FLAGS.mark_as_parsed()  # grain reads absl flags
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.py")


def _topology_run(topology, mesh_spec):
    mesh = make_mesh(mesh_spec, None, topology_devices(topology))
    config = load_config(CONFIG + ":flow")
    config.optim.accumulation = 2  # the micro-batch axis is laid out too
    config.data.batch_size = mesh.shape["data"] * mesh.shape["fsdp"]
    return build(config, mesh)


@pytest.mark.parametrize("topology,mesh_spec,host0", [
    ("v5p:4x4x4", "fsdp=16,context=4", (0, 4)),
    ("v5p:4x4x4", "fsdp=-1", (0, 4, 16, 20)),
    ("v5e:8x8", "fsdp=-1", None),
    ("v6e:4x4", "fsdp=-1", None),
    ("v6e:4x4", "fsdp=8,context=2", None),  # a mesh that splits a physical axis
])
def test_every_host_loads_its_devices_rows_and_together_they_are_the_one_process_batch(topology, mesh_spec, host0):
    run = _topology_run(topology, mesh_spec)
    mesh, axes, B = run.mesh, run.batch_axes, run.batch_size
    processes = sorted({d.process_index for d in mesh.devices.flat})
    assert len(processes) == len(mesh.devices.flat) // 4  # four chips per host on these slices
    if host0 is not None:  # what the issue measured on libtpu's layout
        assert host_rows(mesh, axes, B, 0) == host0
    full, _ = next(DataPipeline(run.config, Layout(2, B, tuple(range(B))), with_context=True))
    index = batch_sharding(mesh, axes, 2).devices_indices_map((2, B))
    placed = {k: np.full_like(v, np.nan) for k, v in full.items()}
    seen = set()
    for p in processes:
        rows = host_rows(mesh, axes, B, p)
        local, _ = next(DataPipeline(run.config, Layout(2, B, rows), with_context=True))
        assert all(v.shape[1] == len(rows) for v in local.values())
        for k, v in local.items():  # the rows it loads are those rows of the one-process batch
            np.testing.assert_array_equal(v, full[k][:, list(rows)])
        shards = device_shards(local["latents"], rows, mesh, axes, B, p)
        assert set(shards) == {d for d in mesh.devices.flat if d.process_index == p}
        for d, shard in shards.items():
            np.testing.assert_array_equal(shard, full["latents"][index[d]])
            placed["latents"][index[d]] = shard
            seen.add(d)
    assert len(seen) == mesh.devices.size
    np.testing.assert_array_equal(placed["latents"], full["latents"])


def test_rows_in_any_order_reach_their_devices():
    """A host whose loaded rows come in another order still hands each device its own rows."""
    run = _topology_run("v5p:4x4x4", "fsdp=-1")
    mesh, axes, B = run.mesh, run.batch_axes, run.batch_size
    rows = host_rows(mesh, axes, B, 1)[::-1]
    local = np.arange(B, dtype=np.float32)[None, list(rows)]  # the value of a row is its global index
    for d, shard in device_shards(local, rows, mesh, axes, B, 1).items():
        idx = batch_sharding(mesh, axes, 2).devices_indices_map((1, B))[d][1]
        np.testing.assert_array_equal(shard[0], np.arange(B)[idx])
    with pytest.raises(ValueError, match="holds batch rows"):  # a host that did not load a row it holds
        device_shards(local[:, 1:], rows[1:], mesh, axes, B, 1)
