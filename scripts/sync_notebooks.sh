#!/usr/bin/env bash
# Regenerate notebooks/*.ipynb from their paired jupytext .py scripts, with outputs stripped and
# the python3 kernelspec papermill needs. Run after editing a .py (or after JupyterLab saved a
# paired .py from your .ipynb edits).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
for py in notebooks/[0-9][0-9]_*.py; do
  nb="${py%.py}.ipynb"
  # --update keeps the existing notebook's cell ids (no diff noise for unchanged cells)
  update=(); [[ -f "$nb" ]] && update=(--update)
  "$PY" -m jupytext --quiet --to ipynb "${update[@]}" --set-kernel python3 --update-metadata \
    '{"jupytext": {"formats": "ipynb,py:percent"}}' -o "$nb" "$py"
done
echo "synced: $(ls notebooks/*.ipynb | tr '\n' ' ')"
