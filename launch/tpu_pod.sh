#!/usr/bin/env bash
# `vdot train` on a Cloud TPU VM slice (single host or a multi-host pod slice), driven from your machine with gcloud.
#
#   launch/tpu_pod.sh run --name vdot-v5p --zone us-east5-a --accelerator v5p-16 --spot --queued --retries 5 \
#       --config configs/wan14b_stage2_vace_v5p16.py --workdir gs://BUCKET/runs/vace14b --teardown [-- --config.K=V ...]
#
# Commands:
#   up        create the slice (a queued resource with --queued), or reuse it when it is READY; a PREEMPTED (or
#             otherwise dead) slice of that name is deleted and created again
#   install   ship the code (vdot_jax/, configs/, launch/, setup.py: no models/, data/ or runs/) to every worker and
#             install it with jax and libtpu pinned by launch/tpu-pins.txt into a Python 3.11 venv made by uv
#             (--install pip --package SPEC installs SPEC instead, e.g. 'vdot-jax[tpu,gcs] @ git+https://...')
#   train     on every worker: stop a stale trainer and free the TPU, then start `vdot train` in the background
#             (log ~/vdot-train.log; ~/vdot-train.pid holds the trainer's own PID); then stream every worker's
#             log (lines prefixed [worker N]) until the trainers exit (--no-follow: return at once)
#   logs      stream the training log of --worker N or all (default all) until the trainers exit
#   status    per worker: trainer running or exited (with its log's last lines); exits 1 while any still runs
#   stop      SIGTERM every trainer (it saves at the next phase boundary) and wait until each has exited
#   down      delete the slice (and its queued resource)
#   run       up + install + train; --retries N recreates a preempted slice and resumes up to N times;
#             --teardown deletes the slice once `status` confirms that the trainer has exited on every worker
#
# Options:
#   --name NAME --zone ZONE          the TPU VM (required)
#   --accelerator TYPE               e.g. v5p-16 (8 chips), v5litepod-64, v6e-16, v4-32 (for up/run). Before
#                                    renting (also with --dry-run), up and run check here that --config's mesh,
#                                    with the overrides after --, uses its chips (vdot plan --check-accelerator)
#                                    and stop with one line if not; where vdot is not installed here, one line
#                                    says the check was skipped
#   --version VERSION                TPU software version (default: the one Google lists for the accelerator:
#                                    v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite,
#                                    v4 tpu-ubuntu2204-base)
#   --project PROJECT                gcloud project (default: gcloud's)
#   --spot                           a Spot slice (preemptible; see --retries)
#   --queued                         request the slice as a queued resource (waits for capacity)
#   --retries N                      run: recreate and resume after a preemption, at most N times (default 0)
#   --config FILE --workdir DIR      for train/run; DIR should be on GCS (gs://...) so every worker sees it
#   --stop-after N                   run at most N steps now
#   --compile-cache DIR|off          persistent XLA compilation cache (default gs://BUCKET/vdot-xla-cache for a
#                                    gs:// workdir, else ~/vdot-xla-cache on each worker)
#   --stop-timeout S                 how long stop (and train, for a stale trainer) waits for an exit (default 1800)
#   --install copy|pip  --package S  how install gets the project onto the workers (default copy)
#   --mount BUCKET                   install: also mount gs://BUCKET read-only at /mnt/gcs/BUCKET on every worker
#                                    (gcsfuse), for what only local readers open: ArrayRecord shards, videos
#   --port P                         coordinator port on worker 0 (default 8476)
#   --worker N|all                   for logs (default all)
#   --no-follow, --teardown          see train / run
#   --dry-run                        print the gcloud commands instead of running them
# Everything after `--` goes to `vdot train` unchanged. Every worker runs the same `vdot train` command; worker 0
# is the coordinator (VDOT_COORDINATOR, VDOT_NUM_PROCESSES; VDOT_PROCESS_ID from the worker's metadata).
set -euo pipefail

die() { printf 'tpu_pod.sh: error: %s\n' "$*" >&2; exit 2; }
say() { printf 'tpu_pod.sh: %s\n' "$*" >&2; }
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

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
  up | install | train | logs | status | stop | down | run) shift ;;
  "") die "give a command: up, install, train, logs, status, stop, down or run (see --help)" ;;
  *) die "unknown command $COMMAND (up, install, train, logs, status, stop, down, run)" ;;
esac

NAME="" ZONE="" ACCELERATOR="" VERSION="" PROJECT="" SPOT=0 QUEUED=0 RETRIES=0 CONFIG="" WORKDIR="" STOP_AFTER=""
COMPILE_CACHE="" STOP_TIMEOUT=1800 MOUNT="" INSTALL="copy" PACKAGE="" PORT=8476 WORKER=all FOLLOW=1 TEARDOWN=0 DRY_RUN=0
OVERRIDES=()
while (($#)); do
  case $1 in
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --zone) ZONE=${2:?--zone needs a value}; shift 2 ;;
    --accelerator) ACCELERATOR=${2:?--accelerator needs a value}; shift 2 ;;
    --version) VERSION=${2:?--version needs a value}; shift 2 ;;
    --project) PROJECT=${2:?--project needs a value}; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --retries) RETRIES=${2:?--retries needs a value}; shift 2 ;;
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
    --stop-after) STOP_AFTER=${2:?--stop-after needs a value}; shift 2 ;;
    --compile-cache) COMPILE_CACHE=${2:?--compile-cache needs a value}; shift 2 ;;
    --stop-timeout) STOP_TIMEOUT=${2:?--stop-timeout needs a value}; shift 2 ;;
    --mount) MOUNT=${2:?--mount needs a value}; MOUNT=${MOUNT#gs://}; MOUNT=${MOUNT%%/*}; shift 2 ;;
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
[[ $RETRIES =~ ^[0-9]+$ ]] || die "--retries must be a whole number"
[[ $STOP_TIMEOUT =~ ^[0-9]+$ ]] || die "--stop-timeout must be a whole number of seconds"
if ((!DRY_RUN)); then command -v gcloud >/dev/null || die "gcloud is not on PATH (install the Google Cloud SDK)"; fi

# TPU software version per accelerator: https://cloud.google.com/tpu/docs/runtimes (PyTorch and JAX)
default_version() {
  case $1 in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v4-* | v3-* | v2-*) echo tpu-ubuntu2204-base ;;
    *) return 1 ;;
  esac
}

TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)
WHERE=(--zone="$ZONE")
[[ -z $PROJECT ]] || WHERE+=(--project="$PROJECT")
REPO=$(cd "$(dirname "$0")/.." && pwd)
# the versions every plan was made with (one place: launch/tpu-pins.txt)
pin() { sed -n "s/^$1==//p" "$REPO/launch/tpu-pins.txt"; }
JAX_PIN=$(pin jax) LIBTPU_PIN=$(pin libtpu)
[[ -n $JAX_PIN && -n $LIBTPU_PIN ]] || die "launch/tpu-pins.txt must pin jax== and libtpu=="
UV_VERSION=0.13.9 PYTHON_VERSION=3.11
# paths on the workers ($HOME expands there)
REMOTE_DIR="\$HOME/vdot-jax"
REMOTE_VENV="\$HOME/vdot-venv"
LOG="\$HOME/vdot-train.log"
PIDFILE="\$HOME/vdot-train.pid"
ARCHIVE="\$HOME/vdot-jax.tar.gz"
METADATA='http://metadata.google.internal/computeMetadata/v1/instance/attributes'
WORKER_ID="w=\$(curl -s -H Metadata-Flavor:Google $METADATA/agent-worker-number)"
# on a worker: is the PID in the pidfile a live vdot process (not a reused PID)? sets $pid
ALIVE="pid=\$(cat $PIDFILE 2>/dev/null) && kill -0 \"\$pid\" 2>/dev/null && grep -qa vdot /proc/\"\$pid\"/cmdline"
# on a worker: SIGTERM the trainer and wait for its exit (it saves first); 1 if it is still there after the wait
STOP_TRAINER="if $ALIVE; then kill -TERM \"\$pid\"; t=0; while kill -0 \"\$pid\" 2>/dev/null && \
[ \$t -lt $STOP_TIMEOUT ]; do sleep 1; t=\$((t + 1)); done; if kill -0 \"\$pid\" 2>/dev/null; then \
echo \"trainer \$pid still running after $STOP_TIMEOUT s\" >&2; false; else echo \"trainer \$pid exited\"; fi; fi"

ssh_all() { run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$1"; }

slice_state() {  # READY, CREATING, PREEMPTED, ... or MISSING
  "${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || echo MISSING
}

queue_state() {  # WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE, SUSPENDED, FAILED, ... or MISSING
  "${QR[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state.state)' 2>/dev/null || echo MISSING
}

create_slice() {
  [[ -n $ACCELERATOR ]] || die "--accelerator is required to create a slice"
  local version=$VERSION
  [[ -n $version ]] || version=$(default_version "$ACCELERATOR") ||
    die "no default TPU software version for $ACCELERATOR; give --version"
  local spot=()
  ((SPOT)) && spot=(--spot)
  if ((QUEUED)); then
    run "${QR[@]}" create "$NAME" "${WHERE[@]}" --node-id="$NAME" --accelerator-type="$ACCELERATOR" \
      --runtime-version="$version" "${spot[@]}"
    wait_queued
  else
    run "${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --version="$version" "${spot[@]}"
  fi
}

wait_queued() {  # until the queued resource is ACTIVE (its slice then exists)
  if ((DRY_RUN)); then
    printf '# (then wait until "%s" is ACTIVE)\n' "$(quote "${QR[@]}" describe "$NAME" "${WHERE[@]}")"
    return
  fi
  local state="" last=""
  while state=$(queue_state) && [[ $state != ACTIVE ]]; do
    case $state in
      FAILED | SUSPENDED | SUSPENDING | MISSING)
        die "the queued resource $NAME is $state; see: gcloud compute tpus queued-resources describe $NAME" ;;
    esac
    [[ $state == "$last" ]] || say "queued resource $NAME: $state"
    last=$state
    sleep 30
  done
}

# Before renting: does the config's mesh (with the --config.* overrides after --, as `vdot train` will read them)
# use the chips of one --accelerator slice? `vdot plan --check-accelerator` (vdot_jax.parallel.mesh) knows the chip
# counts and vdot train's mesh rule; it loads the config only (no TPU backend, nothing compiled). Run from the
# checkout ($REPO first on PYTHONPATH, as the workers see it), also in --dry-run; skipped, with one line saying why,
# where no `vdot` is installed here.
check_slice() {
  [[ -n $ACCELERATOR && -n $CONFIG ]] || return 0
  local what="$CONFIG's mesh against the chips of $ACCELERATOR"
  if ! command -v vdot >/dev/null; then
    say "not checked $what: no \`vdot\` here (pip install -e . in this checkout to check before renting)"
    return 0
  fi
  if [[ $INSTALL == pip && ! -f $REPO/${CONFIG%:*} && ! -f ${CONFIG%:*} ]]; then
    say "not checked $what: $CONFIG is not a file here (with --install pip it is read on the workers)"
    return 0
  fi
  local args=() a i out
  for ((i = 0; i < ${#OVERRIDES[@]}; i++)); do  # only the config overrides (vdot train's own flags stay out)
    a=${OVERRIDES[i]}
    [[ $a == --config.* ]] || continue
    args+=("$a")
    if [[ $a != *=* && $((i + 1)) -lt ${#OVERRIDES[@]} && ${OVERRIDES[i + 1]} != --* ]]; then
      i=$((i + 1))
      args+=("${OVERRIDES[i]}")
    fi
  done
  if out=$(cd "$REPO" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" vdot plan --config "$CONFIG" \
      --check-accelerator "$ACCELERATOR" "${args[@]}" 2>&1); then
    say "checked: ${out##*$'\n'}"
  elif [[ $out == *"vdot plan: error: "* ]]; then
    die "${out##*vdot plan: error: }"
  else
    die "checking $what failed: ${out##*$'\n'}"
  fi
}

cmd_up() {
  if ((DRY_RUN)); then
    printf '# (only if "%s" is not READY; a PREEMPTED slice is deleted first)\n' \
      "$(quote "${TPU[@]}" describe "$NAME" "${WHERE[@]}" '--format=value(state)')"
    create_slice
    return
  fi
  local state
  while state=$(slice_state); [[ $state == CREATING || $state == STARTING || $state == RESTARTING ]]; do
    sleep 15
  done
  case $state in
    READY) say "reusing the TPU VM $NAME (READY)" ;;
    MISSING)
      if ((QUEUED)); then
        case $(queue_state) in
          MISSING) create_slice ;;
          FAILED | SUSPENDED | SUSPENDING | ACTIVE) cmd_down; create_slice ;;  # ACTIVE without its slice: stale
          *) say "queued resource $NAME is already waiting: keeping its place in the queue"; wait_queued ;;
        esac
      else
        create_slice
      fi ;;
    *) say "the TPU VM $NAME is $state: deleting it and creating it again"; cmd_down; create_slice ;;
  esac
}

cmd_install() {
  local venv="rm -rf $REMOTE_VENV && python3 -m pip install -q --user uv==$UV_VERSION && \
\$HOME/.local/bin/uv venv -q --python $PYTHON_VERSION $REMOTE_VENV"
  local pip="\$HOME/.local/bin/uv pip install -q --python $REMOTE_VENV/bin/python 'jax[tpu]==$JAX_PIN' \
'libtpu==$LIBTPU_PIN'"
  if [[ $INSTALL == copy ]]; then
    local archive
    archive="${TMPDIR:-/tmp}/vdot-jax-$NAME.tar.gz"
    # code only: the package, configs, launchers and packaging files (never models/, data/, runs/ or .git)
    run tar --exclude=__pycache__ --exclude='*.pyc' -czf "$archive" -C "$REPO" setup.py requirements.txt \
      README.md vdot_jax configs launch
    run "${TPU[@]}" scp "$archive" "$NAME:vdot-jax.tar.gz" "${WHERE[@]}" --worker=all
    ssh_all "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf $ARCHIVE -C $REMOTE_DIR && $venv && \
$pip -e \"${REMOTE_DIR}[tpu,gcs]\""
  else
    ssh_all "$venv && $pip $(printf '%q' "$PACKAGE")"
  fi
  [[ -z $MOUNT ]] || cmd_mount
}

cmd_mount() {  # gcsfuse from Google's apt repository (DPkg lock timeout: a new VM may still be upgrading itself)
  local at="/mnt/gcs/$MOUNT" apt="sudo apt-get -q -o DPkg::Lock::Timeout=600"
  ssh_all "mountpoint -q $at && exit 0; if ! command -v gcsfuse >/dev/null; then echo \"deb \
[signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) \
main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null && curl -fsSL \
https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null && \
$apt update && $apt install -y gcsfuse || exit 1; fi; sudo mkdir -p $at && sudo chown \"\$USER\" $at && \
gcsfuse --implicit-dirs -o ro $MOUNT $at"
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

compile_cache() {
  case $COMPILE_CACHE in
    off) ;;
    "") if [[ $WORKDIR == gs://* ]]; then
          local bucket=${WORKDIR#gs://}
          printf 'gs://%s/vdot-xla-cache\n' "${bucket%%/*}"
        else
          printf '%s\n' "\$HOME/vdot-xla-cache"
        fi ;;
    *) printf '%s\n' "$COMPILE_CACHE" ;;
  esac
}

cmd_train() {
  [[ -n $CONFIG ]] || die "--config is required"
  [[ -n $WORKDIR ]] || die "--workdir is required"
  # The one training entry point, the same on every launcher.
  local train=(vdot train --config "$CONFIG" --workdir "$WORKDIR")
  [[ -z $STOP_AFTER ]] || train+=(--stop-after "$STOP_AFTER")
  train+=("${OVERRIDES[@]}")
  local ip n cache
  ip=$(coordinator_ip)
  n=$(num_workers)
  cache=$(compile_cache)
  local env="export VDOT_COORDINATOR=$ip:$PORT VDOT_NUM_PROCESSES=$n"
  env+=" VDOT_PROCESS_ID=\$(curl -s -H Metadata-Flavor:Google $METADATA/agent-worker-number)"
  # jax writes cache entries from process 0 only (the same executable serves every process of the program)
  [[ -z $cache ]] || env+=" JAX_COMPILATION_CACHE_DIR=$cache"
  # a trainer of an earlier launch saves and exits; whatever else holds the TPU (a crashed run's leftovers) is killed
  local free="$STOP_TRAINER || exit 1; for d in /dev/accel* /dev/vfio/[0-9]*; do [ -e \"\$d\" ] && \
sudo -n fuser -s -k \"\$d\"; done; sudo -n rm -f /tmp/libtpu_lockfile"
  # only `nohup vdot train` runs in the background, so $! is the trainer's own PID (nohup and the vdot script
  # exec into python); the check after 5 s shows a start-up failure here instead of in the log only
  ssh_all "mkdir -p $REMOTE_DIR && cd $REMOTE_DIR && source $REMOTE_VENV/bin/activate && $env || exit 1; $free; \
nohup $(printf '%q ' "${train[@]}")> $LOG 2>&1 < /dev/null & echo \$! > $PIDFILE; sleep 5; \
$ALIVE || { $WORKER_ID; echo \"worker \$w: vdot train exited at once:\" >&2; tail -n 20 $LOG >&2; exit 1; }"
  if ((FOLLOW)); then cmd_logs; fi
}

cmd_logs() {
  # each worker's tail exits when its trainer does (--pid); lines carry the worker number, so an error on any
  # worker reaches this output
  run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker="$WORKER" \
    --command="$WORKER_ID; tail -n +1 --pid=\$(cat $PIDFILE) -F $LOG 2>/dev/null | sed -u \"s/^/[worker \$w] /\""
}

cmd_status() {
  ssh_all "$WORKER_ID; if $ALIVE; then echo \"[worker \$w] trainer \$pid is running\"; exit 1; fi; \
echo \"[worker \$w] no trainer running; the log ends:\"; tail -n 3 $LOG 2>/dev/null | sed \"s/^/[worker \$w]   /\""
}

cmd_stop() { ssh_all "$STOP_TRAINER"; }

cmd_down() {
  if ((QUEUED)); then
    run "${QR[@]}" delete "$NAME" "${WHERE[@]}" --force --quiet
  else
    run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}

cmd_run() {
  [[ -n $CONFIG ]] || die "--config is required"  # here, not after renting and installing
  [[ -n $WORKDIR ]] || die "--workdir is required"
  check_slice
  local attempt=0 state
  while :; do
    cmd_up
    cmd_install
    FOLLOW=1
    cmd_train || say "lost the connection to the workers (or a worker failed)"
    ((DRY_RUN)) && break
    state=$(slice_state)
    [[ $state == READY ]] && break
    ((attempt < RETRIES)) || die "the TPU VM $NAME is $state and --retries $RETRIES are used up; \`run\` again resumes"
    attempt=$((attempt + 1))
    say "the TPU VM $NAME is $state (preempted?): creating it again and resuming ($attempt of $RETRIES)"
  done
  if ((TEARDOWN)); then
    # only when every worker answers that its trainer has exited: never on a dropped connection
    if cmd_status; then
      # the workers' logs die with the slice: a gs:// run keeps them beside its workdir (not in it)
      [[ $WORKDIR != gs://* ]] ||
        ssh_all "$WORKER_ID; gcloud storage cp -q $LOG ${WORKDIR%/}-logs/worker-\$w.log || true"
      cmd_down
    else
      say "not deleting $NAME: a trainer is still running or a worker did not answer (see above); \`down\` deletes it"
      exit 1
    fi
  fi
}

case $COMMAND in
  up) check_slice; cmd_up ;;
  install) cmd_install ;;
  train) cmd_train ;;
  logs) cmd_logs ;;
  status) cmd_status ;;
  stop) cmd_stop ;;
  down) cmd_down ;;
  run) cmd_run ;;
esac
