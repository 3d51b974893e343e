"""Writes argocd-cm.yaml: the argocd-cm entries that install health/health.lua for the
three edgetune.io kinds. Run `make argocd-cm` (or this file) after editing health.lua;
tests/unit/test_argocd_health.py fails when the two drift."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "contract"))
from edgetune_contract.names import GROUP, KINDS  # noqa: E402

HEADER = """\
# Argo CD health checks for the edgetune.io custom resources. Generated from
# deploy/argocd/health/health.lua by deploy/argocd/gen_argocd_cm.py (make argocd-cm): do not edit.
# Merge into Argo CD's argocd-cm, for example:
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file deploy/argocd/argocd-cm.yaml
# (or add the keys to the argo-cd Helm chart's configs.cm values).
# Without them Argo CD shows every custom resource as Healthy as soon as it exists.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def key(kind: str) -> str:
    return f"resource.customizations.health.{GROUP}_{kind}"


def render() -> str:
    lua = (HERE / "health" / "health.lua").read_text()
    body = "".join("    " + line if line.strip() else "\n" for line in lua.splitlines(keepends=True))
    if not body.endswith("\n"):
        body += "\n"
    return HEADER + "".join(f"  {key(kind)}: |\n{body}" for kind in KINDS)


if __name__ == "__main__":
    out = HERE / "argocd-cm.yaml"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if out.read_text() == text else f"{out} is out of date: run make argocd-cm")
    out.write_text(text)
    print(f"wrote {out}")
