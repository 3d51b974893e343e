"""The Argo CD health check (deploy/argocd/health/health.lua), run by a real Lua 5.1
interpreter (Argo CD embeds gopher-lua, a Lua 5.1) on status objects of the three kinds,
the argocd-cm snippet that installs it, and the example Application.

tests/cluster/test_chart_cluster.py runs the same script on status objects the real operator
wrote in the local cluster.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ARGOCD = ROOT / "deploy" / "argocd"
KINDS = ("FinetuneJob", "ModelConversion", "EdgeBenchmark")
sys.path.insert(0, str(ARGOCD))

import gen_argocd_cm  # noqa: E402


def lua_binary() -> str:
    cache = Path(os.environ.get("EDGETUNE_CACHE") or Path.home() / ".cache" / "edgetune")
    for name in ("lua5.1", "lua5.4", "lua"):
        found = shutil.which(name, path=str(cache / "tools" / "bin")) or shutil.which(name)
        if found:
            return found
    msg = "lua5.1 not found: run scripts/install-tools.sh (make tools)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def to_lua(value) -> str:
    """A JSON-like value as a Lua literal (what Argo CD hands the script as `obj`)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes for these texts
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {to_lua(v)}" for k, v in value.items() if v is not None) + "}"
    raise TypeError(type(value))


def run_health(obj: dict, script: str | None = None) -> tuple[str, str]:
    """Run a health script the way Argo CD does: `obj` global, the script's return value."""
    script = script if script is not None else (ARGOCD / "health" / "health.lua").read_text()
    program = (f"obj = {to_lua(obj)}\n"
               f"local hs = (function()\n{script}\nend)()\n"
               "io.write(tostring(hs.status), '\\n', tostring(hs.message or ''))\n")
    proc = subprocess.run([lua_binary(), "-"], input=program, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    status, _, message = proc.stdout.partition("\n")
    assert status in ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"), status
    return status, message


def cm_scripts() -> dict[str, str]:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    return cm["data"]


def resource(kind: str, status: dict | None, generation: int = 1) -> dict:
    obj = {"apiVersion": "edgetune.io/v1alpha1", "kind": kind,
           "metadata": {"name": "balloon", "namespace": "demo", "generation": generation}, "spec": {}}
    if status is not None:
        obj["status"] = status
    return obj


def cond(type_: str, status: str, reason: str, message: str, t: str = "2026-11-25T10:00:00Z") -> dict:
    return {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": t,
            "observedGeneration": 1}


CASES = [
    # (id, status, expected health, expected message (substring))
    ("no-status", None, "Progressing", "Waiting for the edgetune operator"),
    ("pending", {"phase": "Pending", "observedGeneration": 1,
                 "conditions": [cond("Ready", "False", "Pending", "Job edgetune-balloon-finetune created")]},
     "Progressing", "Job edgetune-balloon-finetune created"),
    ("waiting", {"phase": "Waiting", "observedGeneration": 1,
                 "conditions": [cond("SourceReady", "False", "SourceNotReady", "waiting for FinetuneJob balloon")]},
     "Progressing", "waiting for FinetuneJob balloon"),
    ("running", {"phase": "Running", "observedGeneration": 1,
                 "conditions": [cond("Scheduled", "True", "Scheduled", "Pod bound to gpu-node-0", "2026-11-25T10:00:00Z"),
                                cond("Ready", "False", "Running", "training: epoch 12/40", "2026-11-25T10:05:00Z")]},
     "Progressing", "training: epoch 12/40"),
    ("running-no-ready", {"phase": "Running", "observedGeneration": 1,
                          "conditions": [cond("Scheduled", "True", "Scheduled", "Pod bound to jetson-orin-0")]},
     "Progressing", "Pod bound to jetson-orin-0"),
    ("succeeded", {"phase": "Succeeded", "observedGeneration": 1,
                   "conditions": [cond("Ready", "True", "Succeeded", "bbox mAP 0.700 (base 0.185)")]},
     "Healthy", "bbox mAP 0.700 (base 0.185)"),
    ("ready-without-phase", {"conditions": [cond("Ready", "True", "Succeeded", "pipeline p50 16.6 ms")]},
     "Healthy", "pipeline p50 16.6 ms"),
    ("failed-phase", {"phase": "Failed", "observedGeneration": 1,
                      "conditions": [cond("Ready", "False", "Failed", "step failed"),
                                     cond("Failed", "True", "DatasetNotFound", "no dataset at /data/balloon")]},
     "Degraded", "no dataset at /data/balloon"),
    ("failed-condition-only", {"phase": "Running",
                               "conditions": [cond("Failed", "True", "BackoffLimitExceeded", "Job has reached the specified backoff limit")]},
     "Degraded", "backoff limit"),
    ("failed-no-conditions", {"phase": "Failed"}, "Degraded", "Failed"),
    ("stale-generation", {"phase": "Succeeded", "observedGeneration": 1,
                          "conditions": [cond("Ready", "True", "Succeeded", "done")]},
     "Progressing", "generation 2"),
    ("empty-conditions", {"phase": "Pending", "conditions": []}, "Progressing", "Pending"),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_health(kind, case):
    name, status, want, message = case
    obj = resource(kind, copy.deepcopy(status), generation=2 if name == "stale-generation" else 1)
    got, msg = run_health(obj, cm_scripts()[gen_argocd_cm.key(kind)])
    assert got == want
    assert message.lower() in msg.lower()


def test_health_runs_in_lua_5_1():
    """Argo CD's gopher-lua is Lua 5.1: the script must not need a newer Lua."""
    lua = lua_binary()
    if not os.path.basename(lua).startswith("lua5.1"):
        pytest.skip(f"only {lua} here")
    out = subprocess.run([lua, "-v"], capture_output=True, text=True)
    assert "5.1" in (out.stdout + out.stderr)


def test_argocd_cm_is_generated_from_health_lua():
    assert (ARGOCD / "argocd-cm.yaml").read_text() == gen_argocd_cm.render(), \
        "deploy/argocd/argocd-cm.yaml is out of date: run make argocd-cm"
    data = cm_scripts()
    script = (ARGOCD / "health" / "health.lua").read_text()
    assert set(data) == {f"resource.customizations.health.edgetune.io_{k}" for k in KINDS}
    assert all(v == script for v in data.values())


def test_argocd_cm_keys_match_the_crds():
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        key = f"resource.customizations.health.{crd['spec']['group']}_{crd['spec']['names']['kind']}"
        assert key in cm_scripts(), key


def test_example_application():
    app = yaml.safe_load((ROOT / "examples" / "argocd-application.yaml").read_text())
    assert app["apiVersion"] == "argoproj.io/v1alpha1" and app["kind"] == "Application"
    src = app["spec"]["source"]
    assert (ROOT / src["path"] / "Chart.yaml").exists()
    values = yaml.safe_load((ROOT / src["path"] / "values.yaml").read_text())
    for key in src["helm"]["valuesObject"]:
        assert key in values, f"valuesObject sets {key}, not a chart value"
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
