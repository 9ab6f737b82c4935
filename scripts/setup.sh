#!/usr/bin/env bash
# One-time (and idempotent) set-up: a virtual environment in .venv with spos and its
# dependencies, and the default dataset (Fashion-MNIST) where spos looks for it.
#
#   SPOS_TORCH_SPEC  torch requirement to install (default: torch==2.13.0, the version
#                    this project is tested with; e.g. "torch==2.5.1"). It is one pip
#                    requirement, not a URL: choose a CUDA build with pip's PIP_INDEX_URL /
#                    PIP_EXTRA_INDEX_URL and a fresh SPOS_VENV (README, "GPU").
#   SPOS_VENV        where to put the virtual environment (default: .venv).
#   PYTHON           interpreter used to create it (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${SPOS_VENV:-.venv}
TORCH_SPEC=${SPOS_TORCH_SPEC:-torch==2.13.0}
PIP_QUIET=${PIP_QUIET:--q}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.spos-setup-stamp"
want="$TORCH_SPEC $(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing $TORCH_SPEC and spos (editable) with its dependencies"
  # torch first and pinned, so nothing below pulls a different (e.g. multi-GB CUDA) build.
  "$VENV/bin/python" -m pip install $PIP_QUIET "$TORCH_SPEC"
  "$VENV/bin/python" -m pip install $PIP_QUIET -e ".[test,export]" "$TORCH_SPEC"
  echo "$want" > "$stamp"
else
  echo "[setup] environment up to date ($VENV)"
fi

# Default dataset: Fashion-MNIST from Debian's dataset-fashion-mnist package.
FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi
  if [ "$SUDO" != none ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "[setup] WARNING: apt-get could not install dataset-fashion-mnist"
  fi
  if [ ! -f "$FMNIST_DIR/train-images-idx3-ubyte.gz" ]; then
    echo "[setup] Fashion-MNIST not found in $FMNIST_DIR. Install it with"
    echo "        sudo apt-get install dataset-fashion-mnist"
    echo "        or download the four IDX .gz files and run spos with data.root=/path/to/them"
  fi
fi
echo "[setup] done: use $VENV/bin/spos (or $VENV/bin/python -m spos)"
