#!/usr/bin/env bash
# The demo command of the README: set up .venv if needed, then run the pipeline end to end on synthetic
# studies. Arguments go to scripts/demo.py (e.g. --out demo_out --preset small --seed 0).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
