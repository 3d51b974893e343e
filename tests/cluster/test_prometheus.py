"""A real Prometheus (Debian's `prometheus`) scraping the real operator during a demo-sized
run in the local cluster (FinetuneJob -> ModelConversion with verify -> EdgeBenchmark, a sweep and a fleet, with
the stand-in steps, plus a failing FinetuneJob and one whose Job the API server refuses):

- every query of every panel of the shipped Grafana dashboard returns at least one series,
  and so does the dashboard's namespace variable;
- the chart's alert rules parse (promtool check rules), load into Prometheus and evaluate
  without error; EdgetuneJobFailed fires for the failed step.

The scrape configuration mirrors the chart's ServiceMonitor (job = the metrics Service's
name, honor_labels, the release namespace as target label), against 127.0.0.1.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
import support
from support import free_port, tool  # noqa: E402
from operator_fixtures import build_standin_images, standin_settings  # noqa: E402

wait_for = functools.partial(support.wait_for, timeout=120.0, interval=0.5, retry=(Exception,))

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "edgetune"
DASHBOARD = CHART / "dashboards" / "edgetune.json"
STANDIN = ROOT / "tests" / "cluster" / "standin_step.py"
RELEASE, RELEASE_NS = "edgetune", "edgetune-system"
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


def _load(name: str, path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def http_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _apply(cluster, obj: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def _example(name: str, ns: str, **spec_extra) -> dict:
    obj = yaml.safe_load((ROOT / "examples" / "local" / name).read_text())
    obj["metadata"]["namespace"] = ns
    obj["spec"].update(spec_extra)
    return obj


def _phase(cluster, kind: str, name: str, ns: str) -> str | None:
    got = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(got.stdout).get("status", {}).get("phase") if got.returncode == 0 else None


@pytest.fixture(scope="module")
def demo_run(local_cluster, tmp_path_factory):
    """The operator (python -m edgetune_operator, stand-in steps) serving a fresh namespace and
    a second, job-quota'd one, with the demo resources applied; yields its ports."""
    if not STANDIN.exists():
        pytest.fail(f"{STANDIN.relative_to(ROOT)} (the operator's stand-in step) is missing")
    tmp_path = tmp_path_factory.mktemp("demo-run")
    namespace = f"prom-demo-{os.urandom(3).hex()}"
    quota_ns = namespace + "-quota"
    local_cluster.kubectl("create", "namespace", namespace)
    local_cluster.kubectl("create", "namespace", quota_ns)
    local_cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    metrics_port, health_port = free_port(), free_port()
    env = dict(os.environ)
    # the Jobs run the stand-in step in its image on the cluster's nodes
    env.update(standin_settings(build_standin_images(local_cluster)["standin"]))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "contract"), str(ROOT / "operator"), str(ROOT / "jobs")])
    log = open(tmp_path / "operator.log", "w")
    op = subprocess.Popen([sys.executable, "-m", "edgetune_operator", "--kubeconfig", str(local_cluster.kubeconfig),
                           "-n", namespace, "-n", quota_ns, "--metrics-port", str(metrics_port),
                           "--health-port", str(health_port), "--no-leader-election"],
                          env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT)
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2).status == 200,
                 timeout=60, what="operator /healthz")
        _apply(local_cluster, _example("00-artifacts-pvc.yaml", namespace))
        _apply(local_cluster, _example("01-finetunejob.yaml", namespace,
                                       env=[{"name": "STANDIN_SLEEP_FINETUNE", "value": "3"}]))
        _apply(local_cluster, _example("02-modelconversion.yaml", namespace))
        _apply(local_cluster, _example("03-edgebenchmark.yaml", namespace))
        # a sweep over the demo's conversion: the dashboard's sweep panels
        _apply(local_cluster, {"apiVersion": "edgetune.io/v1alpha1", "kind": "EdgeBenchmark",
                               "metadata": {"name": "balloon-sweep", "namespace": namespace},
                               "spec": {"modelConversions": ["balloon-ort"], "maxMapDrop": 0.01, "iterations": 10}})
        # a fleet benchmark over every jetson-orin node (the session cluster has one): the per-device panels
        _apply(local_cluster, {"apiVersion": "edgetune.io/v1alpha1", "kind": "EdgeBenchmark",
                               "metadata": {"name": "balloon-fleet", "namespace": namespace},
                               "spec": {"modelConversion": "balloon-ort", "fleet": {}, "iterations": 10}})
        broken = _example("01-finetunejob.yaml", namespace, env=[{"name": "STANDIN_FAIL_STEP", "value": "finetune"}])
        broken["metadata"]["name"] = "broken"
        _apply(local_cluster, broken)
        # a namespace where the API server refuses every Job (quota 0): the reconcile fails
        _apply(local_cluster, {"apiVersion": "v1", "kind": "ResourceQuota",
                               "metadata": {"name": "no-jobs", "namespace": quota_ns},
                               "spec": {"hard": {"count/jobs.batch": "0"}}})
        _apply(local_cluster, _example("00-artifacts-pvc.yaml", quota_ns))
        _apply(local_cluster, _example("01-finetunejob.yaml", quota_ns))
        yield {"namespace": namespace, "quota_ns": quota_ns, "metrics_port": metrics_port,
               "log": tmp_path / "operator.log"}
    finally:
        _stop(op)
        log.close()
        for ns in (namespace, quota_ns):
            local_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def prometheus(demo_run, tmp_path_factory):
    """Prometheus 2.x scraping the operator every second, with the chart's rules loaded."""
    tmp_path = tmp_path_factory.mktemp("prometheus")
    rendered = subprocess.run([tool("helm"), "template", RELEASE, str(CHART), "--namespace", RELEASE_NS,
                               "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.latencyRegression.lookback=1m",
                               "--show-only", "templates/prometheusrule.yaml"],
                              capture_output=True, text=True, check=True).stdout
    rules = tmp_path / "edgetune.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": yaml.safe_load(rendered)["spec"]["groups"]}, sort_keys=False))
    check = subprocess.run([tool("promtool"), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            "job_name": f"{RELEASE}-metrics",
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{demo_run['metrics_port']}"],
                                "labels": {"namespace": RELEASE_NS}}],
        }],
    }
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    check = subprocess.run([tool("promtool"), "check", "config", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([tool("prometheus"), f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(base + "/-/ready", timeout=2).status == 200, timeout=60,
                 what="Prometheus ready")
        yield base
    finally:
        _stop(proc)
        log.close()


def query(base: str, expr: str) -> list[dict]:
    data = http_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert data["status"] == "success", data
    return data["data"]["result"]


def dashboard_queries(namespace_regex: str) -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for p in dash["panels"] + [c for p in dash["panels"] for c in p.get("panels") or []]:
        for t in p.get("targets") or []:
            expr = t["expr"]
            for var, value in {**GRAFANA_VARS, "$namespace": namespace_regex}.items():
                expr = expr.replace(var, value)
            out.append((p["title"], expr))
    return out


def test_every_dashboard_query_returns_series(local_cluster, demo_run, prometheus):
    ns = demo_run["namespace"]
    for name, kind, want in (("balloon", "finetunejob", "Succeeded"), ("balloon-ort", "modelconversion", "Succeeded"),
                             ("balloon-ort-orin", "edgebenchmark", "Succeeded"), ("broken", "finetunejob", "Failed"),
                             ("balloon-fleet", "edgebenchmark", "Succeeded")):
        wait_for(lambda: _phase(local_cluster, kind, name, ns) == want, timeout=300,
                 what=f"{kind} {name} {want} (operator log: {demo_run['log']})")
    # Argo CD's health check on the real status objects of the three kinds
    argocd = _load("_edgetune_argocd_health_p", ROOT / "tests" / "unit" / "test_argocd_health.py")
    scripts = argocd.cm_scripts()
    for name, kind, want in (("balloon", "FinetuneJob", "Healthy"), ("balloon-ort", "ModelConversion", "Healthy"),
                             ("balloon-ort-orin", "EdgeBenchmark", "Healthy"), ("broken", "FinetuneJob", "Degraded")):
        obj = json.loads(local_cluster.kubectl("get", kind.lower(), name, "-n", ns, "-o", "json").stdout)
        health, message = argocd.run_health(obj, scripts[f"resource.customizations.health.edgetune.io_{kind}"])
        assert health == want and message, (kind, name, health, message, obj.get("status"))
    # the target is up and scraped
    wait_for(lambda: query(prometheus, f'up{{job="{RELEASE}-metrics"}} == 1'), timeout=30, what="target up")
    # every panel query, with the dashboard's namespace variable set to the demo namespace
    missing = {}
    deadline = time.monotonic() + 90
    todo = dashboard_queries(ns)
    while todo and time.monotonic() < deadline:
        todo = [(title, expr) for title, expr in todo if not query(prometheus, expr)]
        if todo:
            time.sleep(1)
    missing = {title: expr for title, expr in todo}
    assert not missing, f"dashboard queries with no series: {json.dumps(missing, indent=1)}; operator log: " \
                        f"{demo_run['log'].read_text()[-3000:]}"
    # the reconcile errors come from the namespace whose Jobs the API server refuses (quota)
    errors = query(prometheus, 'edgetune_reconcile_errors_total{kind="FinetuneJob"} > 0')
    assert errors, "no reconcile error counted for the quota'd FinetuneJob"
    # the figures are the stand-in step's, end to end (status -> metrics -> Prometheus)
    (ft,) = query(prometheus, f'edgetune_finetune_map_ratio{{namespace="{ns}", name="balloon", which="finetuned", iou="0.50:0.95"}}')
    assert abs(float(ft["value"][1]) - 0.700) < 1e-9
    (p50,) = query(prometheus, f'edgetune_benchmark_latency_seconds{{namespace="{ns}", name="balloon-ort-orin", '
                               f'stage="pipeline", quantile="0.5"}}')
    assert abs(float(p50["value"][1]) - 0.0164) < 1e-9
    (dev,) = query(prometheus, f'edgetune_benchmark_device_latency_seconds{{namespace="{ns}", name="balloon-fleet", '
                               f'quantile="0.5"}}')
    assert dev["metric"]["node"] == "jetson-orin-0" and abs(float(dev["value"][1]) - 0.0164) < 1e-9
    # the namespace variable offers the demo namespace
    values = http_json(prometheus + "/api/v1/label/namespace/values?" +
                       urllib.parse.urlencode({"match[]": "edgetune_job_duration_seconds"}))["data"]
    assert ns in values


def test_alert_rules_load_and_evaluate(local_cluster, demo_run, prometheus):
    ns = demo_run["namespace"]
    wait_for(lambda: _phase(local_cluster, "finetunejob", "broken", ns) == "Failed", timeout=300,
             what=f"FinetuneJob broken Failed (operator log: {demo_run['log']})")

    def rules_evaluated():
        groups = http_json(prometheus + "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("lastEvaluation", "").startswith("0001") is False for r in rules):
            return rules
        return None

    rules = wait_for(rules_evaluated, timeout=30, what="every rule evaluated")
    assert {r["name"] for r in rules} >= {"EdgetuneJobFailed", "EdgetuneBenchmarkLatencyRegression",
                                          "edgetune:benchmark_latency_seconds:previous_run"}
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad
    # the failed finetune step fires EdgetuneJobFailed
    alerts = wait_for(lambda: [a for a in http_json(prometheus + "/api/v1/alerts")["data"]["alerts"]
                               if a["labels"]["alertname"] == "EdgetuneJobFailed"], timeout=60,
                      what="EdgetuneJobFailed")
    assert alerts[0]["labels"]["kind"] == "FinetuneJob" and alerts[0]["labels"]["step"] == "finetune"
    assert "failed" in alerts[0]["annotations"]["summary"]
