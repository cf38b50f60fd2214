#!/usr/bin/env bash
# Install what is needed (first time only), then run the main job:
# simulate a small data set, pick, evaluate against the truth, write picks, plots and a report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/fewshotpicker demo --out demo_out "$@"
