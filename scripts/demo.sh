#!/usr/bin/env bash
# The demo on built-in synthetic data. For now: synthetic VinBigData-format DICOMs →
# COCO (radiologists fused with WBF, 5 folds) → summary. Later steps (train, fuse,
# leaderboard) join as they land. Re-running skips work already done.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
WORK="${CXRFUSE_DEMO_DIR:-$ROOT/work/demo}"
cd "$ROOT"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

if [[ ! -f "$WORK/raw/train.csv" ]]; then
    step "writing synthetic VinBigData-format DICOMs to $WORK/raw"
    "$PY" -m convert synth vinbig --out "$WORK/raw" --n-images 120 --seed 0 --workers 2
else
    step "synthetic raw data exists: $WORK/raw (delete it to regenerate)"
fi
step "converting to COCO (PNG 512 px, radiologists fused with WBF at IoU 0.4, 5 folds)"
"$PY" -m convert vinbig --csv "$WORK/raw/train.csv" --images "$WORK/raw/train" --out "$WORK/coco" --size 512 --workers 2
step "validation fold"
"$PY" -m convert summary "$WORK/coco/val.json"
