#!/usr/bin/env bash
# Reproduce the study end to end: papermill executes notebooks 01..07 for one profile (skipping
# finished, unchanged jobs), then paper/ is built from the results.
#   ./run_all.sh [--profile smoke|quick|full] [--only 01,03] [--datasets a,b] [--dry-run]
#                [--results DIR] [--force] [--launcher local|slurm]
# Offline: MEDSTUDY_DATA_DIR=../shared/data ./run_all.sh
set -euo pipefail
# Relative data/results dirs mean "relative to where you typed the command": pin them first.
for var in MEDSTUDY_DATA_DIR MEDSTUDY_RESULTS_DIR; do
  if [[ -n "${!var:-}" ]]; then export "$var=$(realpath -m "${!var}")"; fi
done
cd "$(dirname "$0")"
source scripts/env.sh
exec "$PY" -m medstudy.grid "$@"
