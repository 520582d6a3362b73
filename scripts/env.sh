# shellcheck shell=bash
# Sourced by run_all.sh and run_tests.sh: find or create the Python environment, install the
# package (editable, with dev extras) when it is missing or pyproject.toml changed, and export
# PY (the interpreter to use). An active virtualenv/conda env is used as it is; otherwise the
# project venv .venv is created.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" ]]; then
  PY="$(command -v python)"
else
  if [[ ! -x "$ROOT/.venv/bin/python" ]]; then
    echo "[medstudy] creating the project venv in $ROOT/.venv" >&2
    "${PYTHON:-python3}" -m venv "$ROOT/.venv"
  fi
  PY="$ROOT/.venv/bin/python"
fi

want="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
prefix="$("$PY" -c 'import sys; print(sys.prefix)')"
stamp="$prefix/.medstudy-install-$want"
if [[ ! -f "$stamp" ]] || ! "$PY" -c "import medstudy, torch, lightly, papermill" 2>/dev/null; then
  echo "[medstudy] installing medstudy and its dependencies into $prefix (a few minutes)" >&2
  "$PY" -m pip install --upgrade --quiet pip
  "$PY" -m pip install --quiet -e "$ROOT[dev]"
  rm -f "$prefix"/.medstudy-install-*
  touch "$stamp"
fi
export PY
