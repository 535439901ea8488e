"""launch/: each script's --dry-run prints the commands it would issue (gcloud / sbatch / srun / vdot train), all
three start the same `vdot train` command as a local run, the scripts are shellcheck-clean, and local_gpu.sh
really starts a (CPU, tiny) training run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
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


def _run(script: str, *args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True, cwd=ROOT,
                       env=env or _clean_env(), timeout=60)
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


def test_tpu_dry_run_creates_installs_trains_streams_and_tears_down():
    out = _run("tpu_pod.sh", "run", "--dry-run", "--name", "vdot-pod", "--zone", "us-east5-a", "--accelerator",
               "v5p-64", "--spot", "--project", "proj", "--teardown", *TRAIN[:2], "--workdir", "gs://b/runs/x",
               *TRAIN[4:], *OVERRIDES)
    cmds = _commands(out.stdout)
    where = "--zone=us-east5-a --project=proj"
    assert cmds[0] == (f"gcloud compute tpus tpu-vm create vdot-pod {where} --accelerator-type=v5p-64 "
                       "--version=tpu-ubuntu2204-base --spot")
    assert cmds[1].startswith("tar ") and f"-C {ROOT}" in cmds[1]
    assert cmds[2].startswith("gcloud compute tpus tpu-vm scp ") and cmds[2].endswith("--worker=all")
    assert cmds[3].startswith(f"gcloud compute tpus tpu-vm ssh vdot-pod {where} --worker=all ")
    assert "pip install -q 'jax[tpu]' -e $HOME/vdot-jax" in cmds[3].replace("'\\''", "'")
    train = cmds[4]
    assert train.startswith(f"gcloud compute tpus tpu-vm ssh vdot-pod {where} --worker=all ")
    assert "VDOT_COORDINATOR=WORKER0_IP:8476 VDOT_NUM_PROCESSES=NUM_WORKERS" in train
    assert "agent-worker-number" in train and "nohup vdot train" in train
    assert _train_line(train) == EXPECTED_TRAIN.replace("/shared/runs/x", "gs://b/runs/x")
    assert cmds[5].startswith(f"gcloud compute tpus tpu-vm ssh vdot-pod {where} --worker=0 ")
    assert "tail -n +1 --pid=" in cmds[5]
    assert cmds[6] == f"gcloud compute tpus tpu-vm delete vdot-pod {where} --quiet"
    assert "networkEndpoints[0].ipAddress" in out.stderr  # where the coordinator address comes from


def test_tpu_single_commands_and_errors():
    base = ["--dry-run", "--name", "p", "--zone", "z"]
    assert _commands(_run("tpu_pod.sh", "down", *base).stdout) == [
        "gcloud compute tpus tpu-vm delete p --zone=z --quiet"]
    stop = _commands(_run("tpu_pod.sh", "stop", *base).stdout)
    assert stop == ["gcloud compute tpus tpu-vm ssh p --zone=z --worker=all '--command=kill -TERM $(cat "
                    "$HOME/vdot-train.pid)'"]
    logs = _commands(_run("tpu_pod.sh", "logs", *base, "--worker", "all").stdout)
    assert "--worker=all" in logs[0]
    pip = _commands(_run("tpu_pod.sh", "install", *base, "--install", "pip", "--package", "vdot-jax==0.1").stdout)
    assert len(pip) == 1 and "pip install -q 'jax[tpu]' vdot-jax==0.1" in pip[0].replace("'\\''", "'")
    for args, message in ((["train", *base], "--config is required"), (["up", "--zone", "z"], "--name is required"),
                          (["up", *base], "--accelerator is required"), (["fly"], "unknown command"),
                          (["install", *base, "--install", "pip"], "--package")):
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
