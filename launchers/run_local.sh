#!/usr/bin/env bash
# Train with N ranks on this machine (torchrun; OMP_NUM_THREADS=1 and a free port by default).
#
#   bash launchers/run_local.sh 2 --config fmnist_tiny                 # 2 CPU ranks (gloo)
#   bash launchers/run_local.sh 8 --config vit_h14_in1k --resume auto logging.run_name=vith
#   bash launchers/run_local.sh 2 --launcher deepspeed --config fmnist_tiny
#
# Everything after N goes to `ijepa-ds launch local` (see --help there): launcher options and
# the trainer's own arguments (--config, KEY=VALUE overrides, --resume).
set -euo pipefail
if [[ $# -lt 1 || ! $1 =~ ^[0-9]+$ ]]; then
  echo "usage: bash launchers/run_local.sh NPROC [launch options] --config NAME [KEY=VALUE ...]" >&2
  exit 2
fi
nproc=$1
shift
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m ijepa_ds launch local --nproc-per-node "$nproc" "$@"
