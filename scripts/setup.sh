#!/usr/bin/env bash
# Creates .venv and installs the project. torch is installed first, pinned to the CPU build, so that
# no later requirement pulls a multi-GB CUDA build. Users with a GPU can set TORCH_SPEC (e.g. "torch==2.13.0"
# with their own index via PIP_EXTRA_INDEX_URL) before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/pip install -q "$TORCH_SPEC"
fi
.venv/bin/pip install -q -e ".[dev]"
echo "setup done: $(.venv/bin/python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
