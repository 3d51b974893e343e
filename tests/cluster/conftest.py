"""Fixtures for tests against the local Kubernetes cluster (localcluster/).

``local_cluster`` (session): a freshly started cluster (real kube-apiserver, controller-manager,
scheduler, etcd; real nodes gpu-node-0 and jetson-orin-0, each a kubelet with its own
containerd; kube-proxy, CoreDNS) and its admin kubeconfig; stopped and removed at the end of
the session. Its data live in localcluster/.data/test-<pid> (or $EDGETUNE_TEST_CLUSTER_DIR,
then kept); set EDGETUNE_TEST_CLUSTER_KEEP=1 to leave it running.

``namespace`` (function): a new namespace for one test, deleted afterwards.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT / "localcluster") not in sys.path:
    sys.path.insert(0, str(_ROOT / "localcluster"))

from edgetune_localcluster import LocalCluster, images  # noqa: E402


def _sweep_stale_test_clusters(parent: Path) -> None:
    """Stop and remove the clusters of test sessions that died without cleaning up."""
    for d in parent.glob("test-*"):
        try:
            owner = int(d.name.split("-", 1)[1])
        except ValueError:
            continue
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            LocalCluster(d).destroy()


def nodes_at_failure(cluster: LocalCluster) -> str:
    """What a failed cluster test's report adds: the free disk and each node's taints and
    pressure conditions. A full disk shows up in a test as Pods that never schedule ('had
    untolerated taint(s)') or a phase that never comes; this names the cause in the CI log."""
    lines = [images.disk_report(cluster.data_dir)]
    try:
        got = cluster.kubectl("get", "nodes", "-o", "json", check=False, timeout=15)
        for node in json.loads(got.stdout or "{}").get("items", []):
            conds = {c["type"]: f"{c['status']} ({c.get('reason', '')})" for c in node["status"].get("conditions", [])
                     if c["type"] == "Ready" or c["status"] == "True"}
            taints = [f"{t['key']}:{t['effect']}" for t in node["spec"].get("taints", [])]
            lines.append(f"{node['metadata']['name']}: {conds}; taints {taints}")
        if got.returncode != 0:
            lines.append(f"kubectl get nodes: {got.stderr.strip()}")
    except Exception as exc:  # a report must not fail the report
        lines.append(f"nodes unreadable: {exc!r}")
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, LocalCluster) and value.kubeconfig.exists():
                report.sections.append((f"nodes of {value.data_dir.name} at the failure", nodes_at_failure(value)))
                break


@pytest.fixture(scope="session")
def local_cluster():
    """A fresh cluster for this test session (its own folder and ports, so parallel sessions
    on one machine do not disturb each other)."""
    keep = os.environ.get("EDGETUNE_TEST_CLUSTER_KEEP") == "1"
    if os.environ.get("EDGETUNE_TEST_CLUSTER_DIR"):
        data_dir = Path(os.environ["EDGETUNE_TEST_CLUSTER_DIR"])
    else:
        parent = _ROOT / "localcluster" / ".data"
        parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale_test_clusters(parent)
        data_dir = parent / f"test-{os.getpid()}"
    cluster = LocalCluster(data_dir)
    cluster.up(fresh=True)
    try:
        yield cluster
    finally:
        if keep:
            print(f"\nlocal cluster left running: export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
        elif os.environ.get("EDGETUNE_TEST_CLUSTER_DIR"):
            cluster.down()
        else:
            cluster.destroy()


@pytest.fixture(scope="session")
def kubeconfig(local_cluster) -> Path:
    """The admin kubeconfig of the session's cluster."""
    return local_cluster.kubeconfig


@pytest.fixture(scope="session")
def api_client(local_cluster):
    """A kubernetes.client.ApiClient authenticated as the cluster admin."""
    client = local_cluster.api_client()
    yield client
    client.close()


@pytest.fixture
def namespace(local_cluster, request):
    """A fresh namespace (name derived from the test) deleted after the test."""
    base = request.node.name.lower().replace("_", "-")
    base = "".join(ch for ch in base if ch.isalnum() or ch == "-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    local_cluster.kubectl("create", "namespace", name)
    # Pods are admitted only once the namespace's "default" ServiceAccount exists (the
    # controller-manager creates it a moment after the namespace)
    deadline = time.monotonic() + 30
    while local_cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no default ServiceAccount in namespace {name}")
        time.sleep(0.1)
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
