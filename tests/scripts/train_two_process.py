"""One of two processes: join on 127.0.0.1 and train the tiny flow config together over 8 devices (4 each), on
a mesh whose device order alternates between the processes (as a TPU torus can), so each host holds every other
batch row; the run stops after one step (``stop_after``) and resumes in a second ``train`` call.

Writes WORKDIR/host{pid}.npz (this host's batch rows and its local batches of steps 0 and 1, as its pipeline
loads them) and WORKDIR/summary{pid}.json (the summaries of both calls)."""

import json
import sys

import jax

port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_default_matmul_precision", "highest")
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
from vdot_jax.parallel.distributed import initialize  # noqa: E402

initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
assert jax.device_count() == 8 and jax.local_device_count() == 4

import numpy as np  # noqa: E402

from vdot_jax.data.pipeline import DataPipeline  # noqa: E402
from vdot_jax.train.config import apply_overrides, load_config  # noqa: E402
from vdot_jax.parallel.mesh import make_mesh  # noqa: E402
from vdot_jax.train import loop  # noqa: E402
from vdot_jax.train.loop import build, train  # noqa: E402

config = load_config(sys.argv[4] + ":flow")
apply_overrides(config, sys.argv[5:])
# devices alternate between the processes: process 0 holds batch rows 0, 2, 4, 6 (the mesh a torus can give)
by_process = [[d for d in jax.devices() if d.process_index == p] for p in range(2)]
interleaved = [d for pair in zip(*by_process) for d in pair]
loop.make_run_mesh = lambda c: make_mesh(c.mesh.ici, c.mesh.dcn or None, interleaved)
first = train(config, f"{workdir}/run", stop_after=1)
summary = train(config, f"{workdir}/run")  # resumes at step 1
layout = build(config).layout()
pipe = DataPipeline(config, layout, with_context=True)
batches = [next(pipe)[0] for _ in range(2)]
np.savez(f"{workdir}/host{pid}.npz", rows=np.array(layout.host_rows),
         **{f"{k}{i}": b[k] for i, b in enumerate(batches) for k in b})
json.dump([{k: v for k, v in s.items() if k != "last_metrics"} for s in (first, summary)],
          open(f"{workdir}/summary{pid}.json", "w"))
print("ok", pid)
