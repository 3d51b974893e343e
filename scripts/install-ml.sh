#!/usr/bin/env bash
# Installs the CPU ML stack of the job steps into a virtual environment:
#   bash scripts/install-ml.sh [VENV_PYTHON]      (default: .venv/bin/python)
# 1. requirements/ml.txt (exact pins), from a wheelhouse in $EDGETUNE_CACHE/wheels/pypi/
#    filled once (torch and its CUDA libraries are not downloaded again);
# 2. mmcv 2.1.0, built from its sdist with the C++ ops on CPU (MMCV_WITH_OPS=1 FORCE_CUDA=0,
#    --no-build-isolation against setuptools 80.x; ~6 minutes on 2 cores). The wheel is
#    cached in $EDGETUNE_CACHE/wheels/<python>-torch<version>/ and reused by later runs,
#    other clones and CI on the same machine.
# Idempotent: a stamp in the venv, keyed on ml.txt + this script + the python/torch
# the mmcv wheel was built for, makes a repeated run a few-second check.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VPY=${1:-$ROOT/.venv/bin/python}
[ -x "$VPY" ] || { echo "install-ml: no python at $VPY" >&2; exit 2; }
VENV=$(cd "$(dirname "$VPY")/.." && pwd)
CACHE=${EDGETUNE_CACHE:-$HOME/.cache/edgetune}
MMCV_VERSION=2.1.0
PIP=("$VPY" -m pip --disable-pip-version-check)

stamp=$( { cat requirements/ml.txt scripts/install-ml.sh; "$VPY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.ml-stamp" 2>/dev/null)" = "$stamp" ] \
   && "$VPY" -c 'import mmcv, mmcv.ops, mmdet, mmengine, mmdeploy, onnxruntime, pycocotools' 2>/dev/null; then
  echo "==> ML stack up to date ($VENV)"
  exit 0
fi

t0=$(date +%s)
# The pinned wheels are kept in a wheelhouse and installed from it with --no-index: pip's
# own HTTP cache (left on) stores nothing when the package proxy sends no caching headers,
# as it does on this network, and the CUDA build of torch + its nvidia-* wheels are ~3 GB.
WHEELHOUSE=$CACHE/wheels/pypi
mkdir -p "$WHEELHOUSE"
echo "==> installing the ML stack (requirements/ml.txt) into $VENV"
if ! "${PIP[@]}" install -q --no-index --find-links "$WHEELHOUSE" -r requirements/ml.txt 2>/dev/null; then
  echo "==> fetching the pinned wheels into $WHEELHOUSE (once)"
  "${PIP[@]}" wheel -q -w "$WHEELHOUSE" -r requirements/ml.txt
  "${PIP[@]}" install -q --no-index --find-links "$WHEELHOUSE" -r requirements/ml.txt
fi

torch_version=$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')
pytag=$("$VPY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELS=$CACHE/wheels/$pytag-torch$torch_version
mkdir -p "$WHEELS"
wheel=$(ls "$WHEELS"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  echo "==> building mmcv $MMCV_VERSION from source with CPU ops (several minutes; cached in $WHEELS)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "${PIP[@]}" wheel -q --no-deps --no-build-isolation --no-binary mmcv \
      -w "$tmp" "mmcv==$MMCV_VERSION"
  built=$(ls "$tmp"/mmcv-$MMCV_VERSION-*.whl)
  mv "$built" "$WHEELS/"   # move only a complete wheel into the cache
  wheel=$WHEELS/$(basename "$built")
else
  echo "==> reusing cached mmcv wheel $wheel"
fi
# --no-deps: the wheel's dependencies are all pinned in ml.txt, already installed.
"${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"

"$VPY" - <<'PY'
import mmcv, mmcv.ops, mmdet, mmengine, mmdeploy, onnx, onnxruntime, pycocotools, torch, cv2
print(f"==> torch {torch.__version__}  mmcv {mmcv.__version__}  mmdet {mmdet.__version__}  "
      f"mmengine {mmengine.__version__}  mmdeploy {mmdeploy.__version__}  onnx {onnx.__version__}  "
      f"onnxruntime {onnxruntime.__version__}  opencv {cv2.__version__}")
PY
echo "$stamp" > "$VENV/.ml-stamp"
echo "==> ML stack installed in $(( $(date +%s) - t0 )) s"
