#!/usr/bin/env bash
# Create (if missing) the virtual environment at .venv in the repo root and install spine with its dev
# extra into it. Idempotent: a second call only re-checks the install. Uses uv (from PyPI) because it
# installs from its cache by hard links: the torch install is minutes cold, seconds warm.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
if [ ! -x .venv/bin/uv ]; then
    echo "[setup] installing uv into .venv"
    .venv/bin/python -m pip install --quiet --disable-pip-version-check uv
fi
stamp=.venv/.spine-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "[setup] installing spine and its dependencies into .venv (first time: a few minutes, torch is large)"
    .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[dev]"
    touch "$stamp"
fi
