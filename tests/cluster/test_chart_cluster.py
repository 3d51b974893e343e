"""The Helm chart against the real local cluster: `helm template` applied with a server-side
dry run, then `helm install`, and the operator Pod the chart creates running for real — the
operator image built here (images/operator/Dockerfile on the local Debian base), run by a
kubelet and containerd, with the chart's securityContext (UID 65532, read-only root
filesystem), talking to the API server with in-cluster configuration (its projected
ServiceAccount token and the `kubernetes` Service, routed by kube-proxy) — reconciling
resources whose Jobs run the stand-in step in its image; the Argo CD health check runs on the
status objects it writes.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
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
STANDIN = ROOT / "tests" / "cluster" / "standin_step.py"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


argocd = _load("_edgetune_argocd_health", ROOT / "tests" / "unit" / "test_argocd_health.py")


def helm(cluster, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([tool("helm"), "--kubeconfig", str(cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def get_json(cluster, *args: str) -> dict:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=3) as resp:
        return resp.status, resp.read().decode()


def test_template_server_side_dry_run(local_cluster, namespace):
    """Every object `helm template --include-crds` renders is accepted by the real API server
    (schemas, defaulting, admission) in a server-side apply dry run. ServiceMonitor and
    PrometheusRule are left out: their CRDs (prometheus-operator) are not in this cluster;
    tests/unit/test_chart.py checks them with promtool."""
    out = subprocess.run([tool("helm"), "template", "dryrun", str(CHART), "--namespace", namespace, "--include-crds",
                          "--set", "grafanaDashboard.enabled=true", "--set", "storage.create=true"],
                         capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted({d["kind"] for d in docs})
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ClusterRoleBinding", "ServiceAccount",
            "Service", "ConfigMap", "PersistentVolumeClaim"} <= set(kinds)
    proc = local_cluster.kubectl("apply", "--server-side", "--force-conflicts", "--dry-run=server",
                                 "--field-manager=edgetune-chart-test", "-f", "-", input=out, check=False)
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    assert len(lines) == len(docs), proc.stdout
    assert all("(server dry run)" in l for l in lines), proc.stdout
    # nothing was created
    assert local_cluster.kubectl("get", "deployment", "dryrun-edgetune", "-n", namespace, check=False).returncode != 0


def _split(ref: str) -> dict:
    repo, _, tag = ref.rpartition(":")
    return {"repository": repo, "tag": tag}


@pytest.fixture
def release(local_cluster, namespace, tmp_path):
    """The chart installed into `namespace`, serving that namespace, its operator Pod running
    the local operator image, the Jobs the stand-in image; uninstalled afterwards."""
    if not STANDIN.exists():
        pytest.fail(f"{STANDIN.relative_to(ROOT)} (the operator's stand-in step) is missing")
    imgs = build_standin_images(local_cluster)
    name = "et-" + namespace[-5:]
    metrics_port, health_port = free_port(), free_port()
    override = standin_settings(imgs["standin"])["EDGETUNE_STEP_COMMAND_OVERRIDE"]
    values = {
        "image": {**_split(imgs["operator"]), "pullPolicy": "Never"},
        "jobImages": {"trainer": _split(imgs["standin"]), "jetson": _split(imgs["standin"]), "pullPolicy": "Never"},
        "operator": {
            "watchNamespaces": [namespace],
            "logLevel": "DEBUG",
            "extraEnv": [{"name": "EDGETUNE_STEP_COMMAND_OVERRIDE", "value": override}],
        },
        "metrics": {"port": metrics_port},
        "health": {"port": health_port},
        "storage": {"create": True, "storageClassName": None},
        "grafanaDashboard": {"enabled": True},
    }
    vfile = tmp_path / "values.yaml"
    vfile.write_text(yaml.safe_dump(values))
    helm(local_cluster, "install", name, str(CHART), "--namespace", namespace, "--values", str(vfile))
    sa = get_json(local_cluster, "serviceaccount", "-n", namespace,
                  "-l", f"app.kubernetes.io/instance={name}")["items"][0]["metadata"]["name"]
    info = {"name": name, "namespace": namespace, "sa": sa, "metrics_port": metrics_port,
            "health_port": health_port, "images": imgs}
    try:
        yield info
    finally:
        if os.environ.get("EDGETUNE_TEST_KEEP_RELEASE") != "1":
            helm(local_cluster, "uninstall", name, "--namespace", namespace, "--wait", "--timeout", "60s", check=False)


def operator_pod(cluster, rel) -> dict:
    pods = get_json(cluster, "pods", "-n", rel["namespace"], "-l", f"app.kubernetes.io/instance={rel['name']}")["items"]
    return pods[0] if pods else {}


def test_helm_install_runs_the_operator(local_cluster, release):
    ns = release["namespace"]
    # the chart's objects exist, as the API server stored them
    dep = get_json(local_cluster, "deployment", "-n", ns, "-l", f"app.kubernetes.io/instance={release['name']}")["items"][0]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "edgetune_operator"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for crd in ("finetunejobs.edgetune.io", "modelconversions.edgetune.io", "edgebenchmarks.edgetune.io"):
        local_cluster.kubectl("get", "crd", crd)
    # least privilege, as the API server's RBAC sees it
    who = f"system:serviceaccount:{ns}:{release['sa']}"
    def can(*args):
        return local_cluster.kubectl("auth", "can-i", *args, "--as", who, check=False).stdout.strip() == "yes"
    assert can("create", "jobs.batch", "-n", ns)
    assert can("patch", "finetunejobs.edgetune.io", "--subresource=status", "-n", ns)
    assert can("get", "leases.coordination.k8s.io", "-n", ns)
    assert not can("get", "secrets", "-n", ns)
    assert not can("delete", "nodes")

    # the Pod is scheduled by the real scheduler and run by a kubelet, Ready by the chart's probe
    pod = wait_for(lambda: (lambda p: p if any(c["type"] == "Ready" and c["status"] == "True"
                                               for c in p.get("status", {}).get("conditions") or []) else None)(
        operator_pod(local_cluster, release)), timeout=180, what="the operator Pod Ready")
    assert pod["spec"]["nodeName"] in {n["metadata"]["name"] for n in get_json(local_cluster, "nodes")["items"]}
    assert pod["spec"]["serviceAccountName"] == release["sa"]
    (st,) = pod["status"]["containerStatuses"]
    assert st["image"] == release["images"]["operator"] and st["restartCount"] == 0
    # in-cluster configuration: no kubeconfig, the projected token of the chart's ServiceAccount
    env = {e["name"] for e in pod["spec"]["containers"][0].get("env") or []}
    assert "KUBECONFIG" not in env
    assert any(v.get("projected") for v in pod["spec"]["volumes"]), pod["spec"]["volumes"]
    ip = pod["status"]["podIP"]
    status, body = wait_for(lambda: http_get(f"http://{ip}:{release['health_port']}/healthz"), timeout=120,
                            what="the operator's /healthz")
    assert status == 200
    _, metrics = wait_for(lambda: (lambda r: r if "edgetune_resources" in r[1] else None)(
        http_get(f"http://{ip}:{release['metrics_port']}/metrics")), timeout=60, what="metrics")
    assert 'edgetune_job_failures_total{kind="FinetuneJob",step="finetune"}' in metrics


def _apply(cluster, obj: dict) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))


def _resource(kind: str, name: str, ns: str, spec: dict) -> dict:
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def finetune_spec(**extra) -> dict:
    ex = yaml.safe_load((ROOT / "examples" / "local" / "01-finetunejob.yaml").read_text())
    spec = ex["spec"]
    spec.update(extra)
    return spec


def diagnose(cluster, rel) -> str:
    """What a failing wait shows: the resources' status, the Jobs and Pods, the operator's log."""
    ns = rel["namespace"]
    parts = []
    for args in (("get", "finetunejobs,jobs,pods", "-n", ns, "-o", "wide"),
                 ("get", "finetunejobs", "-n", ns, "-o", "jsonpath={range .items[*]}{.metadata.name} {.status}{\"\\n\"}{end}"),
                 ("logs", "-n", ns, "-l", f"app.kubernetes.io/instance={rel['name']}", "--tail", "60")):
        got = cluster.kubectl(*args, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{got.stdout}{got.stderr}")
    return "\n".join(parts)


def test_chart_operator_reconciles_and_argocd_health_reads_it(local_cluster, release):
    """The chart's operator runs a FinetuneJob (stand-in step) to Succeeded, and a failing one
    to Failed; the Argo CD health check gives Healthy / Degraded (with the condition's
    message) on those real status objects, and Progressing on a fresh one."""
    ns = release["namespace"]
    wait_for(lambda: operator_pod(local_cluster, release).get("status", {}).get("phase") == "Running",
             timeout=180, what="the operator Pod Running")
    _apply(local_cluster, _resource("FinetuneJob", "ok", ns, finetune_spec()))
    _apply(local_cluster, _resource("FinetuneJob", "bad", ns, finetune_spec(
        env=[{"name": "STANDIN_FAIL_STEP", "value": "finetune"}])))

    def phase(name):
        return get_json(local_cluster, "finetunejob", name, "-n", ns).get("status", {}).get("phase")

    fresh = get_json(local_cluster, "finetunejob", "ok", "-n", ns)
    if phase("ok") not in ("Succeeded", "Failed"):
        assert argocd.run_health(fresh)[0] == "Progressing"
    try:
        wait_for(lambda: phase("ok") == "Succeeded" and phase("bad") == "Failed", timeout=240,
                 what="FinetuneJob ok Succeeded and bad Failed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(local_cluster, release)}") from None
    ok = get_json(local_cluster, "finetunejob", "ok", "-n", ns)
    health, message = argocd.run_health(ok, argocd.cm_scripts()["resource.customizations.health.edgetune.io_FinetuneJob"])
    assert health == "Healthy", (health, message, ok["status"])
    bad = get_json(local_cluster, "finetunejob", "bad", "-n", ns)
    health, message = argocd.run_health(bad)
    assert health == "Degraded" and message, (health, message, bad["status"])
    assert any(c.get("message") == message for c in bad["status"].get("conditions", [])), bad["status"]
