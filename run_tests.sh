#!/usr/bin/env bash
# Run lint and the test suite (creating/installing the environment first if needed).
#   ./run_tests.sh [pytest args]      e.g. ./run_tests.sh -k stats -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
"$PY" -m ruff check .
"$PY" -m ruff format --check .
exec "$PY" -m pytest "$@"
