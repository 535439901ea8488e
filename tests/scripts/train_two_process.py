"""One of two processes: join on 127.0.0.1 and train the tiny flow config together over 8 devices (4 each).

Writes WORKDIR/host{pid}.npz (this host's batch rows and its local batches of steps 0 and 1, as its pipeline
loads them) and WORKDIR/summary{pid}.json."""

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
from vdot_jax.train.loop import build, train  # noqa: E402

config = load_config(sys.argv[4] + ":flow")
apply_overrides(config, sys.argv[5:])
summary = train(config, f"{workdir}/run")
layout = build(config).layout()
pipe = DataPipeline(config, layout, with_context=True)
batches = [next(pipe)[0] for _ in range(2)]
np.savez(f"{workdir}/host{pid}.npz", rows=np.array(layout.host_rows),
         **{f"{k}{i}": b[k] for i, b in enumerate(batches) for k in b})
json.dump({k: v for k, v in summary.items() if k != "last_metrics"}, open(f"{workdir}/summary{pid}.json", "w"))
print("ok", pid)
