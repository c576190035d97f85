#!/usr/bin/env bash
# Creates .venv and installs the project with its engine and test extras. Idempotent and quick on a
# second run: an existing .venv is reused and pip runs again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.plasma-sidecar-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import sidecar, torch, diffusers" 2>/dev/null; then
  exit 0
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# torch first: on the build machines the CPU wheel of this version is on local disk; elsewhere PyPI has it.
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" || .venv/bin/python -m pip install -q torch
fi
.venv/bin/python -m pip install -q -e ".[engine,test]"
echo "$want" > "$stamp"
