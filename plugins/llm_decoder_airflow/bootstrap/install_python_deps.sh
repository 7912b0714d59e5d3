#!/usr/bin/env bash
# EMR bootstrap action: runs on every node before Spark starts.
# Builds a virtualenv at --venv with exactly the packages of the nodes' lock, from a wheelhouse
# staged in S3: no package index is contacted, so a private subnet with only an S3 gateway
# endpoint is enough. The cluster's spark-env points PYSPARK_PYTHON at the venv.
#
#   install_python_deps.sh --python 3.11 --venv /opt/llm-decoder/venv \
#       --requirements s3://bucket/prefix/runs/<id>/code/requirements.txt \
#       --wheelhouse s3://bucket/prefix/wheelhouse/<lock hash>
#
# --requirements (the lock, with hashes) and --wheelhouse also take local paths: the offline test
# (tests/emr_box/test_offline_bootstrap.py) runs this script so, in a network namespace with no
# network; it also passes --no-compile (byte-compiling torch costs a minute of CPU and proves
# nothing; on EMR the venv is compiled once here, as its users cannot write __pycache__ into it).
# An old request's `--torch cpu|gpu` is accepted and ignored: the lock decides the torch build.
set -euo pipefail

PYTHON_VERSION=3.11
VENV=/opt/llm-decoder/venv
REQUIREMENTS=""
WHEELHOUSE=""
COMPILE=--compile

while [[ $# -gt 0 ]]; do
    case "$1" in
        --python) PYTHON_VERSION="$2"; shift 2 ;;
        --venv) VENV="$2"; shift 2 ;;
        --requirements) REQUIREMENTS="$2"; shift 2 ;;
        --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
        --no-compile) COMPILE=--no-compile; shift ;;
        --torch) shift 2 ;;
        *) echo "install_python_deps.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
if [[ -z "$REQUIREMENTS" || -z "$WHEELHOUSE" ]]; then
    echo "install_python_deps.sh: --requirements and --wheelhouse are required" >&2
    exit 2
fi

# EMR runs bootstrap actions as the hadoop user (sudo without a password); the test runs as root.
SUDO=sudo
if [[ $EUID -eq 0 ]]; then SUDO=""; fi

# Amazon Linux 2023 (EMR 7.x) packages python3.11 with pip, from its own repository (reached
# through the S3 gateway endpoint in a private subnet).
PY="python${PYTHON_VERSION}"
if ! command -v "$PY" >/dev/null 2>&1; then
    $SUDO dnf install -y -q "python${PYTHON_VERSION}" "python${PYTHON_VERSION}-pip"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [[ "$WHEELHOUSE" == s3://* ]]; then
    aws s3 cp --recursive --only-show-errors "${WHEELHOUSE%/}/" "$WORK/wheels/"
    WHEELS="$WORK/wheels"
else
    WHEELS="$WHEELHOUSE"
fi
# Staging uploads the manifest last: without it the wheelhouse is incomplete.
if [[ ! -f "$WHEELS/MANIFEST.json" ]]; then
    echo "install_python_deps.sh: no MANIFEST.json in the wheelhouse $WHEELHOUSE (incomplete upload?)" >&2
    exit 1
fi
LOCK="$REQUIREMENTS"
if [[ "$REQUIREMENTS" == s3://* ]]; then
    aws s3 cp --only-show-errors "$REQUIREMENTS" "$WORK/requirements.txt"
    REQUIREMENTS="$WORK/requirements.txt"
fi

# The lock and the wheelhouse are the whole truth: no pip configuration of the machine (extra
# indexes, find-links, constraints) may add to them.
for variable in $(compgen -e); do
    if [[ "$variable" == PIP_* ]]; then unset "$variable"; fi
done
export PIP_CONFIG_FILE=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1

# The lock pins pip too: run it from its wheel (a wheel is importable as a zip), so the venv needs
# no ensurepip and gets the locked pip with everything else.
PIP_WHEEL=$(find "$WHEELS" -maxdepth 1 -name 'pip-*.whl' | head -1)
if [[ -z "$PIP_WHEEL" ]]; then
    echo "install_python_deps.sh: no pip wheel in the wheelhouse $WHEELHOUSE (the lock pins pip: make lock)" >&2
    exit 1
fi

$SUDO mkdir -p "$(dirname "$VENV")"
$SUDO "$PY" -m venv --without-pip "$VENV"
# --require-hashes: a wheel whose hash differs from the lock's stops the install.
if ! $SUDO env PIP_CONFIG_FILE=/dev/null "$VENV/bin/python" "$PIP_WHEEL/pip" install --quiet "$COMPILE" --no-index \
        --find-links "$WHEELS" --only-binary=:all: --require-hashes -r "$REQUIREMENTS" 2>"$WORK/pip.err"; then
    # pip names the package under "DO NOT MATCH THE HASHES" as "    name==version from file://...".
    MISMATCH=$(grep -A1 "DO NOT MATCH THE HASHES" "$WORK/pip.err" | grep -oE "^ +[^ ]+==[^ ]+" | head -1 | tr -d " " || true)
    if [[ -n "$MISMATCH" ]]; then
        echo "install_python_deps.sh: $MISMATCH in the wheelhouse $WHEELHOUSE does not match its hash in $LOCK (build and stage the wheelhouse of this lock: make wheelhouse)" >&2
    else
        cat "$WORK/pip.err" >&2
        echo "install_python_deps.sh: pip install from the wheelhouse $WHEELHOUSE failed (pip's message above)" >&2
    fi
    exit 1
fi
$SUDO chmod -R a+rX "$VENV"
"$VENV/bin/python" -c "import torch, numpy, pyarrow, tokenizers; print('torch', torch.__version__)"
