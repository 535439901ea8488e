#!/usr/bin/env bash
# Run `vdot train` on this machine's GPUs: one process that sees every GPU listed (JAX puts them all on one mesh).
#
#   launch/local_gpu.sh --config configs/wan1_3b_stage2_vace.py --workdir runs/vace13b [options] [-- --config.KEY=VALUE ...]
#
# Options:
#   --config FILE        config file (FILE.py or FILE.py:ARG), as for `vdot train`          (required)
#   --workdir DIR        checkpoints, metrics and samples; an existing one is resumed        (required)
#   --gpus LIST          GPUs to use, e.g. 0,1,2,3 (default: all visible)
#   --stop-after N       run at most N steps now (then checkpoint and exit)
#   --venv DIR           activate this virtual environment first
#   --mem-fraction F     XLA_PYTHON_CLIENT_MEM_FRACTION (default 0.92)
#   --dry-run            print the command instead of running it
# Everything after `--` goes to `vdot train` unchanged (config overrides).
set -euo pipefail

usage() { awk 'NR == 1 || /^#SBATCH/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf 'local_gpu.sh: error: %s\n' "$*" >&2; exit 2; }

quote() {  # print the arguments as one shell-readable line
  local a out=()
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  printf '%s\n' "${out[*]}"
}

CONFIG="" WORKDIR="" GPUS="" STOP_AFTER="" VENV="" MEM_FRACTION="0.92" DRY_RUN=0
OVERRIDES=()
while (($#)); do
  case $1 in
    --config) CONFIG=${2:?--config needs a value}; shift 2 ;;
    --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
    --gpus) GPUS=${2?--gpus needs a value}; shift 2 ;;
    --stop-after) STOP_AFTER=${2:?--stop-after needs a value}; shift 2 ;;
    --venv) VENV=${2:?--venv needs a value}; shift 2 ;;
    --mem-fraction) MEM_FRACTION=${2:?--mem-fraction needs a value}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; OVERRIDES=("$@"); break ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[[ -n $CONFIG ]] || die "--config is required"
[[ -n $WORKDIR ]] || die "--workdir is required"

# The one training entry point, the same on every launcher.
TRAIN=(vdot train --config "$CONFIG" --workdir "$WORKDIR")
[[ -z $STOP_AFTER ]] || TRAIN+=(--stop-after "$STOP_AFTER")
TRAIN+=("${OVERRIDES[@]}")

ENVIRONMENT=(XLA_PYTHON_CLIENT_MEM_FRACTION="$MEM_FRACTION")
[[ -z $GPUS ]] || ENVIRONMENT+=(CUDA_VISIBLE_DEVICES="$GPUS")

if ((DRY_RUN)); then
  [[ -z $VENV ]] || printf '+ %s\n' "$(quote source "$VENV/bin/activate")"
  printf '+ %s\n' "$(quote env "${ENVIRONMENT[@]}" "${TRAIN[@]}")"
  exit 0
fi
if [[ -n $VENV ]]; then
  # shellcheck disable=SC1091
  source "$VENV/bin/activate"
fi
command -v vdot >/dev/null || die "vdot is not on PATH (pip install -e . in a virtual environment, or pass --venv DIR)"
exec env "${ENVIRONMENT[@]}" "${TRAIN[@]}"
