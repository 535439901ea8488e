"""Test setup: 8 fake CPU devices (for mesh tests), fast CPU compilation, fp32-exact matmuls."""

import os
import socket
import subprocess
import tempfile
import time

# Tests are dominated by XLA compile time on CPU: the classic (non-fusion-emitter) CPU codegen at LLVM
# optimisation level 0 compiles the training phases ~5x faster, for ~1.6x slower tiny kernels.
FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_together(argvs, envs, *, timeout: float, **popen) -> list[tuple[int, str, str]]:
    """Start the commands at once (the processes of one multi-process run) and wait for all: -> [(returncode,
    stdout, stderr)]. Each writes to its own files, not a pipe: one blocked on a full pipe while its peer is waited
    for would leave the peer waiting in a collective. Past ``timeout`` s all are killed and the test fails with
    their output."""
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in argvs]
    procs = [subprocess.Popen(a, env=e, stdout=o, stderr=r, text=True, **popen)
             for a, e, (o, r) in zip(argvs, envs, files)]
    deadline, late = time.time() + timeout, False
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
        late = True
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    out = []
    for p, (o, r) in zip(procs, files):
        o.seek(0), r.seek(0)
        out.append((p.returncode, o.read(), r.read()))
        o.close(), r.close()
    if late:
        pytest.fail(f"the {len(procs)} processes did not all finish within {timeout} s:\n"
                    + "\n".join((o + e)[-3000:] for _, o, e in out))
    return out


# The longest tests (from `--durations`, ~30-200 s each on 2 cores), in groups that share a module fixture. With
# `-n 2 --dist worksteal` (pytest.ini) each worker starts from one half of the collection, so alternate groups are
# placed at the head of each half: both workers start on long tests and finish on short ones (a long test left to
# the end kept one worker busy alone for minutes).
HEAVY = (
    ("test_quick_demo_writes_a_complete_report",),
    ("test_checkpoint_from_8_devices_restores",),
    ("test_sigkill_mid_run_then_restart",),
    ("test_tiny_run_of_all_phases", "test_ablations_share_the_compiled_phases",
     "test_non_finite_loss_skips_the_update"),
    ("test_a_manifest_with_a_corrupt_and_a_missing_video",),
    ("test_sigterm_saves_and_exits_zero", "test_sigterm_inside_a_phase"),
    ("test_two_processes_train_on_per_host_shards",),
    ("test_eval_generates_scores_and_resumes",),
    ("test_precompute_command_then_a_run",),
    ("test_teacher_from_a_flow_workdir",),
    ("test_two_processes_match_one",),
    ("test_local_script_really_trains",),
    ("test_tpu_stop_reaches_the_trainer", "test_tpu_run_recreates_a_preempted_slice"),
)


def _heavy_group(item) -> int:
    return next((g for g, names in enumerate(HEAVY) if item.name.startswith(names)), len(HEAVY))


def pytest_collection_modifyitems(config, items):
    groups = [[] for _ in HEAVY]
    light = []
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(pytest.mark.timeout(0))
        g = _heavy_group(item)
        (light if g == len(HEAVY) else groups[g]).append(item)
    first = [it for g in groups[0::2] for it in g]
    second = [it for g in groups[1::2] for it in g]
    cut = max(len(items) // 2 - len(first), 0)
    items[:] = first + light[:cut] + second + light[cut:]


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules running tiny torch models (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``): they
    are op-overhead bound, and on shared cores extra threads make them ~10x slower. Restored after."""
    import torch  # only where a module asks for it: most tests never import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
