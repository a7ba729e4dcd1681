#!/usr/bin/env bash
# One-command, idempotent set-up of CXRFuse's environment in .venv (Python 3.11).
#
# Installs torch/torchvision, Ultralytics, Detectron2 v0.6 (Python sources, no C++
# extension), mmcv 2.1.0 with its compiled CPU ops, mmengine, mmdet, the DICOM
# decoders and the test tools. The mmcv wheel (the slow part, ~20 min on 2 cores)
# and the patched Detectron2 wheel are built once into $CXRFUSE_CACHE (outside the
# checkout) and reused, so a second run takes seconds.
#
# Facts behind each step: docs/DESIGN.md, "Dependencies".
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CXRFUSE_VENV:-$ROOT/.venv}"
CACHE="${CXRFUSE_CACHE:-$HOME/.cache/cxrfuse}"
WHEELS="$CACHE/wheels"
PY="${CXRFUSE_PYTHON:-python3.11}"
STAMP="$VENV/.cxrfuse-setup"

TORCH_PIN="torch==2.14.1"
TORCHVISION_PIN="torchvision==0.29.1"
MMCV_VERSION="2.1.0"
D2_VERSION="0.6"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# The stamp records what was installed; if it matches this script, we are done.
WANT="$(sha256sum "$ROOT/scripts/setup.sh" "$ROOT/requirements.txt" "$ROOT/requirements-ray.txt" | sha256sum | cut -c1-16)-ray${CXRFUSE_RAY:-1}"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] \
   && "$VENV/bin/python" -c "import torch, ultralytics, mmcv.ops, mmdet, pydicom" 2>/dev/null; then
    say "environment up to date ($VENV)"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
export PIP_DISABLE_PIP_VERSION_CHECK=1

say "installing $TORCH_PIN $TORCHVISION_PIN"
"${PIP[@]}" install -q --upgrade "pip<26" >/dev/null
"${PIP[@]}" install -q "$TORCH_PIN" "$TORCHVISION_PIN"

mkdir -p "$WHEELS"

# --- mmcv 2.1.0 with ops: sdist only; needs C++20 for torch 2.14's headers. ---------
# With nvcc and a visible GPU (a GPU workstation) the ops are built for CUDA too;
# CXRFUSE_MMCV_CUDA=1 forces that (the CUDA Docker image, built without a GPU), 0 forbids it.
# Each flavour has its own cache folder.
want_cuda() {
    case "${CXRFUSE_MMCV_CUDA:-auto}" in
        1) return 0 ;;
        0) return 1 ;;
        *) command -v nvcc >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 ;;
    esac
}
if want_cuda; then
    MMCV_FLAVOUR=cuda; FORCE_CUDA=1
else
    MMCV_FLAVOUR=cpu; FORCE_CUDA=0
fi
mkdir -p "$WHEELS/mmcv-$MMCV_FLAVOUR"
MMCV_WHEEL="$(ls "$WHEELS/mmcv-$MMCV_FLAVOUR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$MMCV_WHEEL" ]]; then
    say "building the mmcv $MMCV_VERSION wheel with $MMCV_FLAVOUR ops (once; about 20 minutes on 2 cores)"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    "${PIP[@]}" install -q "setuptools<70" wheel ninja
    "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: \
        "mmcv==$MMCV_VERSION" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VERSION".tar.gz -C "$BUILD"
    sed -i 's/-std=c++17/-std=c++20/g' "$BUILD/mmcv-$MMCV_VERSION/setup.py"
    (cd "$BUILD/mmcv-$MMCV_VERSION" && MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="$(nproc)" \
        "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$BUILD/out" .)
    BUILT="$(ls "$BUILD"/out/mmcv-*.whl)"
    # atomic: only a complete wheel ever gets its real name in the cache
    DEST="$WHEELS/mmcv-$MMCV_FLAVOUR"
    cp "$BUILT" "$DEST/.partial.whl" && mv "$DEST/.partial.whl" "$DEST/$(basename "$BUILT")"
    MMCV_WHEEL="$DEST/$(basename "$BUILT")"
fi

# --- detectron2 v0.6 Python sources (pb1-detectron2 sdist) without the C++ extension. --
D2_WHEEL="$(ls "$WHEELS"/pb1_detectron2-"$D2_VERSION"-*.whl 2>/dev/null | head -1 || true)"
if [[ -z "$D2_WHEEL" ]]; then
    say "building the detectron2 $D2_VERSION wheel (Python only, torchvision ops)"
    BUILD2="$(mktemp -d)"
    "${PIP[@]}" install -q "setuptools<70" wheel
    "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: \
        "pb1-detectron2==$D2_VERSION" -d "$BUILD2"
    tar -xzf "$BUILD2"/pb1*detectron2-"$D2_VERSION".tar.gz -C "$BUILD2"
    SRC="$(find "$BUILD2" -mindepth 1 -maxdepth 1 -type d -name "pb1?detectron2-$D2_VERSION" | head -1)"
    [[ -n "$SRC" ]] || { echo "detectron2 sdist did not unpack as expected in $BUILD2" >&2; exit 1; }
    sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$SRC/setup.py"
    grep -q 'ext_modules=\[\]' "$SRC/setup.py" || { echo "detectron2 setup.py patch failed" >&2; exit 1; }
    (cd "$SRC" && "${PIP[@]}" wheel --no-deps --no-build-isolation -w "$BUILD2/out" .)
    BUILT="$(ls "$BUILD2"/out/*.whl)"
    cp "$BUILT" "$WHEELS/.partial.whl" && mv "$WHEELS/.partial.whl" "$WHEELS/$(basename "$BUILT")"
    D2_WHEEL="$WHEELS/$(basename "$BUILT")"
    rm -rf "$BUILD2"
fi

say "installing mmcv, detectron2 and the rest (requirements.txt)"
"${PIP[@]}" install -q "$MMCV_WHEEL" "$D2_WHEEL" -r "$ROOT/requirements.txt"
# Ray: only `python -m pipeline run --executor ray` needs it (and its tests); CXRFUSE_RAY=0 leaves it out.
if [[ "${CXRFUSE_RAY:-1}" != "0" ]]; then
    say "installing the Ray extra (requirements-ray.txt; CXRFUSE_RAY=0 skips it)"
    "${PIP[@]}" install -q -r "$ROOT/requirements-ray.txt"
fi
# torch declares setuptools>=77; MMEngine's `mmdet::` config inheritance needs pkg_resources, gone in 81.
"${PIP[@]}" install -q "setuptools>=77.0.3,<81"
"${PIP[@]}" install -q --no-deps -e "$ROOT"

say "checking imports"
YOLO_OFFLINE=1 "$VENV/bin/python" - <<'PYEOF'
import importlib, sys, types
import PIL.Image
if not hasattr(PIL.Image, "LINEAR"):
    PIL.Image.LINEAR = PIL.Image.BILINEAR
sys.modules.setdefault("detectron2._C", types.ModuleType("detectron2._C"))
for name in ("torch", "torchvision", "ultralytics", "detectron2.modeling", "mmcv.ops", "mmdet.models",
             "ensemble_boxes", "pycocotools.cocoeval", "pydicom", "pylibjpeg"):
    importlib.import_module(name)
import torch, mmcv, mmdet, ultralytics
print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmdet {mmdet.__version__}, ultralytics {ultralytics.__version__}")
PYEOF
echo "$WANT" > "$STAMP"
say "done: activate with 'source $VENV/bin/activate'"
