"""`vdot train ARGS...` (the real CLI) that sends itself SIGTERM while its N-th phase runs (1-based, counted over
the whole run): the stop flag is set inside that phase, so the loop must stop at the phase boundary after it.

    python tests/scripts/sigterm_in_phase.py N train --config ... --workdir ...
"""

import os
import signal
import sys

from vdot_jax import cli
from vdot_jax.train import loop

target, calls = int(sys.argv[1]), [0]
real = loop.Phases.__call__


def phase_with_signal(self, name, state, batch):
    calls[0] += 1
    if calls[0] == target:
        print(f"sending SIGTERM in phase {name} (phase call {target})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs now; the phase below still runs whole
    return real(self, name, state, batch)


loop.Phases.__call__ = phase_with_signal
sys.exit(cli.main(sys.argv[2:]))
