#!/usr/bin/env bash
# Install everything ijepa-ds needs on a fresh Debian machine (idempotent; run as root or in a
# venv): Fashion-MNIST from Debian, torch + torchvision, then the package with DeepSpeed (no
# CUDA op builds: DS_BUILD_OPS=0; the trainer passes a torch AdamW, so nothing is JIT-built).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null
  else
    echo "install.sh: no apt-get; put the Fashion-MNIST IDX files somewhere and set data.root" >&2
  fi
fi

if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
# DeepSpeed's setup.py imports torch, hence no build isolation.
DS_BUILD_OPS=0 "$PY" -m pip install -q --no-build-isolation -e ".[test]"
