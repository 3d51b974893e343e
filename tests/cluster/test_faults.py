"""Faults a real edge cluster has every week, injected into the local cluster (its real API
server, etcd, node lifecycle controller, kubelets and containerd; localcluster's faults.py)
while the operator runs as its own ServiceAccount: the outcome is read from the API (status,
conditions, Events, Jobs, Pods). The README's "What happens when..." table matches these."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest

from edgetune_localcluster import faults
from operator_fixtures import real_steps_settings, wait_for  # noqa: E402

pytest_plugins = ["operator_fixtures"]
pytestmark = pytest.mark.cluster

JETSON = "jetson-orin-0"


def res(kind, name, ns, spec):
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def env(**kw):
    return [{"name": k, "value": str(v)} for k, v in kw.items()]


def reasons(kube, ns, name):
    return [e["reason"] for e in kube.events(ns, name)]


FT_SPEC = {"dataset": {"generate": {"images": 8}}, "training": {"epochs": 4, "valInterval": 2}}


def test_api_server_and_etcd_restart_mid_step(local_cluster, kube, ns, operator):
    kube.apply(res("FinetuneJob", "ft", ns, {**FT_SPEC, "env": env(STANDIN_SLEEP_FINETUNE=60)}))
    kube.wait_phase("FinetuneJob", "ft", ns, "Running", timeout=60)

    def percent():
        return (kube.status("FinetuneJob", "ft", ns).get("progress") or {}).get("percent") or 0
    faults.restart(local_cluster, "kube-apiserver", down_seconds=3)
    # the operator is back at work (its progress reads go on) before etcd goes
    seen = percent()
    wait_for(lambda: percent() > seen, timeout=120, what="progress after the API server restart")
    faults.restart(local_cluster, "etcd", down_seconds=2)
    st = kube.wait_phase("FinetuneJob", "ft", ns, ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Succeeded", st
    assert st["metrics"]["finetuned"]["mAP"] == 0.7 and st["progress"]["percent"] == 100
    assert [j["metadata"]["name"] for j in kube.jobs(ns)] == ["ft-finetune"]  # exactly one Job
    events = reasons(kube, ns, "ft")
    assert events.count("JobCreated") == 1 and events.count("StepSucceeded") == 1 and events.count("Succeeded") == 1
    assert len(events) < 10, events  # no storm of repeated Events after the reconnect
    assert operator.healthy()


def _model_ready(kube, ns):
    """A FinetuneJob and an onnxruntime ModelConversion (stand-in steps), Succeeded."""
    kube.apply(res("FinetuneJob", "ft", ns, FT_SPEC),
               res("ModelConversion", "mc", ns, {"source": {"finetuneJob": "ft"}, "backend": "onnxruntime",
                                                 "precision": "fp32", "verify": {"enabled": False}}))
    assert kube.wait_phase("ModelConversion", "mc", ns, ("Succeeded", "Failed"), timeout=120)["phase"] == "Succeeded"


def _on_the_jetson(backoff_limit: int, sleep: int) -> dict:
    """A benchmark pinned to one Jetson that tolerates losing it for 5 s (300 s by default)."""
    lost = [{"key": k, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}
            for k in ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")]
    return {"modelConversion": "mc", "warmup": 2, "iterations": 10, "env": env(STANDIN_SLEEP_BENCHMARK=sleep),
            "run": {"backoffLimit": backoff_limit},
            "target": {"nodeSelector": {"edgetune.io/device": "jetson-orin", "kubernetes.io/hostname": JETSON},
                          "tolerations": [{"key": "edgetune.io/edge", "operator": "Exists", "effect": "NoSchedule"},
                                          *lost]}}


@pytest.mark.slow
def test_a_jetson_lost_mid_benchmark_is_named_and_the_step_retried_when_it_returns(local_cluster, kube, ns,
                                                                                   operator):
    _model_ready(kube, ns)
    kube.apply(res("EdgeBenchmark", "eb", ns, _on_the_jetson(backoff_limit=1, sleep=15)))
    kube.wait_phase("EdgeBenchmark", "eb", ns, "Running", timeout=60)
    try:
        faults.stop_node(local_cluster, JETSON, kill_containers=True)  # a power cut
        # the node lifecycle controller's grace period (50 s), then the condition names the node
        c = wait_for(lambda: (kube.cond("EdgeBenchmark", "eb", ns, "NodeReady") or {}).get("status") == "False"
                     and kube.cond("EdgeBenchmark", "eb", ns, "NodeReady"), timeout=120, what="NodeReady=False")
        assert c["reason"] in ("NodeNotReady", "PodEvicted") and JETSON in c["message"]
        # evicted after its 5 s toleration: the Job's retry waits for the node
        c = wait_for(lambda: (kube.cond("EdgeBenchmark", "eb", ns, "NodeReady") or {}).get("reason") == "PodEvicted"
                     and kube.cond("EdgeBenchmark", "eb", ns, "NodeReady"), timeout=60, what="PodEvicted")
        assert "retries" in c["message"]
        # the replacement Pod: the scheduler cannot place it on the tainted node
        sched = wait_for(lambda: (kube.cond("EdgeBenchmark", "eb", ns, "Scheduled") or {}).get("status") == "False"
                         and kube.cond("EdgeBenchmark", "eb", ns, "Scheduled"), timeout=60,
                         what="Scheduled=False for the replacement Pod")
        assert sched["reason"] == "Unschedulable" and "taint" in sched["message"], sched
        assert kube.status("EdgeBenchmark", "eb", ns)["phase"] == "Pending"
    finally:
        faults.start_node(local_cluster, JETSON)
    st = kube.wait_phase("EdgeBenchmark", "eb", ns, ("Succeeded", "Failed"), timeout=120)
    assert st["phase"] == "Succeeded", st
    assert st["latency"]["pipeline"]["p50Ms"] == 16.4
    assert kube.cond("EdgeBenchmark", "eb", ns, "NodeReady")["status"] == "True"
    assert [j["metadata"]["name"] for j in kube.jobs(ns, selector="edgetune.io/kind=EdgeBenchmark")] == ["eb-benchmark"]
    events = reasons(kube, ns, "eb")
    assert events.count("NodeNotReady") <= 1 and events.count("PodEvicted") == 1, events


@pytest.mark.slow
def test_a_jetson_lost_with_no_retry_left_fails_the_benchmark_with_nodelost(local_cluster, kube, ns, operator):
    _model_ready(kube, ns)
    kube.apply(res("EdgeBenchmark", "eb", ns, _on_the_jetson(backoff_limit=0, sleep=600)))
    kube.wait_phase("EdgeBenchmark", "eb", ns, "Running", timeout=60)
    try:
        faults.stop_node(local_cluster, JETSON)  # unreachable; its container goes on
        st = kube.wait_phase("EdgeBenchmark", "eb", ns, ("Succeeded", "Failed"), timeout=150)
        assert st["phase"] == "Failed"
        c = kube.cond("EdgeBenchmark", "eb", ns, "Failed")
        assert c["reason"] == "NodeLost" and f"node {JETSON} stopped responding" in c["message"]
        assert "NodeLost" in reasons(kube, ns, "eb")
    finally:
        faults.start_node(local_cluster, JETSON)
    # back: the kubelet ends the evicted Pod's container, and the Pod goes
    wait_for(lambda: not [p for p in kube.pods(ns) if p["metadata"]["labels"].get("edgetune.io/step") == "benchmark"],
             timeout=90, what="the evicted benchmark Pod to be gone")
    assert kube.status("EdgeBenchmark", "eb", ns)["phase"] == "Failed"  # final: not re-run


def test_a_resource_deleted_mid_run_takes_its_jobs_pods_and_metrics(local_cluster, kube, ns, operator):
    kube.apply(res("FinetuneJob", "gone", ns, {**FT_SPEC, "env": env(STANDIN_SLEEP_FINETUNE=300)}))
    wait_for(lambda: 0 < ((kube.status("FinetuneJob", "gone", ns).get("progress") or {}).get("percent") or 0),
             timeout=60, what="progress")
    assert 'name="gone"' in wait_for(lambda: 'name="gone"' in operator.metrics() and operator.metrics(),
                                     what="its metrics")
    (pod,) = kube.pods(ns)
    node = pod["spec"]["nodeName"]
    cid = pod["status"]["containerStatuses"][0]["containerID"].split("://")[-1]
    kube.run("delete", "finetunejob", "gone", "-n", ns, "--wait=false")
    wait_for(lambda: not kube.jobs(ns) and not kube.pods(ns), timeout=90, what="Jobs and Pods collected")
    # the step's process ended: containerd no longer runs the container
    wait_for(lambda: cid not in local_cluster.ctr(node, "tasks", "ls").stdout, timeout=60, what="the container to end")
    wait_for(lambda: 'name="gone"' not in operator.metrics(), timeout=30, what="its metric series to go")


def test_a_killed_step_container_is_retried_by_its_job(local_cluster, kube, ns, operator):
    """The step's process killed (a device reboot, an OOM killer from outside): the Job's
    backoffLimit retries it, the resource succeeds with one Job."""
    kube.apply(res("FinetuneJob", "ft", ns, {**FT_SPEC, "run": {"backoffLimit": 1},
                                             "env": env(STANDIN_SLEEP_FINETUNE=20)}))
    kube.wait_phase("FinetuneJob", "ft", ns, "Running", timeout=60)
    (pod,) = wait_for(lambda: [p for p in kube.pods(ns) if (p["status"].get("containerStatuses") or [{}])[0]
                               .get("state", {}).get("running")], timeout=60, what="a running container")
    faults.kill_container(local_cluster, ns, pod["metadata"]["name"])
    st = kube.wait_phase("FinetuneJob", "ft", ns, ("Succeeded", "Failed"), timeout=180)
    assert st["phase"] == "Succeeded", st.get("message")
    assert [j["metadata"]["name"] for j in kube.jobs(ns)] == ["ft-finetune"]
    killed = kube.get("pod", pod["metadata"]["name"], ns)
    assert killed["status"]["phase"] == "Failed"
    assert killed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


def test_a_step_job_deleted_by_hand_is_recreated_once_then_the_step_fails(kube, ns, operator):
    kube.apply(res("FinetuneJob", "ft", ns, {**FT_SPEC, "env": env(STANDIN_SLEEP_FINETUNE=300)}))
    kube.wait_phase("FinetuneJob", "ft", ns, "Running", timeout=60)
    first = kube.get("job", "ft-finetune", ns)["metadata"]["uid"]
    kube.run("delete", "job", "ft-finetune", "-n", ns, "--wait=false")
    again = wait_for(lambda: (kube.get("job", "ft-finetune", ns, check=False) or {}).get("metadata", {}).get("uid")
                     not in (None, first) and kube.get("job", "ft-finetune", ns), timeout=60, what="the Job recreated")
    assert "JobRecreated" in reasons(kube, ns, "ft")
    kube.wait_phase("FinetuneJob", "ft", ns, "Running", timeout=60)
    wait_for(lambda: (kube.status("FinetuneJob", "ft", ns)["steps"][0].get("jobUID")) == again["metadata"]["uid"],
             timeout=30, what="the new Job's UID in status")
    kube.run("delete", "job", "ft-finetune", "-n", ns, "--wait=false")
    st = kube.wait_phase("FinetuneJob", "ft", ns, ("Succeeded", "Failed"), timeout=60)
    assert st["phase"] == "Failed" and kube.cond("FinetuneJob", "ft", ns, "Failed")["reason"] == "JobDeleted"
    wait_for(lambda: kube.get("job", "ft-finetune", ns, check=False) is None, timeout=30, what="no third Job")


def test_a_failed_finetunejob_fails_its_conversion_and_benchmark_naming_it(kube, ns, operator):
    kube.apply(res("FinetuneJob", "ft", ns, {**FT_SPEC, "env": env(STANDIN_FAIL_STEP="finetune")}),
               res("ModelConversion", "mc", ns, {"source": {"finetuneJob": "ft"}, "backend": "onnxruntime",
                                                 "precision": "fp32"}),
               res("EdgeBenchmark", "eb", ns, {"modelConversion": "mc"}))
    kube.wait_phase("EdgeBenchmark", "eb", ns, "Failed", timeout=120)
    mc = kube.cond("ModelConversion", "mc", ns, "Failed")
    eb = kube.cond("EdgeBenchmark", "eb", ns, "Failed")
    assert mc["reason"] == "SourceFailed" and "FinetuneJob 'ft' failed" in mc["message"]
    assert "stand-in failure requested for finetune" in mc["message"]  # the upstream message
    assert eb["reason"] == "ModelConversionFailed" and "mc" in eb["message"]
    assert [j["metadata"]["name"] for j in kube.jobs(ns)] == ["ft-finetune"]  # nothing downstream ran


def test_a_pod_that_cannot_start_fails_after_the_waiting_timeout_with_the_kubelets_reason(kube, ns, operator):
    kube.apply(res("FinetuneJob", "ft", ns, {**FT_SPEC, "run": {"podWaitingTimeoutSeconds": 45},
                                             "placement": {"image": "localhost/edgetune/not-built:1"}}))
    # within the timeout: Pending, with the kubelet's reason and message
    ready = wait_for(lambda: (kube.cond("FinetuneJob", "ft", ns, "Ready") or {}).get("reason") == "ErrImageNeverPull"
                     and kube.cond("FinetuneJob", "ft", ns, "Ready"), timeout=60, what="the kubelet's reason in status")
    st = kube.status("FinetuneJob", "ft", ns)
    assert st["phase"] == "Pending" and "not-built" in st["message"] and "not-built" in ready["message"], st
    st = kube.wait_phase("FinetuneJob", "ft", ns, ("Succeeded", "Failed"), timeout=90)
    c = kube.cond("FinetuneJob", "ft", ns, "Failed")
    assert st["phase"] == "Failed" and c["reason"] == "ErrImageNeverPull" and "waiting timeout is 45 s" in c["message"]
    wait_for(lambda: not kube.pods(ns), timeout=60, what="its Job and Pod to be deleted")


@pytest.mark.slow
def test_a_scheduled_run_still_going_at_the_next_tick_skips_it_and_says_so(kube, ns, operator):
    _model_ready(kube, ns)
    kube.apply(res("EdgeBenchmark", "nightly", ns, {"modelConversion": "mc", "schedule": "* * * * *",
                                                    "iterations": 5, "env": env(STANDIN_SLEEP_BENCHMARK=75)}))
    kube.wait_phase("EdgeBenchmark", "nightly", ns, "Running", timeout=60)
    # run 1 lasts 75 s: the next minute's tick comes while it runs (CronJob's Forbid)
    st = wait_for(lambda: (kube.status("EdgeBenchmark", "nightly", ns).get("skippedRuns") or 0) >= 1
                  and kube.status("EdgeBenchmark", "nightly", ns), timeout=150, what="a skipped run recorded")
    assert st.get("lastSkippedTime") and st["run"] == 1
    assert "RunSkipped" in reasons(kube, ns, "nightly")
    assert [j["metadata"]["name"] for j in kube.jobs(ns, "edgetune.io/step=benchmark")] == ["nightly-benchmark"]


def _truncated_checkpoint() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 4096)
    data = buf.getvalue()
    return data[: len(data) // 2]  # as a copy cut off mid-way


@pytest.mark.ml
def test_a_truncated_checkpoint_fails_the_real_export_with_artifactcorrupted(kube, ns, start_operator, ml_image):
    pvc = kube.get("pvc", "edgetune-artifacts", ns)
    folder = Path(kube.get("pv", pvc["spec"]["volumeName"])["spec"]["hostPath"]["path"]) / "upload"
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    (folder / "best.pth").write_bytes(_truncated_checkpoint())
    (folder / "config.py").write_text("model = dict(type='RTMDet')\n")
    for f in folder.iterdir():
        f.chmod(0o644)
    start_operator([ns], extra_env=real_steps_settings(ml_image))
    kube.apply(res("ModelConversion", "bad", ns, {
        "source": {"model": {"checkpoint": "upload/best.pth", "config": "upload/config.py"}},
        "backend": "onnxruntime", "precision": "fp32", "verify": {"enabled": False}, "export": {"device": "cpu"}}))
    st = kube.wait_phase("ModelConversion", "bad", ns, ("Succeeded", "Failed"), timeout=300)
    assert st["phase"] == "Failed", json.dumps(st)[:2000]
    c = kube.cond("ModelConversion", "bad", ns, "Failed")
    assert c["reason"] == "ArtifactCorrupted" and "best.pth" in c["message"] and "truncated" in c["message"]
    (step,) = st["steps"]
    assert (step["name"], step["reason"]) == ("export", "ArtifactCorrupted")
