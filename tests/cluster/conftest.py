"""Fixtures for tests against the local Kubernetes cluster (localcluster/).

``local_cluster`` (session): a freshly started cluster (real kube-apiserver, controller-manager,
scheduler, etcd and the node agent with gpu-node-0 and jetson-orin-0) and its admin
kubeconfig; stopped at the end of the session. Its data live in localcluster/.data/test
(or $EDGETUNE_TEST_CLUSTER_DIR); set EDGETUNE_TEST_CLUSTER_KEEP=1 to leave it running.

``namespace`` (function): a new namespace for one test, deleted afterwards.
"""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT / "localcluster") not in sys.path:
    sys.path.insert(0, str(_ROOT / "localcluster"))

from edgetune_localcluster import LocalCluster  # noqa: E402


@pytest.fixture(scope="session")
def local_cluster():
    data_dir = os.environ.get("EDGETUNE_TEST_CLUSTER_DIR") or str(_ROOT / "localcluster" / ".data" / "test")
    cluster = LocalCluster(data_dir)
    cluster.up(fresh=True)
    try:
        yield cluster
    finally:
        if os.environ.get("EDGETUNE_TEST_CLUSTER_KEEP") != "1":
            cluster.down()


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
    yield name
    local_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
