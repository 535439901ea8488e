"""One of two processes: join on 127.0.0.1, run a sharded VACE forward over 8 devices, save the output.

VACE's zero-initialised projections are drawn at random, so that the hints (and their sharding) matter.
Process 0 also runs the same forward on one device (no mesh) for the comparison, and once with the hints
scaled to zero (nohints.npy), to show that they change the output."""

import sys

import jax

port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_default_matmul_precision", "highest")
from vdot_jax.parallel.distributed import initialize  # noqa: E402

initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
assert jax.device_count() == 8 and jax.local_device_count() == 4

import dataclasses  # noqa: E402

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1]))
from oracles import TINY_VACE  # noqa: E402
from vdot_jax.models.wan import WanModel  # noqa: E402
from vdot_jax.parallel.logical import activate  # noqa: E402
from vdot_jax.parallel.mesh import make_mesh  # noqa: E402
from vdot_jax.parallel.sharding import init_sharded  # noqa: E402
from vdot_jax.train.loop import _draw_vace_projections  # noqa: E402

cfg = dataclasses.replace(TINY_VACE, dim=64, num_heads=4)
data = np.load(f"{workdir}/inputs.npz")
args = [data[f"arr_{i}"] for i in range(4)]
mesh = make_mesh("data=2,context=2,tensor=2")
model = init_sharded(lambda: WanModel(cfg, rngs=nnx.Rngs(7)), mesh).set_runtime(attention="ulysses:xla")
_draw_vace_projections(model, 7)
with activate(mesh):
    out = jax.jit(lambda m, *a: m(*a))(model, *args)
out = multihost_utils.process_allgather(out, tiled=True)
np.save(f"{workdir}/out{pid}.npy", np.asarray(out))
if pid == 0:
    with jax.default_device(jax.local_devices()[0]):
        local = WanModel(cfg, rngs=nnx.Rngs(7))
        _draw_vace_projections(local, 7)
        forward = jax.jit(lambda m, *a, scale: m(*a, vace_scale=scale))
        np.save(f"{workdir}/single.npy", np.asarray(forward(local, *args, scale=1.0)))
        np.save(f"{workdir}/nohints.npy", np.asarray(forward(local, *args, scale=0.0)))
print("ok", pid)
