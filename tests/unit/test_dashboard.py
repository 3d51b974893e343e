"""The Grafana dashboard (charts/edgetune/dashboards/edgetune.json): well-formed, every query
parses as PromQL (promtool), uses only the operator's metrics with their own labels, and
covers every metric. tests/cluster/test_prometheus.py runs every query against a real
Prometheus scraping the real operator.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml
from support import tool  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "edgetune" / "dashboards" / "edgetune.json"
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "jobs"))

# The metric names and labels the lead fixed for the operator (the counters with _total).
METRICS = {
    "edgetune_finetune_map_ratio": {"namespace", "name", "model", "which", "iou"},
    "edgetune_finetune_progress_ratio": {"namespace", "name"},
    "edgetune_conversion_map_ratio": {"namespace", "name", "model", "backend", "precision", "which"},
    "edgetune_conversion_map_drop_ratio": {"namespace", "name", "model", "backend", "precision"},
    "edgetune_benchmark_latency_seconds": {"namespace", "name", "model", "device", "backend", "precision",
                                           "stage", "quantile"},
    "edgetune_benchmark_throughput_fps": {"namespace", "name", "model", "device", "backend", "precision"},
    "edgetune_benchmark_last_run_timestamp_seconds": {"namespace", "name"},
    "edgetune_benchmark_peak_memory_bytes": {"namespace", "name", "model", "device", "backend", "precision"},
    **{f"edgetune_sweep_{m}": {"namespace", "name", "conversion", "device", "backend", "precision"} | extra
       for m, extra in (("latency_seconds", {"quantile"}), ("throughput_fps", set()), ("peak_memory_bytes", set()),
                        ("map_drop_ratio", set()), ("model_size_bytes", set()), ("best_info", set()))},
    "edgetune_benchmark_device_latency_seconds": {"namespace", "name", "model", "backend", "precision", "node",
                                                  "device", "quantile"},
    "edgetune_benchmark_device_throughput_fps": {"namespace", "name", "model", "backend", "precision", "node",
                                                 "device"},
    "edgetune_resources": {"kind", "phase"},
    "edgetune_job_duration_seconds": {"namespace", "name", "kind", "step"},
    "edgetune_reconcile_errors_total": {"kind", "reason"},
    "edgetune_job_failures_total": {"kind", "step"},
}
# What Grafana substitutes before a query reaches Prometheus (the values a test uses).
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s", "$namespace": ".*"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels") or [])
    return out


def queries(dash: dict | None = None) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana variables substituted."""
    dash = dash or dashboard()
    out = []
    for p in panels(dash):
        for t in p.get("targets") or []:
            expr = t["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            out.append((p["title"], expr))
    return out


def test_dashboard_shape():
    dash = dashboard()
    assert dash["uid"] == "edgetune-overview" and dash["title"]
    assert dash["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    templ = {v["name"]: v for v in dash["templating"]["list"]}
    assert templ["datasource"]["type"] == "datasource" and templ["datasource"]["query"] == "prometheus"
    for p in panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p["type"] in {"timeseries", "stat", "bargauge", "table", "gauge"}
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
    for title, expr in queries():
        assert "$" not in expr, f"{title}: unknown Grafana variable in {expr}"


def test_queries_use_the_operators_metrics_and_labels():
    used = set()
    for title, expr in queries():
        names = set(re.findall(r"\bedgetune_[a-z_]+", expr))
        assert names, f"{title}: no edgetune metric in {expr}"
        assert names <= set(METRICS), f"{title}: unknown metrics {names - set(METRICS)}"
        used |= names
        # label matchers {a="..", b=~".."} and by (...) clauses name labels the metric has
        for name in names:
            for m in re.finditer(rf"{name}\{{([^}}]*)\}}", expr):
                labels = set(re.findall(r"(\w+)\s*[=!~]+\s*\"", m.group(1)))
                assert labels <= METRICS[name], f"{title}: {name} has no labels {labels - METRICS[name]}"
        for m in re.finditer(r"\bby\s*\(([^)]*)\)", expr):
            labels = {x.strip() for x in m.group(1).split(",")}
            assert any(labels <= METRICS[n] for n in names), f"{title}: by ({labels})"
    assert used == set(METRICS), f"metrics on no panel: {set(METRICS) - used}"
    var = {v["name"]: v for v in dashboard()["templating"]["list"]}["namespace"]
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
    assert m and m.group(2) in METRICS[m.group(1)]


def test_metrics_are_the_ones_the_operator_serves():
    from edgetune_operator import metrics

    served = {n: set(lbl) for n, (_, lbl) in metrics.GAUGES.items()}
    served["edgetune_reconcile_errors_total"] = {"kind", "reason"}
    served["edgetune_job_failures_total"] = {"kind", "step"}
    assert served == METRICS
    src = (ROOT / "operator" / "edgetune_operator" / "metrics.py").read_text()
    assert 'Counter("edgetune_reconcile_errors"' in src and 'Counter("edgetune_job_failures"' in src


def test_queries_parse(tmp_path):
    """promtool checks PromQL inside rule files: one recording rule per panel query."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries())]
    var = {v["name"]: v for v in dashboard()["templating"]["list"]}["namespace"]["query"]["query"]
    m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var)
    rules.append({"record": "dashboard:namespace_var", "expr": f"count by ({m.group(2)}) ({m.group(1)})"})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
