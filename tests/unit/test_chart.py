"""The Helm chart (charts/edgetune): helm lint, helm template, and that what it renders is
the operator's own: the CRDs of crds/, the RBAC of operator/rbac/, the settings of
operator/edgetune_operator/settings.py, the dashboard, alert rules that promtool accepts and
that fire when they should (promtool test rules).

Needs helm and promtool: scripts/install-tools.sh (make tools). Outside CI a missing tool
skips these tests with that hint; in CI (CI=true) it fails them.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from support import tool  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "edgetune"
RELEASE = "edgetune"
NAMESPACE = "edgetune-system"
ALL_ON = ["--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
          "--set", "grafanaDashboard.enabled=true", "--set", "storage.create=true"]

for _p in (ROOT / "jobs", ROOT / "operator"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def helm(*args: str) -> str:
    proc = subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def render(*extra: str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *extra)
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str) -> dict:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def default_docs() -> list[dict]:
    return render()


@pytest.fixture(scope="module")
def all_docs() -> list[dict]:
    return render(*ALL_ON)


def container(docs: list[dict]) -> dict:
    dep = one(docs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def env_of(docs: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(docs)["env"]}


# --- lint and shape -------------------------------------------------------------------------------

@pytest.mark.parametrize("values", [[], ALL_ON], ids=["defaults", "all-on"])
def test_helm_lint_strict(values):
    out = helm("lint", "--strict", str(CHART), *values)
    assert "0 chart(s) failed" in out


def test_default_objects(default_docs):
    kinds = sorted(d["kind"] for d in default_docs)
    rbac = [d["kind"] for d in rbac_source_docs() if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role",
                                                                  "RoleBinding")]
    assert "ClusterRole" in rbac and "ClusterRoleBinding" in rbac
    assert kinds == sorted(["ServiceAccount", "Deployment", "Service", "ConfigMap"] + rbac)


def test_optional_objects(all_docs, default_docs):
    extra = sorted(d["kind"] for d in all_docs if d not in default_docs)
    assert extra == ["PersistentVolumeClaim", "PrometheusRule", "ServiceMonitor"]
    off = render("--set", "grafanaDashboard.enabled=false", "--set", "rbac.create=false",
                 "--set", "serviceAccount.create=false", "--set", "metrics.service.enabled=false")
    assert [d["kind"] for d in off] == ["Deployment"]
    dep = one(off, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "default"


def test_every_object_labelled_and_namespaced(all_docs):
    for d in all_docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, d["kind"]
        assert labels["app.kubernetes.io/part-of"] == "edgetune"
        assert labels["helm.sh/chart"].startswith("edgetune-")
        if d["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == NAMESPACE, d["kind"]


def test_long_release_name_is_truncated():
    docs = render(release="a" * 53)  # the longest release name helm accepts
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]


# --- the operator Deployment --------------------------------------------------------------------

def test_deployment_runs_the_operator_hardened(default_docs):
    dep = one(default_docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = container(default_docs)
    assert c["command"] == ["python", "-m", "edgetune_operator"]
    assert (ROOT / "operator" / "edgetune_operator" / "__init__.py").exists()
    # non-root, read-only root filesystem, nothing extra
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    # resources
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    # probes on kopf's liveness endpoint, ports as the lead fixed them
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http-metrics": 8080, "http-healthz": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http-healthz"}
    env = env_of(default_docs)
    assert env["EDGETUNE_METRICS_PORT"]["value"] == "8080"
    assert env["EDGETUNE_HEALTH_PORT"]["value"] == "8081"
    # one operator at a time; the ServiceAccount token is mounted (it talks to the API server)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == one(default_docs, "ServiceAccount")["metadata"]["name"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_env_is_the_operators_settings(default_docs):
    from edgetune_operator import settings

    env = env_of(default_docs)
    ours = {k for k in env if k.startswith("EDGETUNE_")}
    unknown = ours - set(settings.ENV)
    assert not unknown, f"the chart sets settings the operator does not read: {sorted(unknown)}"
    # and the operator accepts the whole rendered environment
    plain = {k: e["value"] for k, e in env.items() if "value" in e}
    plain.update({"EDGETUNE_IDENTITY": "edgetune-abc", "POD_NAMESPACE": NAMESPACE})
    s = settings.from_env(plain)
    from edgetune_contract import names as contract

    assert s.metrics_port == 8080 and s.health_port == 8081
    assert s.gpu_node_selector == {contract.LABEL_DEVICE: contract.DEVICE_GPU}
    assert s.edge_node_selector == {contract.LABEL_DEVICE: contract.DEVICE_JETSON}
    assert s.edge_tolerations == [{"key": contract.EDGE_TAINT_KEY, "operator": "Equal", "value": "true",
                                   "effect": "NoSchedule"}]
    assert s.gpu_resources == {"limits": {contract.GPU_RESOURCE: 1}}
    assert s.artifacts_claim == "edgetune-artifacts"
    assert s.trainer_image == "ghcr.io/edgetune/trainer:0.1.0"
    assert s.jetson_image == "ghcr.io/edgetune/jetson:0.1.0"
    assert s.namespaces == [] and s.clusterwide
    assert s.lease_namespace == NAMESPACE
    assert s.job_run_as_user == 1000 and s.job_service_account is None
    assert s.gpu_runtime_class is None and s.edge_runtime_class is None
    # the chart's defaults are the operator's defaults (apart from what is release-specific)
    d = settings.Settings()
    for field in ("metrics_port", "health_port", "gpu_node_selector", "gpu_tolerations", "gpu_resources",
                  "edge_node_selector", "edge_tolerations", "edge_resources", "artifacts_claim",
                  "image_pull_policy", "job_python", "job_run_as_user", "workers", "log_level",
                  "leader_election", "deadlines", "trainer_image", "jetson_image"):
        assert getattr(s, field) == getattr(d, field), field


def test_values_reach_the_settings():
    from edgetune_operator import settings

    docs = render("--set", "operator.watchNamespaces={ml,edge}", "--set", "jobImages.trainer.digest=sha256:abc",
                  "--set", "imageRegistry=registry.local:5000/team", "--set", "storage.claimName=models",
                  "--set-json", 'jobs.gpu.tolerations=[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]',
                  "--set-json", 'jobs.deadlines={"finetune":600}', "--set", "jobs.edge.runtimeClassName=nvidia",
                  "--set", "jobs.runAsUser=null")
    env = {k: e["value"] for k, e in env_of(docs).items() if "value" in e}
    s = settings.from_env(env)
    assert s.namespaces == ["ml", "edge"]
    assert s.trainer_image == "registry.local:5000/team/ghcr.io/edgetune/trainer@sha256:abc"
    assert container(docs)["image"] == "registry.local:5000/team/ghcr.io/edgetune/operator:0.1.0"
    assert s.artifacts_claim == "models"
    assert s.gpu_tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert s.deadlines["finetune"] == 600 and s.deadlines["export"] == 3600
    assert s.edge_runtime_class == "nvidia"
    assert s.job_run_as_user is None


def test_object_storage_values_make_it_the_default_store():
    from edgetune_operator import jobspec, settings

    def env(*args):
        return {k: e["value"] for k, e in env_of(render(*args)).items() if "value" in e}

    assert settings.from_env(env()).artifacts_s3 is None  # default: the claim
    s = settings.from_env(env("--set", "objectStorage.endpoint=https://s3.example", "--set", "objectStorage.prefix=ml",
                              "--set", "objectStorage.caBundle.configMap=corp-ca"))
    store = jobspec.store_of({}, s)
    assert (store.endpoint, store.bucket, store.prefix, store.secret_name) == ("https://s3.example", "edgetune", "ml/",
                                                                            "edgetune-s3")
    assert store.ca_bundle_configmap == "corp-ca" and store.ca_bundle_key == "ca.crt"
    # the chart names the Secret and its keys; it has no place for a key's value
    values = yaml.safe_load((CHART / "values.yaml").read_text())["objectStorage"]
    assert set(values["credentialsSecret"]) == {"name", "accessKeyIDKey", "secretAccessKeyKey"}


def test_settings_change_restarts_the_pod():
    a = one(render(), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/settings"]
    b = one(render("--set", "operator.logLevel=DEBUG"), "Deployment")["spec"]["template"]["metadata"][
        "annotations"]["checksum/settings"]
    assert a != b


def test_image_tag_defaults_to_app_version(default_docs):
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container(default_docs)["image"] == f"ghcr.io/edgetune/operator:{chart['appVersion']}"
    docs = render("--set", "image.digest=sha256:0123")
    assert container(docs)["image"] == "ghcr.io/edgetune/operator@sha256:0123"


def test_metrics_service_selects_the_operator(default_docs):
    svc = one(default_docs, "Service")
    dep = one(default_docs, "Deployment")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    (port,) = svc["spec"]["ports"]
    assert port["targetPort"] == "http-metrics" and port["name"] == "http-metrics"


def test_service_monitor(all_docs):
    sm = one(all_docs, "ServiceMonitor")
    svc = one(all_docs, "Service")
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}


def test_storage_claim(all_docs):
    pvc = one(all_docs, "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == env_of(all_docs)["EDGETUNE_ARTIFACTS_CLAIM"]["value"]
    assert "storageClassName" not in pvc["spec"]  # null: the cluster's default class
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    docs = render("--set", "storage.create=true", "--set", "storage.storageClassName=")
    assert one(docs, "PersistentVolumeClaim")["spec"]["storageClassName"] == ""


# --- the same CRDs and RBAC as the operator's ---------------------------------------------------------

def test_chart_crds_are_the_repositorys_crds():
    src = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    ours = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert src, "crds/ is empty"
    assert ours == src, "charts/edgetune/crds differs from crds/: run make chart-sync"
    for name in src:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), \
            f"charts/edgetune/crds/{name} drifted from crds/{name}: run make chart-sync"
    kinds = {yaml.safe_load((ROOT / "crds" / n).read_text())["spec"]["names"]["kind"] for n in src}
    assert kinds == {"FinetuneJob", "ModelConversion", "EdgeBenchmark"}


def test_crds_in_template_output():
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds")
    crds = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"]
    src = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    assert sorted(c["metadata"]["name"] for c in crds) == sorted(c["metadata"]["name"] for c in src)


def rbac_source_docs() -> list[dict]:
    files = sorted((ROOT / "operator" / "rbac").glob("*.yaml"))
    if not files:
        pytest.fail("operator/rbac/*.yaml (the operator's RBAC source) is missing")
    docs = [d for f in files for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def test_chart_rbac_copy_is_current():
    src = sorted((ROOT / "operator" / "rbac").glob("*.yaml"))
    ours = sorted((CHART / "files" / "rbac").glob("*.yaml"))
    assert [p.name for p in ours] == [p.name for p in src], "run make chart-sync"
    for a, b in zip(src, ours):
        assert a.read_bytes() == b.read_bytes(), f"{b} drifted from {a}: run make chart-sync"


def _rules(doc: dict) -> list[dict]:
    def norm(rule: dict) -> dict:
        return {k: sorted(v) if isinstance(v, list) else v for k, v in rule.items() if v}
    return sorted((norm(r) for r in doc.get("rules") or []), key=lambda r: json.dumps(r, sort_keys=True))


def test_chart_rbac_equals_operator_rbac(default_docs):
    src = rbac_source_docs()
    for kind in ("ClusterRole", "Role"):
        want = [_rules(d) for d in src if d["kind"] == kind]
        got = [_rules(d) for d in by_kind(default_docs, kind)]
        assert sorted(map(json.dumps, got)) == sorted(map(json.dumps, want)), f"{kind} rules differ"
    sa = one(default_docs, "ServiceAccount")["metadata"]["name"]
    for kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        for b in by_kind(default_docs, kind):
            assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
            assert b["roleRef"]["kind"] == role_kind
            assert b["roleRef"]["name"] in {r["metadata"]["name"] for r in by_kind(default_docs, role_kind)}
    # least privilege: no wildcards, no secrets
    for d in by_kind(default_docs, "ClusterRole") + by_kind(default_docs, "Role"):
        for r in d["rules"]:
            assert "*" not in r.get("verbs", []) and "*" not in r.get("resources", []), r
            assert "secrets" not in r.get("resources", []), r


def test_rbac_scoped_to_served_namespaces():
    docs = render("--set", "operator.watchNamespaces={ml,edge}")
    # nodes are cluster-scoped: only their read-only binding stays cluster-wide
    (nodes_binding,) = by_kind(docs, "ClusterRoleBinding")
    nodes_role = next(r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == nodes_binding["roleRef"]["name"])
    assert nodes_role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
    (cluster_role,) = [r["metadata"]["name"] for r in by_kind(docs, "ClusterRole") if r is not nodes_role]
    scoped = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in scoped) == ["edge", "ml"]
    assert all(b["roleRef"]["name"] == cluster_role for b in scoped)
    # leader election stays in the release namespace
    (lease,) = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["kind"] == "Role"]
    assert lease["metadata"]["namespace"] == NAMESPACE


# --- dashboard --------------------------------------------------------------------------------

def test_dashboard_configmap(default_docs):
    (cm,) = [d for d in by_kind(default_docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "dashboards" / "edgetune.json").read_text()
    assert json.loads(cm["data"]["edgetune.json"]) == json.loads(shipped)
    docs = render("--set", "grafanaDashboard.namespace=monitoring",
                  "--set", "grafanaDashboard.annotations.grafana_folder=edgetune")
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "edgetune"}


# --- alert rules: promtool check rules and promtool test rules ------------------------------------

def rules_file(tmp_path: Path, docs: list[dict]) -> Path:
    rule = one(docs, "PrometheusRule")
    path = tmp_path / "edgetune.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_prometheus_rules_pass_promtool_check(tmp_path, all_docs):
    path = rules_file(tmp_path, all_docs)
    proc = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [r.get("alert") for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"] if r.get("alert")]
    assert {"EdgetuneJobFailed", "EdgetuneBenchmarkLatencyRegression"} <= set(names)


PROMTOOL_TESTS = """
rule_files: [edgetune.rules.yaml]
evaluation_interval: 1m
tests:
  # A failing Job: the failure counter appears at 1 (increase() alone would miss it).
  - interval: 1m
    input_series:
      - series: 'edgetune_job_failures_total{kind="FinetuneJob", step="finetune", job="edgetune-metrics"}'
        values: '_ _ _ 1 1 1 1 2 2 2'
    alert_rule_test:
      - eval_time: 2m
        alertname: EdgetuneJobFailed
        exp_alerts: []
      - eval_time: 4m
        alertname: EdgetuneJobFailed
        exp_alerts:
          - exp_labels: {severity: warning, kind: FinetuneJob, step: finetune}
            exp_annotations:
              summary: "edgetune FinetuneJob step finetune failed"
              description: "1 FinetuneJob Job(s) of step finetune failed in the last 15m; see the resource's status conditions (kubectl describe) for the reason."
  # A scheduled EdgeBenchmark: run 1 at 16.6 ms (t=10m), run 2 at 17.0 ms (t=30m, +2%: fine),
  # run 3 at 25.0 ms (t=50m, +47%: regression), run 4 back at 16.8 ms (t=70m).
  - interval: 1m
    input_series:
      - series: 'edgetune_benchmark_last_run_timestamp_seconds{namespace="demo", name="orin"}'
        values: '_x10 600x19 1800x19 3000x19 4200x19'
      - series: 'edgetune_benchmark_latency_seconds{namespace="demo", name="orin", model="rtmdet-tiny", device="jetson-orin", backend="tensorrt", precision="fp16", stage="pipeline", quantile="0.5"}'
        values: '_x10 0.0166x19 0.0170x19 0.0250x19 0.0168x19'
      - series: 'edgetune_benchmark_latency_seconds{namespace="demo", name="orin", model="rtmdet-tiny", device="jetson-orin", backend="tensorrt", precision="fp16", stage="inference", quantile="0.5"}'
        values: '_x10 0.0109x19 0.0110x19 0.0190x19 0.0109x19'
    alert_rule_test:
      - eval_time: 20m
        alertname: EdgetuneBenchmarkLatencyRegression
        exp_alerts: []
      - eval_time: 40m
        alertname: EdgetuneBenchmarkLatencyRegression
        exp_alerts: []
      - eval_time: 52m
        alertname: EdgetuneBenchmarkLatencyRegression
        exp_alerts:
          - exp_labels: {severity: warning, namespace: demo, name: orin, model: rtmdet-tiny, device: jetson-orin,
                         backend: tensorrt, precision: fp16, stage: pipeline, quantile: "0.5"}
            exp_annotations:
              summary: "EdgeBenchmark demo/orin is slower than its previous run"
              description: "pipeline latency (quantile 0.5) of rtmdet-tiny on jetson-orin (tensorrt/fp16) is 25ms, more than 1.2 times the previous run's."
      - eval_time: 65m
        alertname: EdgetuneBenchmarkLatencyRegression
        exp_alerts:
          - exp_labels: {severity: warning, namespace: demo, name: orin, model: rtmdet-tiny, device: jetson-orin,
                         backend: tensorrt, precision: fp16, stage: pipeline, quantile: "0.5"}
            exp_annotations:
              summary: "EdgeBenchmark demo/orin is slower than its previous run"
              description: "pipeline latency (quantile 0.5) of rtmdet-tiny on jetson-orin (tensorrt/fp16) is 25ms, more than 1.2 times the previous run's."
      - eval_time: 75m
        alertname: EdgetuneBenchmarkLatencyRegression
        exp_alerts: []
    promql_expr_test:
      - expr: 'edgetune:benchmark_latency_seconds:previous_run{stage="pipeline"}'
        eval_time: 45m
        exp_samples:
          - labels: 'edgetune:benchmark_latency_seconds:previous_run{namespace="demo", name="orin", model="rtmdet-tiny", device="jetson-orin", backend="tensorrt", precision="fp16", stage="pipeline", quantile="0.5"}'
            value: 0.0166
  # Accuracy drop after conversion, and a resource in phase Failed.
  - interval: 1m
    input_series:
      - series: 'edgetune_conversion_map_drop_ratio{namespace="demo", name="int8", model="rtmdet-tiny", backend="tensorrt", precision="int8"}'
        values: '0.05x10'
      - series: 'edgetune_conversion_map_drop_ratio{namespace="demo", name="fp16", model="rtmdet-tiny", backend="tensorrt", precision="fp16"}'
        values: '0.002x10'
      - series: 'edgetune_resources{kind="ModelConversion", phase="Failed"}'
        values: '0 1x10'
    alert_rule_test:
      - eval_time: 5m
        alertname: EdgetuneConversionAccuracyDrop
        exp_alerts:
          - exp_labels: {severity: warning, namespace: demo, name: int8, model: rtmdet-tiny, backend: tensorrt, precision: int8}
            exp_annotations:
              summary: "ModelConversion demo/int8 lost 5% mAP"
              description: "The tensorrt/int8 model of rtmdet-tiny is 5% mAP below the PyTorch model (threshold 0.02)."
      - eval_time: 8m
        alertname: EdgetuneResourceFailed
        exp_alerts:
          - exp_labels: {severity: warning, kind: ModelConversion, phase: Failed}
            exp_annotations:
              summary: "1 edgetune ModelConversion resource(s) in phase Failed"
              description: "kubectl get ModelConversion -A shows which; the Failed condition says why."
  # The operator is not scraped.
  - interval: 1m
    input_series:
      - series: 'up{job="edgetune-metrics", namespace="edgetune-system"}'
        values: '1 1 1 0 0 0 0 0 0 0 0'
    alert_rule_test:
      - eval_time: 2m
        alertname: EdgetuneOperatorDown
        exp_alerts: []
      - eval_time: 9m
        alertname: EdgetuneOperatorDown
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "The edgetune operator's metrics endpoint is not being scraped"
              description: "No up target of job edgetune-metrics in namespace edgetune-system: the operator is down or not scraped (its resources are not reconciled meanwhile)."
"""


def test_prometheus_rules_fire_when_they_should(tmp_path, all_docs):
    rules_file(tmp_path, all_docs)
    tests = tmp_path / "edgetune.rules.test.yaml"
    tests.write_text(textwrap.dedent(PROMTOOL_TESTS))
    proc = subprocess.run([tool("promtool"), "test", "rules", tests.name], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prometheus_rules_use_only_operator_metrics(all_docs):
    lead_metrics = {
        "edgetune_finetune_map_ratio", "edgetune_finetune_progress_ratio", "edgetune_conversion_map_ratio",
        "edgetune_conversion_map_drop_ratio", "edgetune_benchmark_latency_seconds",
        "edgetune_benchmark_throughput_fps", "edgetune_benchmark_last_run_timestamp_seconds",
        "edgetune_resources", "edgetune_job_duration_seconds", "edgetune_reconcile_errors_total",
        "edgetune_job_failures_total",
    }
    rule = one(all_docs, "PrometheusRule")
    for g in rule["spec"]["groups"]:
        for r in g["rules"]:
            used = set(re.findall(r"\bedgetune_[a-z_]+", r["expr"]))
            assert used <= lead_metrics, (r.get("alert") or r.get("record"), used - lead_metrics)
