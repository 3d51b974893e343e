#!/usr/bin/env bash
# Installs everything edgetune needs into ./.venv, from pinned versions.
#   scripts/install.sh          operator + jobs (the full CPU ML stack) + test tools
#   scripts/install.sh --base   operator + test tools only (what images/operator has)
# Heavy builds (the mmcv wheel, the Go binaries) are cached in $EDGETUNE_CACHE
# (default ~/.cache/edgetune) so that a second run, or CI in a fresh clone, reuses them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export EDGETUNE_CACHE=${EDGETUNE_CACHE:-$HOME/.cache/edgetune}
mkdir -p "$EDGETUNE_CACHE"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
MODE=${1:-full}

stamp_of() { cat "$@" pyproject.toml | sha256sum | cut -c1-16; }

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
VPY=$ROOT/.venv/bin/python

base_stamp=$(stamp_of requirements/base.txt)
if [ "$(cat .venv/.base-stamp 2>/dev/null)" != "$base_stamp" ]; then
  echo "==> installing operator and test dependencies (requirements/base.txt)"
  "$VPY" -m pip install -q --disable-pip-version-check -r requirements/base.txt
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  echo "$base_stamp" > .venv/.base-stamp
else
  echo "==> operator and test dependencies up to date"
fi

if [ "$MODE" != "--base" ]; then
  bash scripts/install-ml.sh "$VPY"
fi
echo "==> install done"
