#!/usr/bin/env bash
# The demo on built-in synthetic data: the whole pipeline of configs/pipelines/demo.yaml
# (synthetic DICOMs → COCO → four detectors + the gate → fusions → sweep → leaderboard, report,
# and the submission for a synthetic unlabelled test set), then its ensemble exported as one folder (python -m infer export) and run on
# four of the synthetic DICOMs with overlays and DICOM Structured Reports (python -m infer predict).
# Steps whose outputs exist are skipped; extra arguments go to `python -m pipeline run`
# (e.g. --force, --work-dir DIR, --set device=cpu) and, where they mean the same, to the export.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export YOLO_OFFLINE=1 MPLBACKEND=Agg
PY="$ROOT/.venv/bin/python"
CONFIG="${CXRFUSE_DEMO_CONFIG:-configs/pipelines/demo.yaml}"
"$PY" -m pipeline run "$CONFIG" "$@"

# the work folder and the --set overrides the run was given name its models for the export
WORK="$("$PY" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("work_dir") or "work/pipeline")' "$CONFIG")"
EXPORT_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --work-dir) WORK="$2"; EXPORT_ARGS+=(--work-dir "$2"); shift 2 ;;
        --work-dir=*) WORK="${1#*=}"; EXPORT_ARGS+=("$1"); shift ;;
        --set) EXPORT_ARGS+=(--set "$2"); shift 2 ;;
        --set=*) EXPORT_ARGS+=("$1"); shift ;;
        *) shift ;;
    esac
done
"$PY" -m infer export "$CONFIG" ${EXPORT_ARGS[@]+"${EXPORT_ARGS[@]}"} --out "$WORK/bundle" --force
# four of the synthetic DICOMs, as new images
mapfile -t DICOMS < <(find "$WORK/raw/train" -name '*.dicom' | sort | head -n 4)
"$PY" -m infer predict "$WORK/bundle" "${DICOMS[@]}" --out "$WORK/infer" --overlays --sr
echo "bundle: $WORK/bundle; answers: $WORK/infer (predictions.json, predictions.csv, overlays/, sr/)"
echo "leaderboard: $WORK/leaderboard/leaderboard.md; report: $WORK/report/index.html"
echo "note: synthetic data. These scores show that every step works, not how well: the lesions are bright"
echo "shapes drawn to be learnt in minutes and the gate separates normal from abnormal perfectly, so they are"
echo "no evidence about real chest X-rays. README.md, 'Try it on the demo', shows what to run next."
