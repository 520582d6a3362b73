#!/usr/bin/env bash
# Reproduce the study end to end: papermill executes notebooks 01..07 for one profile (skipping
# finished, unchanged jobs), then paper/ is built from the results.
#   ./run_all.sh [--profile smoke|quick|full|full128|full224] [--override FILE] [--only 01,03]
#                [--datasets a,b] [--dry-run] [--results DIR] [--force]
#                [--launcher local|slurm] [--slurm-cluster slurm|local]
# Offline: MEDSTUDY_DATA_DIR=../shared/data ./run_all.sh
# No cd here: relative MEDSTUDY_DATA_DIR / MEDSTUDY_RESULTS_DIR / --results mean "relative to
# where you typed the command", and medstudy.grid pins them before any kernel starts.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/scripts/env.sh"
exec "$PY" -m medstudy.grid "$@"
