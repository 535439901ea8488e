"""launch/: each script's --dry-run prints the commands it would issue (gcloud / sbatch / srun / vdot train), all
three start the same `vdot train` command as a local run, the scripts are shellcheck-clean, and local_gpu.sh
really starts a (CPU, tiny) training run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = ("local_gpu.sh", "slurm_gpu.sbatch", "tpu_pod.sh")
TRAIN = ["--config", "configs/tiny.py", "--workdir", "/shared/runs/x", "--stop-after", "3"]
OVERRIDES = ["--", "--config.train.steps=5", "--config.optim.generator_lr=2e-6"]
EXPECTED_TRAIN = ("vdot train --config configs/tiny.py --workdir /shared/runs/x --stop-after 3 "
                  "--config.train.steps=5 --config.optim.generator_lr=2e-6")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(extra)
    return env


def _run(script: str, *args: str, env: dict | None = None, check: bool = True,
         timeout: float = 60) -> subprocess.CompletedProcess:
    p = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, cwd=ROOT,
                       env=env or _clean_env(), timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def _commands(out: str) -> list[str]:
    return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def _train_line(command: str) -> str:
    m = re.search(r"vdot train .*?(?=( >|'$| $|$))", command)
    assert m, command
    return m.group(0).strip()


def test_local_dry_run():
    out = _run("local_gpu.sh", "--dry-run", "--gpus", "0,1", "--venv", "/opt/venv", *TRAIN, *OVERRIDES).stdout
    cmds = _commands(out)
    assert cmds[0] == "source /opt/venv/bin/activate"
    assert cmds[1].startswith("env XLA_PYTHON_CLIENT_MEM_FRACTION=0.92 CUDA_VISIBLE_DEVICES=0,1 vdot train")
    assert _train_line(cmds[1]) == EXPECTED_TRAIN


def test_slurm_dry_run_submits_itself_and_runs_one_process_per_node():
    out = _run("slurm_gpu.sbatch", "--dry-run", "--nodes", "4", "--gpus-per-node", "8", "--time", "2:00:00",
               "--partition", "gpu", *TRAIN, *OVERRIDES).stdout
    sbatch, srun = _commands(out)
    assert sbatch.startswith("sbatch --nodes=4 --gpus-per-node=8 --time=2:00:00 --partition=gpu ")
    assert "launch/slurm_gpu.sbatch --nodes 4" in sbatch and "--dry-run" not in sbatch  # the job itself runs
    assert srun.startswith("srun --nodes=4 --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c ")
    assert "VDOT_COORDINATOR=node001:20000 VDOT_NUM_PROCESSES=4" in srun
    assert "export VDOT_PROCESS_ID=$SLURM_PROCID" in srun
    assert _train_line(srun) == EXPECTED_TRAIN


def test_slurm_inside_a_job_reads_the_allocation():
    env = _clean_env(SLURM_JOB_ID="1234", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[007-008],cpu1",
                     SLURM_GPUS_ON_NODE="8")
    per_node = _commands(_run("slurm_gpu.sbatch", "--dry-run", *TRAIN, *OVERRIDES, env=env).stdout)
    assert len(per_node) == 1 and per_node[0].startswith("srun --nodes=2 --ntasks-per-node=1 ")
    assert "VDOT_COORDINATOR=gpu007:21234 VDOT_NUM_PROCESSES=2" in per_node[0]  # first node, port from the job id
    per_gpu = _commands(_run("slurm_gpu.sbatch", "--dry-run", "--per-gpu", *TRAIN, *OVERRIDES, env=env).stdout)
    assert per_gpu[0].startswith("srun --nodes=2 --ntasks-per-node=8 ")
    assert "VDOT_COORDINATOR" not in per_gpu[0]  # JAX reads SLURM's environment itself
    assert _train_line(per_node[0]) == _train_line(per_gpu[0]) == EXPECTED_TRAIN


def _pins() -> dict:
    lines = (LAUNCH / "tpu-pins.txt").read_text().splitlines()
    return dict(line.split("==") for line in lines if line and not line.startswith("#"))


def test_tpu_dry_run_creates_installs_trains_streams_and_tears_down():
    out = _run("tpu_pod.sh", "run", "--dry-run", "--name", "vdot-pod", "--zone", "us-east5-a", "--accelerator",
               "v5p-64", "--spot", "--project", "proj", "--teardown", *TRAIN[:2], "--workdir", "gs://b/runs/x",
               *TRAIN[4:], *OVERRIDES)
    cmds = [c.replace("'\\''", "'") for c in _commands(out.stdout)]
    where = "--zone=us-east5-a --project=proj"
    # checked before renting: the mesh (tiny's: none, so data takes all) uses v5p-64's 32 chips
    assert "tpu_pod.sh: checked: configs/tiny.py's mesh (empty: data takes every chip) on v5p-64's 32 chips: " \
        "data=32" in out.stderr
    assert cmds[0] == (f"gcloud compute tpus tpu-vm create vdot-pod {where} --accelerator-type=v5p-64 "
                       "--version=v2-alpha-tpuv5 --spot")  # the runtime Google lists for v5p
    # code only: an explicit list of what is shipped (a models/ or data/ folder in the checkout stays here)
    assert cmds[1].startswith("tar ") and cmds[1].endswith(f"-C {ROOT} setup.py requirements.txt README.md "
                                                           "vdot_jax configs launch")
    assert cmds[2].startswith("gcloud compute tpus tpu-vm scp ") and cmds[2].endswith("--worker=all")
    install = cmds[3]
    assert install.startswith(f"gcloud compute tpus tpu-vm ssh vdot-pod {where} --worker=all ")
    pins = _pins()
    assert pins["jax"] == "0.10.2" and pins["libtpu"] == "0.0.42.*"
    # Python 3.11 from uv (the TPU images have 3.10), then jax and libtpu exactly as pinned, and the gcs extra
    assert "uv venv -q --python 3.11 $HOME/vdot-venv" in install
    assert (f"uv pip install -q --python $HOME/vdot-venv/bin/python 'jax[tpu]=={pins['jax']}' "
            f"'libtpu=={pins['libtpu']}' -e \"$HOME/vdot-jax[tpu,gcs]\"") in install
    train = cmds[4]
    assert train.startswith(f"gcloud compute tpus tpu-vm ssh vdot-pod {where} --worker=all ")
    assert "VDOT_COORDINATOR=WORKER0_IP:8476 VDOT_NUM_PROCESSES=NUM_WORKERS" in train
    assert "agent-worker-number" in train
    assert "JAX_COMPILATION_CACHE_DIR=gs://b/vdot-xla-cache" in train  # on the bucket by default
    assert _train_line(train) == EXPECTED_TRAIN.replace("/shared/runs/x", "gs://b/runs/x")
    # PID: only `nohup vdot train ...` is backgrounded (its $! is the trainer, which nohup and the script exec
    # into), not the `cd && source && export` chain, whose $! would be a wrapper shell
    setup, started = train.split(" || exit 1; ", 1)
    assert setup.endswith("JAX_COMPILATION_CACHE_DIR=gs://b/vdot-xla-cache") and "nohup" not in setup
    assert re.search(r"; nohup vdot train [^;&|]*> \$HOME/vdot-train.log 2>&1 < /dev/null & "
                     r"echo \$! > \$HOME/vdot-train.pid; ", train)
    # before starting: a live trainer from the pidfile is stopped (SIGTERM, waited for), then the TPU is freed
    before = train[:train.index("nohup vdot train")]
    assert 'kill -TERM "$pid"' in before and "fuser -s -k" in before and "libtpu_lockfile" in before
    assert "grep -qa vdot /proc/" in before  # a reused PID is not mistaken for the trainer
    follow = cmds[5]
    assert f"tpu-vm ssh vdot-pod {where} --worker=all " in follow  # every worker's log, so errors anywhere show
    assert "tail -n +1 --pid=$(cat $HOME/vdot-train.pid)" in follow and 'sed -u "s/^/[worker $w] /"' in follow
    # teardown guard: every worker must answer that its trainer has exited before the slice is deleted
    guard = cmds[6]
    assert guard.startswith(f"gcloud compute tpus tpu-vm ssh vdot-pod {where} --worker=all ")
    assert "is running\"; exit 1; fi" in guard
    # the workers' logs are kept beside the workdir (not in it: a workdir holds only what a run writes)
    assert cmds[7].endswith("gcloud storage cp -q $HOME/vdot-train.log gs://b/runs/x-logs/worker-$w.log || true'")
    assert cmds[8] == f"gcloud compute tpus tpu-vm delete vdot-pod {where} --quiet" and len(cmds) == 9
    assert "networkEndpoints[0].ipAddress" in out.stderr  # where the coordinator address comes from


def test_tpu_queued_resources_and_runtime_versions():
    base = ["--dry-run", "--name", "p", "--zone", "z"]
    queued = _commands(_run("tpu_pod.sh", "up", *base, "--accelerator", "v6e-16", "--spot", "--queued").stdout)
    assert queued == ["gcloud compute tpus queued-resources create p --zone=z --node-id=p --accelerator-type=v6e-16 "
                      "--runtime-version=v2-alpha-tpuv6e --spot"]
    assert _commands(_run("tpu_pod.sh", "down", *base, "--queued").stdout) == [
        "gcloud compute tpus queued-resources delete p --zone=z --force --quiet"]
    for acc, version in (("v5litepod-64", "v2-alpha-tpuv5-lite"), ("v4-32", "tpu-ubuntu2204-base"),
                         ("v5p-8", "v2-alpha-tpuv5")):
        assert f"--version={version}" in _commands(_run("tpu_pod.sh", "up", *base, "--accelerator", acc).stdout)[0]
    given = _commands(_run("tpu_pod.sh", "up", *base, "--accelerator", "v5p-8", "--version", "mine").stdout)
    assert "--version=mine" in given[0]
    p = _run("tpu_pod.sh", "up", *base, "--accelerator", "v9-8", check=False)
    assert p.returncode == 2 and "give --version" in p.stderr


def test_tpu_pins_match_the_tpu_extra():
    setup = (ROOT / "setup.py").read_text()
    assert f'"tpu": ["libtpu=={_pins()["libtpu"]}"]' in setup


def test_tpu_single_commands_and_errors():
    base = ["--dry-run", "--name", "p", "--zone", "z"]
    assert _commands(_run("tpu_pod.sh", "down", *base).stdout) == [
        "gcloud compute tpus tpu-vm delete p --zone=z --quiet"]
    stop = _commands(_run("tpu_pod.sh", "stop", *base, "--stop-timeout", "60").stdout)
    assert len(stop) == 1 and stop[0].startswith("gcloud compute tpus tpu-vm ssh p --zone=z --worker=all ")
    assert 'kill -TERM "$pid"' in stop[0] and "[ $t -lt 60 ]" in stop[0]  # and waits for the exit
    logs = _commands(_run("tpu_pod.sh", "logs", *base, "--worker", "3").stdout)
    assert "--worker=3" in logs[0]
    pip = _commands(_run("tpu_pod.sh", "install", *base, "--install", "pip", "--package", "vdot-jax==0.1").stdout)
    assert len(pip) == 1 and "'jax[tpu]==0.10.2' 'libtpu==0.0.42.*' vdot-jax==0.1" in pip[0].replace("'\\''", "'")
    mount = _commands(_run("tpu_pod.sh", "install", *base, "--install", "pip", "--package", "x",
                           "--mount", "gs://bkt/data").stdout)
    assert len(mount) == 2 and mount[1].endswith("gcsfuse --implicit-dirs -o ro bkt /mnt/gcs/bkt'")
    for args, message in ((["train", *base], "--config is required"), (["up", "--zone", "z"], "--name is required"),
                          (["up", *base], "--accelerator is required"), (["fly"], "unknown command"),
                          (["install", *base, "--install", "pip"], "--package"),
                          (["run", *base, "--retries", "x"], "--retries")):
        p = _run("tpu_pod.sh", *args, check=False)
        assert p.returncode == 2 and message in p.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_and_missing_arguments(script):
    assert "--dry-run" in _run(script, *(["run"] if script == "tpu_pod.sh" else []), "--help").stdout
    if script != "tpu_pod.sh":
        p = _run(script, "--dry-run", "--workdir", "w", check=False)
        assert p.returncode == 2 and "--config is required" in p.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None and not os.environ.get("VDOT_REQUIRE_SHELLCHECK"),
                    reason="shellcheck is not installed (.ci/run installs it and requires this test)")
def test_shellcheck_clean():
    p = subprocess.run(["shellcheck", *(str(LAUNCH / s) for s in SCRIPTS)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout


def test_readme_documents_every_script():
    readme = (LAUNCH / "README.md").read_text()
    for s in SCRIPTS:
        assert f"launch/{s}" in readme


def test_local_script_really_trains(tmp_path):
    """Not a dry run: the script starts `vdot train` (tiny CPU run, one step) and the workdir gets a checkpoint."""
    env = _clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    p = subprocess.run(["bash", str(LAUNCH / "local_gpu.sh"), "--config", "configs/tiny.py:flow", "--workdir",
                        str(tmp_path / "wd"), "--stop-after", "1", "--", "--config.train.checkpoint_every=1"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "wd" / "checkpoints").is_dir()


FAKE_GCLOUD = r"""#!/usr/bin/env bash
# A one-worker "TPU VM" that is this machine: ssh runs the worker's command here; the slice's state is a file
# ($FAKE_STATE: READY unless written). install is skipped (the test's venv has everything). With FAKE_PREEMPT, the
# first log follower "preempts" the slice: once the trainer has logged a step, SIGTERM, wait, PREEMPTED, ssh drops.
printf '%s\n' "$*" >> "$FAKE_CALLS"
state=$(cat "$FAKE_STATE" 2>/dev/null || echo READY)
case "$*" in
  *"tpu-vm ssh "*)
    for a; do [[ $a == --command=* ]] && cmd=${a#--command=}; done
    [[ $cmd == *"uv venv"* ]] && { echo "fake: install skipped"; exit 0; }
    if [[ -n ${FAKE_PREEMPT:-} && $cmd == *"tail -n +1 --pid"* && ! -e $FAKE_STATE.preempted ]]; then
      touch "$FAKE_STATE.preempted"
      while [ ! -s "$FAKE_PREEMPT" ]; do sleep 0.2; done
      pid=$(cat "$HOME/vdot-train.pid"); kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
      echo PREEMPTED > "$FAKE_STATE"; exit 255
    fi
    exec bash -c "$cmd" ;;
  *"tpu-vm describe "*) [[ $state == MISSING ]] && exit 1
    if [[ $* == *networkEndpoints* ]]; then echo 127.0.0.1; else echo "$state"; fi ;;
  *"tpu-vm delete "*) echo MISSING > "$FAKE_STATE" ;;
  *"tpu-vm create "*) echo READY > "$FAKE_STATE" ;;
  *"tpu-vm scp "*) ;;
  *) echo "fake gcloud: unexpected: $*" >&2; exit 1 ;;
esac
"""


@pytest.fixture(scope="module")
def fake_pod(tmp_path_factory):
    """(env, HOME) for tpu_pod.sh with the fake gcloud above and a metadata server answering worker 0; HOME (and
    with it the compilation cache the script sets) is shared by the module's tests."""
    from conftest import FAST_COMPILE, free_port

    root = tmp_path_factory.mktemp("pod")
    bin_dir, home = root / "bin", root / "home"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "curl").write_text("#!/bin/sh\necho 0\n")  # the metadata server: worker number 0
    for f in ("gcloud", "curl"):
        (bin_dir / f).chmod(0o755)
    (home / "vdot-venv" / "bin").mkdir(parents=True)
    (home / "vdot-venv" / "bin" / "activate").write_text(f'export PATH="{Path(sys.executable).parent}:$PATH"\n')
    (home / "vdot-jax").symlink_to(ROOT)
    port = free_port()
    env = _clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", HOME=str(home), FAKE_CALLS=str(root / "calls"),
                     JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE}",
                     PYTHONPATH=str(ROOT))
    return env, home, ["--name", "p", "--zone", "z", "--port", str(port)]


def _logged(workdir) -> list[int]:
    path = workdir / "metrics.jsonl"
    return [json.loads(x)["step"] for x in path.read_text().splitlines()] if path.exists() else []


def test_tpu_stop_reaches_the_trainer_on_a_local_fake_worker(tmp_path, fake_pod):
    """`train` and `stop` with a fake gcloud whose workers are this machine: the pidfile holds the trainer's own PID
    (a python process, not a wrapper shell), `status` says it runs, `stop` SIGTERMs it and returns once it has exited,
    and its checkpoint is there."""
    from vdot_jax.train.checkpoint import latest_meta

    env, home, base = fake_pod
    env = {**env, "FAKE_STATE": str(tmp_path / "state")}
    workdir = tmp_path / "wd"
    pidfile = home / "vdot-train.pid"
    pidfile.unlink(missing_ok=True)
    try:
        p = _run("tpu_pod.sh", "train", *base, "--no-follow", "--config", "configs/tiny.py:flow", "--workdir",
                 str(workdir), "--", "--config.train.steps=100000", "--config.train.checkpoint_every=100000",
                 "--config.train.progress=false", env=env, check=False)
        log = home / "vdot-train.log"
        assert p.returncode == 0, p.stderr + (log.read_text() if log.exists() else "")
        pid = int(pidfile.read_text())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert Path(argv[0].decode()).name.startswith("python") and argv[1].endswith(b"/vdot"), argv  # the trainer
        deadline = time.time() + 300
        while not _logged(workdir):
            assert time.time() < deadline and Path(f"/proc/{pid}").exists(), log.read_text()[-3000:]
            time.sleep(0.5)
        running = _run("tpu_pod.sh", "status", *base, env=env, check=False)
        assert running.returncode == 1 and f"[worker 0] trainer {pid} is running" in running.stdout
        t0 = time.time()
        stop = _run("tpu_pod.sh", "stop", *base, "--stop-timeout", "120", env=env, check=False, timeout=180)
        waited = time.time() - t0
    finally:  # a trainer left running (100,000 steps) would slow every test after this one
        left = int(pidfile.read_text()) if pidfile.exists() and pidfile.read_text().strip() else None
        if left and Path(f"/proc/{left}").exists() and b"vdot" in Path(f"/proc/{left}/cmdline").read_bytes():
            os.kill(left, 9)
    assert stop.returncode == 0 and f"trainer {pid} exited" in stop.stdout, stop.stderr
    assert not Path(f"/proc/{pid}").exists() or b"vdot" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    text = log.read_text()
    assert "SIGTERM received" in text, text[-2000:]
    step, _ = latest_meta(workdir)
    assert step >= max(_logged(workdir)) >= 1
    assert waited < 120
    done = _run("tpu_pod.sh", "status", *base, env=env, check=False)
    assert done.returncode == 0 and "[worker 0] no trainer running" in done.stdout


def test_tpu_run_recreates_a_preempted_slice_resumes_and_tears_down(tmp_path, fake_pod):
    """`run --retries 1 --teardown` on the fake slice: it is preempted after the first step (the trainer gets SIGTERM
    and saves, the slice turns PREEMPTED, the log stream drops); `run` deletes and recreates it, trains again, which
    resumes from the workdir and finishes, and only then, with every trainer gone, deletes the slice."""
    from vdot_jax.train.checkpoint import latest_meta

    env, home, base = fake_pod
    workdir = tmp_path / "wd"
    env = {**env, "FAKE_STATE": str(tmp_path / "state"), "FAKE_PREEMPT": str(workdir / "metrics.jsonl")}
    calls = Path(env["FAKE_CALLS"])
    calls.write_text("")
    p = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "run", *base, "--accelerator", "v5p-8", "--retries", "1",
                        "--teardown", "--config", "configs/tiny.py:flow", "--workdir", str(workdir), "--",
                        "--config.train.steps=60", "--config.train.checkpoint_every=1000",
                        "--config.train.progress=false"], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    assert "is PREEMPTED (preempted?): creating it again and resuming (1 of 1)" in p.stderr
    assert re.search(r"\[worker 0\] .*resumed at step \d+", p.stdout), p.stdout[-3000:]  # the log stream, prefixed
    verbs = [line.split()[3] for line in calls.read_text().splitlines() if line.startswith("compute tpus tpu-vm")]
    creates = [i for i, v in enumerate(verbs) if v == "create"]
    deletes = [i for i, v in enumerate(verbs) if v == "delete"]
    assert len(creates) == 1 and len(deletes) == 2 and deletes[0] < creates[0] < deletes[1]
    assert verbs[deletes[1] - 1] == "ssh"  # the status check just before the teardown
    assert _logged(workdir) == list(range(1, 61)) and latest_meta(workdir)[0] == 60


def test_accelerator_chips_and_the_mesh_check():
    """The one chip arithmetic (Cloud TPU docs: v4/v5p types count TensorCores, two per chip; v5e/v6e count chips)
    and vdot train's mesh rule against one slice: an axis left free (or data, when not named) takes the rest, a mesh
    with every axis given must use every chip. A v5p-64 is 32 chips: the documented 64-chip mesh failed on it."""
    from vdot_jax.errors import VdotError
    from vdot_jax.parallel.chips import accelerator_chips
    from vdot_jax.parallel.mesh import check_accelerator

    assert [accelerator_chips(a) for a in ("v5p-16", "v5litepod-8", "v6e-16", "v4-32", "v5p-8")] == [8, 8, 16, 16, 4]
    for bad in ("v9-8", "v5p-7", "v5p", "tpu-v5p-16"):
        with pytest.raises(VdotError, match=f"unknown TPU accelerator type '{bad}'"):
            accelerator_chips(bad)
    assert check_accelerator("fsdp=2,context=4", "", "v5p-16", "c.py") == (
        "c.py's mesh fsdp=2,context=4 on v5p-16's 8 chips: fsdp=2,context=4")
    assert check_accelerator("fsdp=2,context=4", "", "v5p-32").endswith(": data=2,fsdp=2,context=4")  # data: rest
    assert check_accelerator("fsdp=-1", "", "v6e-16").endswith(": fsdp=16")
    assert check_accelerator("fsdp=-1,context=4", "", "v5litepod-4").endswith(": context=4")  # fsdp=1
    for ici, dcn, acc, message in (
            ("fsdp=16,context=4", "", "v5p-64",
             "c.py's mesh fsdp=16,context=4 needs a multiple of 64 chips, but v5p-64 has 32: rent v5p-128 or change "
             "mesh.ici"),
            ("data=1,fsdp=2,context=4", "", "v5p-32",
             "c.py's mesh data=1,fsdp=2,context=4 uses 8 chips, but v5p-32 has 16: rent v5p-16 or change mesh.ici"),
            ("fsdp=2", "data=2", "v5p-8", "c.py's mesh.dcn data=2 spans 2 slices, but one v5p-8 is one slice")):
        with pytest.raises(VdotError) as e:
            check_accelerator(ici, dcn, acc, "c.py")
        assert str(e.value).startswith(message), e.value


def _dry(command: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return _run("tpu_pod.sh", command, "--dry-run", "--name", "p", "--zone", "z", "--workdir", "gs://b/r", *args,
                env=env, check=False)


def test_tpu_refuses_a_slice_its_mesh_does_not_use_before_renting():
    """`run` and `up` check the config's mesh (the overrides after -- applied, vdot train's own flags left out)
    against the accelerator before any gcloud create (a matching one goes on: the dry-run test above); without
    `vdot` on this machine one line says the check was skipped."""
    p = _dry("run", "--accelerator", "v5p-64", "--config", "configs/wan14b_stage2_vace_v5p16.py", "--",
             "--config.mesh.ici", "fsdp=16,context=4", "--summary")
    assert p.returncode == 2 and _commands(p.stdout) == []
    assert p.stderr.strip().splitlines()[-1] == (
        "tpu_pod.sh: error: configs/wan14b_stage2_vace_v5p16.py's mesh fsdp=16,context=4 needs a multiple of 64 "
        "chips, but v5p-64 has 32: rent v5p-128 or change mesh.ici")
    p = _dry("up", "--accelerator", "v5p-64", "--config", "configs/wan14b_stage2_vace_v5p16.py",
             env=_clean_env(PATH="/usr/bin:/bin"))
    assert p.returncode == 0 and "tpu_pod.sh: not checked configs/wan14b_stage2_vace_v5p16.py's mesh against the " \
        "chips of v5p-64: no `vdot` here" in p.stderr
    assert _commands(p.stdout)[0].startswith("gcloud compute tpus tpu-vm create p ")


def test_documented_launches_rent_the_chips_their_config_uses():
    """Each `tpu_pod.sh run` in the launch README and the launcher's usage rents a slice whose chips its config's
    mesh (with the command's overrides) uses: the check tpu_pod.sh runs before renting."""
    from vdot_jax.parallel.mesh import check_accelerator
    from vdot_jax.train.config import apply_overrides, load_config, parse_override_args

    text = (LAUNCH / "README.md").read_text() + (LAUNCH / "tpu_pod.sh").read_text().replace("\n#", "\n")
    commands = [" ".join(c.split()) for c in re.findall(r"tpu_pod\.sh run (?:[^\n]*\\\n)*[^\n]*", text)]
    checked = 0
    for cmd in commands:
        acc, cfg = re.search(r"--accelerator (\S+)", cmd), re.search(r"--config (configs/\S+)", cmd)
        if not (acc and cfg):
            continue
        config = load_config(ROOT / cfg.group(1))
        after = cmd.partition(" -- ")[2].split()
        apply_overrides(config, parse_override_args([a for a in after if a.startswith("--config.")]))
        check_accelerator(config.mesh.ici, config.mesh.dcn, acc.group(1), cfg.group(1))  # raises on a mismatch
        checked += 1
    assert checked >= 3
