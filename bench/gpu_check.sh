#!/usr/bin/env bash
# One prepared GPU check (at most ~8 minutes on one H100/H200), run from the repository root:
#   bash bench/gpu_check.sh
# Installs DeepSpeed, pydantic and submitit from the offline wheels (../shared/device/README.md:
# copied into .whl/ beside the checkout, or read from ../shared/device/wheels), then runs
# bench/gpu_check.py, which writes bench/results/gpu_check.md (to $OUT as well when set).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
[ -d "$WHEELS" ] || WHEELS=../shared/device/wheels
if ! python3 -c "import deepspeed" >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python3 -m torch.distributed.run --standalone --nproc_per_node 1 bench/gpu_check.py
if [ -n "${OUT:-}" ]; then cp bench/results/gpu_check.md "$OUT"/; fi
