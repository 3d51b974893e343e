"""A fleet EdgeBenchmark in a local cluster of its own: three Jetson nodes of different models
(orin-nano-0, orin-nx-0, agx-orin-0: the same edgetune.io/device label and taint, each its own
nvidia.com/gpu.product), the operator under its own ServiceAccount, the stand-in steps.

- the ModelConversion (spec.fleet) builds one engine per Jetson model, each on a node of it;
- the fleet gives three rows, each measured on its own node with its own model's engine (the step's provenance names the
  node it ran on, from the Job's pin), and the summary (worst p99 and where); the metrics
  carry the node label;
- with one node stopped (kubelet and containerd gone, the node lifecycle controller marks it
  NotReady after its grace period), a new fleet benchmark gives that node a row with reason
  NodeNotReady and no Job, and the other two still succeed.

The cluster is this module's own (four kubelets would not fit the session cluster's purpose);
it uses only the stand-in image.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support import wait_for

from operator_fixtures import OPERATOR_NS, SA, Kube, OperatorProcess, artifacts_claim, build_standin_images, \
    standin_settings

from edgetune_localcluster import LocalCluster, faults
from edgetune_localcluster.nodes import FLEET_SPEC, nodes_from_spec

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
NS = "fleet"
JETSONS = ["agx-orin-0", "orin-nano-0", "orin-nx-0"]
PRODUCT = {"orin-nano-0": "NVIDIA-Jetson-Orin-Nano-8GB", "orin-nx-0": "NVIDIA-Jetson-Orin-NX-16GB",
           "agx-orin-0": "NVIDIA-Jetson-AGX-Orin-64GB"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The fleet cluster, its CRDs, the operator's RBAC, a namespace with the artifacts claim
    holding an uploaded checkpoint, and the operator serving it."""
    cluster = LocalCluster(tmp_path_factory.mktemp("fleet") / "cluster", nodes=nodes_from_spec(FLEET_SPEC))
    cluster.up(fresh=True, timeout=600)
    op = None
    try:
        kube = Kube(cluster)
        images = build_standin_images(cluster)
        kube.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        kube.run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
        kube.run("create", "namespace", OPERATOR_NS)
        kube.run("apply", "-f", str(ROOT / "operator" / "rbac" / "rbac.yaml"))
        kube.run("create", "namespace", NS)
        wait_for(lambda: kube.run("get", "serviceaccount", "default", "-n", NS, check=False).returncode == 0,
                 timeout=60, what="the namespace's default ServiceAccount")
        kube.apply(artifacts_claim(NS))
        wait_for(lambda: (kube.get("pvc", "edgetune-artifacts", NS).get("status") or {}).get("phase") == "Bound",
                 timeout=60, what="the artifacts claim to be bound")
        pvc = kube.get("pvc", "edgetune-artifacts", NS)
        folder = Path(kube.get("pv", pvc["spec"]["volumeName"])["spec"]["hostPath"]["path"]) / "upload"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        for name, text in (("best.pth", "stand-in checkpoint"), ("config.py", "model = dict(type='RTMDet')\n")):
            (folder / name).write_text(text)
            (folder / name).chmod(0o644)
        log_dir = Path(cluster.data_dir) / "operator-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        op = OperatorProcess(Path(cluster.serviceaccount_kubeconfig(OPERATOR_NS, SA)), [NS], log_dir, lease="op-fleet",
                             standin_env=standin_settings(images["standin"]))
        op.start()
        wait_for(op.leading, timeout=60, what="the operator to hold its Lease")
        kube.apply(resource("ModelConversion", "conv", {
            "source": {"model": {"checkpoint": "upload/best.pth", "config": "upload/config.py"}},
            "backend": "tensorrt", "precision": "fp16", "verify": {"enabled": False}, "fleet": {},
            # no GPU server in this cluster: the export runs on a Jetson too
            "export": {"placement": {"nodeSelector": {"edgetune.io/device": "jetson-orin"},
                                     "tolerations": [{"key": "edgetune.io/edge", "operator": "Exists"}]}}}))
        st = kube.wait_phase("ModelConversion", "conv", NS, ("Succeeded", "Failed"), timeout=300)
        assert st["phase"] == "Succeeded", json.dumps(st)[:2000]
        yield cluster, kube, op
    except BaseException:
        if op is not None:
            print(f"--- operator log ---\n{op.logs()[-5000:]}")
        raise
    finally:
        if op is not None:
            op.stop()
        if os.environ.get("EDGETUNE_TEST_CLUSTER_KEEP") != "1":
            cluster.destroy()


def resource(kind, name, spec):
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": NS},
            "spec": spec}


def finished(kube, name):
    return kube.wait_phase("EdgeBenchmark", name, NS, ("Succeeded", "Failed"), timeout=300)


def test_the_conversion_builds_one_engine_per_jetson_model(fleet):
    cluster, kube, op = fleet
    st = kube.status("ModelConversion", "conv", NS)
    engines = {e["labels"]["nvidia.com/gpu.product"]: e for e in st["engines"]}
    assert sorted(engines) == sorted(PRODUCT.values())
    for node, product in PRODUCT.items():
        e = engines[product]
        assert (e["phase"], e["nodes"], e["node"]) == ("Succeeded", [node], node)
        assert e["engine"].endswith(f"/build-engine@{e['group']}/end2end.engine")
    jobs = kube.jobs(NS, selector="edgetune.io/resource=conv,edgetune.io/step=build-engine")
    assert len(jobs) == 3 and all("edgetune.io/device-group" in j["metadata"]["labels"] for j in jobs)


def test_a_fleet_of_three_jetsons_gives_three_rows_and_the_summary(fleet):
    cluster, kube, op = fleet
    engine_of = {e["nodes"][0]: e["engine"] for e in kube.status("ModelConversion", "conv", NS)["engines"]}
    kube.apply(resource("EdgeBenchmark", "trio", {"modelConversion": "conv", "fleet": {}, "iterations": 10}))
    st = finished(kube, "trio")
    assert st["phase"] == "Succeeded", json.dumps(st)[:3000]
    rows = {r["node"]: r for r in st["devices"]}
    assert sorted(rows) == JETSONS
    for node, row in rows.items():
        assert row["phase"] == "Succeeded" and row["deviceLabels"]["nvidia.com/gpu.product"] == PRODUCT[node]
        # the stand-in's figures (standin_step.LATENCY: pipeline p50 16.4, p99 18.9 ms), measured on that node
        assert (row["p50Ms"], row["p99Ms"]) == (16.4, 18.9) and row["versions"] == {"standin": "1"}
        assert st["provenance"][f"benchmark@{node}"]["node"] == node
        assert row["model"] == engine_of[node]  # its own device group's engine
    # each Job's Pod ran on its own node
    pods = kube.pods(NS, selector="edgetune.io/resource=trio")
    assert sorted((p["metadata"]["labels"]["edgetune.io/node"], p["spec"]["nodeName"]) for p in pods) == \
        [(n, n) for n in JETSONS]
    fl = st["fleet"]
    assert (fl["devices"], fl["measured"], fl["failed"], fl["skipped"]) == (3, 3, 0, 0)
    assert fl["worstP99Ms"] == 18.9 and fl["worstNode"] in JETSONS
    assert kube.cond("EdgeBenchmark", "trio", NS, "AllDevicesMeasured")["status"] == "True"
    text = op.metrics()
    for node in JETSONS:
        assert f'name="trio",namespace="{NS}",node="{node}",precision="fp16",quantile="0.99"}} 0.0189' in text
    printed = kube.run("get", "edgebenchmark", "trio", "-n", NS).stdout
    assert "3/3 measured, worst p99 18.9 ms on" in printed


def test_a_not_ready_node_gives_a_row_with_that_reason_and_the_others_succeed(fleet):
    cluster, kube, op = fleet
    faults.stop_node(cluster, "orin-nx-0")
    try:
        def not_ready():
            node = kube.get("node", "orin-nx-0")
            ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
            return ready if ready["status"] != "True" else None
        ready = wait_for(not_ready, timeout=180, interval=2, what="orin-nx-0 NotReady (node monitor grace period)")
        kube.apply(resource("EdgeBenchmark", "degraded", {"modelConversion": "conv", "fleet": {}, "iterations": 10}))
        st = finished(kube, "degraded")
        assert st["phase"] == "Succeeded", json.dumps(st)[:3000]
        rows = {r["node"]: r for r in st["devices"]}
        assert sorted(rows) == JETSONS
        nx = rows["orin-nx-0"]
        assert (nx["phase"], nx["reason"]) == ("Skipped", "NodeNotReady") and "job" not in nx
        assert ready["reason"] in nx["message"]  # the node lifecycle controller's word, e.g. NodeStatusUnknown
        assert [rows[n]["phase"] for n in ("agx-orin-0", "orin-nano-0")] == ["Succeeded", "Succeeded"]
        assert (st["fleet"]["measured"], st["fleet"]["skipped"]) == (2, 1)
        c = kube.cond("EdgeBenchmark", "degraded", NS, "AllDevicesMeasured")
        assert c["status"] == "False" and "orin-nx-0: Skipped (NodeNotReady)" in c["message"]
        jobs = kube.jobs(NS, selector="edgetune.io/resource=degraded")
        assert sorted(j["metadata"]["labels"]["edgetune.io/node"] for j in jobs) == ["agx-orin-0", "orin-nano-0"]
        reasons = {e["reason"] for e in kube.events(NS, "degraded") if e["type"] == "Warning"}
        assert {"NodeNotReady", "DevicesNotMeasured"} <= reasons
    finally:
        faults.start_node(cluster, "orin-nx-0")
