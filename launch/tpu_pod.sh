#!/usr/bin/env bash
# `vdot train` on a Cloud TPU VM slice (single host or a multi-host pod slice), driven from your machine with gcloud.
#
#   launch/tpu_pod.sh run --name vdot-v5p --zone us-east5-a --accelerator v5p-64 \
#       --config configs/wan14b_stage2_vace.py --workdir gs://BUCKET/runs/vace14b [-- --config.KEY=VALUE ...]
#
# Commands:
#   up        create the slice, or reuse it when one with this name exists
#   install   copy this checkout to every worker and pip-install it (with jax[tpu]) into ~/vdot-venv
#             (--install pip --package SPEC installs SPEC instead, e.g. git+https://.../vdot-jax)
#   train     start `vdot train` on every worker in the background (nohup; log ~/vdot-train.log, pid
#             ~/vdot-train.pid), then stream worker 0's log until training ends (--no-follow: return at once)
#   logs      stream the training log (--worker N or all; default 0) until training ends
#   stop      SIGTERM the training processes (vdot train checkpoints and exits)
#   down      delete the slice
#   run       up + install + train; with --teardown, delete the slice when training has ended
#
# Options:
#   --name NAME --zone ZONE          the TPU VM (required)
#   --accelerator TYPE               e.g. v5p-64, v5litepod-16, v4-32 (for up/run)
#   --version VERSION                TPU software version (default tpu-ubuntu2204-base)
#   --project PROJECT                gcloud project (default: gcloud's)
#   --spot                           create a Spot slice
#   --config FILE --workdir DIR      for train/run; DIR should be on GCS (gs://...) so every worker sees it
#   --stop-after N                   run at most N steps now
#   --install copy|pip  --package S  how install gets the project onto the workers (default copy)
#   --port P                         coordinator port on worker 0 (default 8476)
#   --worker N|all                   for logs
#   --no-follow, --teardown          see train / run
#   --dry-run                        print the gcloud commands instead of running them
# Everything after `--` goes to `vdot train` unchanged. Every worker runs the same `vdot train` command; worker 0
# is the coordinator (VDOT_COORDINATOR, VDOT_NUM_PROCESSES; VDOT_PROCESS_ID from the worker's metadata).
set -euo pipefail

die() { printf 'tpu_pod.sh: error: %s\n' "$*" >&2; exit 2; }
usage() { awk 'NR == 1 || /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

quote() {
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s\n' "${out[*]}"
}

run() {
  if ((DRY_RUN)); then printf '+ %s\n' "$(quote "$@")"; else "$@"; fi
}

COMMAND=${1:-}
[[ $COMMAND == -h || $COMMAND == --help ]] && { usage; exit 0; }
case $COMMAND in
  up | install | train | logs | stop | down | run) shift ;;
  "") die "give a command: up, install, train, logs, stop, down or run (see --help)" ;;
  *) die "unknown command $COMMAND (up, install, train, logs, stop, down, run)" ;;
esac

NAME="" ZONE="" ACCELERATOR="" VERSION="tpu-ubuntu2204-base" PROJECT="" SPOT=0 CONFIG="" WORKDIR="" STOP_AFTER=""
INSTALL="copy" PACKAGE="" PORT=8476 WORKER=0 FOLLOW=1 TEARDOWN=0 DRY_RUN=0
OVERRIDES=()
while (($#)); do
  case $1 in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --accelerator) ACCELERATOR=${2:?--accelerator needs a value}; shift 2 ;;
    --version) VERSION=${2:?--version needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
    --stop-after) STOP_AFTER=${2:?--stop-after needs a value}; shift 2 ;;
    --install) INSTALL=${2:?--install needs a value}; shift 2 ;;
    --package) PACKAGE=${2:?--package needs a value}; shift 2 ;;
    --port) PORT=${2:?--port needs a value}; shift 2 ;;
    --worker) WORKER=${2:?--worker needs a value}; shift 2 ;;
    --no-follow) FOLLOW=0; shift ;;
    --teardown) TEARDOWN=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n $NAME ]] || die "--name is required"
[[ -n $ZONE ]] || die "--zone is required"
[[ $INSTALL == copy || $INSTALL == pip ]] || die "--install must be copy or pip"
[[ $INSTALL == copy || -n $PACKAGE ]] || die "--install pip needs --package SPEC"
if ((!DRY_RUN)); then command -v gcloud >/dev/null || die "gcloud is not on PATH (install the Google Cloud SDK)"; fi

TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
REPO=$(cd "$(dirname "$0")/.." && pwd)
# paths on the workers ($HOME expands there)
REMOTE_DIR="\$HOME/vdot-jax"
REMOTE_VENV="\$HOME/vdot-venv"
LOG="\$HOME/vdot-train.log"
PIDFILE="\$HOME/vdot-train.pid"
ARCHIVE="\$HOME/vdot-jax.tar.gz"
METADATA='http://metadata.google.internal/computeMetadata/v1/instance/attributes'

ssh_all() { run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"; }

cmd_up() {
  [[ -n $ACCELERATOR ]] || die "--accelerator is required to create a slice"
  if ((!DRY_RUN)) && "${TPU[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
    printf 'tpu_pod.sh: reusing the existing TPU VM %s\n' "$NAME"
    return
  fi
  local create=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --version="$VERSION")
  ((SPOT)) && create+=(--spot)
  ((DRY_RUN)) && printf '# (only if "%s" finds no such TPU VM)\n' "$(quote "${TPU[@]}" describe "$NAME" "${WHERE[@]}")"
  run "${create[@]}"
}

cmd_install() {
  local setup="python3 -m venv $REMOTE_VENV && $REMOTE_VENV/bin/pip install -q -U pip"
  if [[ $INSTALL == copy ]]; then
    local archive
    archive="${TMPDIR:-/tmp}/vdot-jax-$NAME.tar.gz"
    run tar --exclude=.git --exclude=.venv --exclude=runs --exclude='*.egg-info' -czf "$archive" -C "$REPO" .
    run "${TPU[@]}" scp "$archive" "$NAME:vdot-jax.tar.gz" "${WHERE[@]}" --worker=all
    ssh_all "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $ARCHIVE -C $REMOTE_DIR && $setup && \
$REMOTE_VENV/bin/pip install -q 'jax[tpu]' -e $REMOTE_DIR"
  else
    ssh_all "$setup && $REMOTE_VENV/bin/pip install -q 'jax[tpu]' $(printf '%q' "$PACKAGE")"
  fi
}

coordinator_ip() {  # internal IP of worker 0
  if ((DRY_RUN)); then
    printf '# coordinator: worker 0 of "%s"\n' \
      "$(quote "${TPU[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(networkEndpoints[0].ipAddress)')" >&2
    printf 'WORKER0_IP\n'
  else
    "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(networkEndpoints[0].ipAddress)'
  fi
}

num_workers() {
  if ((DRY_RUN)); then printf 'NUM_WORKERS\n'; return; fi
  "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(networkEndpoints[].ipAddress)' | sed 's/[;,]/\n/g' |
    grep -c .
}

cmd_train() {
  [[ -n $CONFIG ]] || die "--config is required"
  [[ -n $WORKDIR ]] || die "--workdir is required"
  # The one training entry point, the same on every launcher.
  local train=(vdot train --config "$CONFIG" --workdir "$WORKDIR")
  [[ -z $STOP_AFTER ]] || train+=(--stop-after "$STOP_AFTER")
  train+=("${OVERRIDES[@]}")
  local ip n
  ip=$(coordinator_ip)
  n=$(num_workers)
  local env="export VDOT_COORDINATOR=$ip:$PORT VDOT_NUM_PROCESSES=$n"
  env+=" VDOT_PROCESS_ID=\$(curl -s -H Metadata-Flavor:Google $METADATA/agent-worker-number)"
  ssh_all "cd $REMOTE_DIR && source $REMOTE_VENV/bin/activate && $env && \
nohup $(printf '%q ' "${train[@]}")> $LOG 2>&1 < /dev/null & echo \$! > $PIDFILE"
  ((FOLLOW)) && cmd_logs
  return 0
}

cmd_logs() {
  # tail exits when the training process does (--pid), so `run --teardown` knows when to delete the slice
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$WORKER" \
    --command="tail -n +1 --pid=\$(cat $PIDFILE) -F $LOG"
}

cmd_stop() { ssh_all "kill -TERM \$(cat $PIDFILE)"; }

cmd_down() { run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet; }

case $COMMAND in
  up) cmd_up ;;
  install) cmd_install ;;
  train) cmd_train ;;
  logs) cmd_logs ;;
  stop) cmd_stop ;;
  down) cmd_down ;;
  run)
    cmd_up
    cmd_install
    if ((TEARDOWN)); then
      FOLLOW=1
      trap cmd_down EXIT
    fi
    cmd_train
    ;;
esac
