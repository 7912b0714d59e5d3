#!/usr/bin/env bash
# EMR bootstrap action: runs on every node before Spark starts.
# Installs Python 3.11, builds a virtualenv with the project's pinned runtime dependencies
# (CPU or GPU torch) and leaves it at --venv; the cluster's spark-env points PYSPARK_PYTHON there.
#
#   install_python_deps.sh --python 3.11 --venv /opt/llm-decoder/venv \
#       --requirements s3://bucket/prefix/runs/<id>/code/requirements.txt --torch cpu|gpu
set -euo pipefail

PYTHON_VERSION=3.11
VENV=/opt/llm-decoder/venv
REQUIREMENTS=""
TORCH=cpu

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PYTHON_VERSION="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --requirements) REQUIREMENTS="$2"; shift 2 ;;
        --torch) TORCH="$2"; shift 2 ;;
        *) echo "install_python_deps.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z "$REQUIREMENTS" ]]; then
    echo "install_python_deps.sh: --requirements is required" >&2
    exit 2
fi
case "$TORCH" in
    cpu) TORCH_INDEX=https://download.pytorch.org/whl/cpu ;;
    gpu) TORCH_INDEX=https://download.pytorch.org/whl/cu128 ;;
    *) echo "install_python_deps.sh: --torch must be cpu or gpu, got $TORCH" >&2; exit 2 ;;
esac

# Amazon Linux 2023 (EMR 7.x) packages python3.11 with pip.
PY="python${PYTHON_VERSION}"
if ! command -v "$PY" >/dev/null 2>&1; then
    sudo dnf install -y -q "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-pip" "python${PYTHON_VERSION}-devel"
fi

sudo mkdir -p "$(dirname "$VENV")"
sudo "$PY" -m venv "$VENV"
sudo "$VENV/bin/python" -m pip install --quiet --upgrade pip

LOCAL_REQUIREMENTS=$(mktemp)
aws s3 cp "$REQUIREMENTS" "$LOCAL_REQUIREMENTS"
# torch comes from PyTorch's index (CPU or CUDA build); everything else from PyPI.
sudo "$VENV/bin/python" -m pip install --quiet --extra-index-url "$TORCH_INDEX" -r "$LOCAL_REQUIREMENTS"
sudo chmod -R a+rX "$VENV"
"$VENV/bin/python" -c "import torch, numpy, pyarrow, tokenizers; print('torch', torch.__version__)"
