#!/usr/bin/env bash
# The demo on built-in synthetic data: the whole pipeline of configs/pipelines/demo.yaml
# (synthetic DICOMs → COCO → four detectors + the gate → fusions → leaderboard, report,
# submission). Steps whose outputs exist are skipped; extra arguments go to
# `python -m pipeline run` (e.g. --force, --work-dir DIR, --set device=cpu).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export YOLO_OFFLINE=1 MPLBACKEND=Agg
exec "$ROOT/.venv/bin/python" -m pipeline run "${CXRFUSE_DEMO_CONFIG:-configs/pipelines/demo.yaml}" "$@"
