#!/usr/bin/env bash
# The test command of the README: set up .venv if needed, lint (ruff: pyflakes, import order, broad excepts; the
# rules are pyproject.toml's [tool.ruff]), then run the whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k metric).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
.venv/bin/ruff check --quiet spine tests benchmarks scripts
exec .venv/bin/python -m pytest -n 2 "$@"
