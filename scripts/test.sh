#!/usr/bin/env bash
# The test command of the README: set up .venv if needed, then run the whole pytest suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k metric).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python -m pytest -n 2 "$@"
