"""The operator against the local cluster, running as its own ServiceAccount (exactly the RBAC
in operator/rbac/rbac.yaml), with the stand-in step command: Jobs on the right nodes, status,
conditions, printer columns, Events, metrics; failures, unschedulable Pods, missing references."""
from __future__ import annotations

import datetime as dt

import pytest

pytest.register_assert_rewrite("operator_fixtures")
from operator_fixtures import wait_for  # noqa: E402

pytest_plugins = ["operator_fixtures"]
pytestmark = pytest.mark.cluster


def res(kind, name, ns, spec):
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def env(**kw):
    return [{"name": k, "value": str(v)} for k, v in kw.items()]


FT_SPEC = {"dataset": {"generate": {"images": 8}}, "training": {"epochs": 4, "valInterval": 2}}


def node_of(kube, ns, job_name):
    pods = [p for p in kube.pods(ns) if p["metadata"]["labels"].get("batch.kubernetes.io/job-name") == job_name]
    assert pods, f"no Pod for Job {job_name}"
    return pods[-1]["spec"].get("nodeName")


def columns(kube, kind, name, ns):
    out = kube.run("get", kind, name, "-n", ns).stdout.splitlines()
    header, row = out[0].split(), out[1].split()
    return header, row


def test_finetunejob_end_to_end(kube, ns, operator):
    kube.apply(res("FinetuneJob", "balloon", ns, {**FT_SPEC, "env": env(STANDIN_SLEEP_FINETUNE=4)}))
    # progress while training, read from the job's progress lines in its log
    prog = wait_for(lambda: 0 < ((kube.status("FinetuneJob", "balloon", ns).get("progress") or {}).get("percent") or 0)
                    < 100 and kube.status("FinetuneJob", "balloon", ns)["progress"], timeout=60,
                    what="training progress in status")
    assert "ETA" in prog["text"] and prog["epochs"] == 4
    assert prog["phase"] == "train" and prog["text"].split()[1:3] == ["training", "epoch"]
    st = kube.wait_phase("FinetuneJob", "balloon", ns, ("Succeeded", "Failed"), timeout=90)
    assert st["phase"] == "Succeeded", st
    (job,) = kube.jobs(ns)
    assert job["metadata"]["name"] == "balloon-finetune"
    assert node_of(kube, ns, "balloon-finetune") == "gpu-node-0"
    assert st["metrics"]["finetuned"]["mAP"] == 0.7 and st["metrics"]["base"]["mAP"] == 0.185
    assert st["artifacts"]["checkpoint"] == f"pvc://edgetune-artifacts/{ns}/finetunejob/balloon/finetune/best.pth"
    assert st["provenance"]["finetune"]["standin"] is True
    assert st["progress"]["percent"] == 100
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Scheduled"]["status"] == "True"
    assert conds["Failed"]["status"] == "False" and conds["Progressing"]["status"] == "False"
    step = st["steps"][0]
    assert step["phase"] == "Succeeded" and step["node"] == "gpu-node-0"
    # the step's duration is its Job's, as the Job controller recorded it
    t = {k: dt.datetime.fromisoformat(job["status"][k].replace("Z", "+00:00")) for k in ("startTime", "completionTime")}
    assert step["durationSeconds"] == (t["completionTime"] - t["startTime"]).total_seconds() > 0
    header, row = columns(kube, "finetunejob", "balloon", ns)
    assert header == ["NAME", "PHASE", "PROGRESS", "MAP", "MAP50", "AGE"]
    assert row[1:6] == ["Succeeded", "100%", "done", "0.7", "0.818"]  # PROGRESS is "100% done"
    reasons = {e["reason"] for e in kube.events(ns, "balloon")}
    assert {"JobCreated", "StepRunning", "StepSucceeded", "Succeeded"} <= reasons
    # kopf kept nothing in our object
    obj = kube.get("finetunejob", "balloon", ns)
    assert not obj["metadata"].get("finalizers")
    assert not [a for a in obj["metadata"].get("annotations") or {} if "kopf" in a]
    m = wait_for(lambda: 'edgetune_finetune_map_ratio{' in operator.metrics() and operator.metrics(), what="metrics")
    assert (f'edgetune_finetune_map_ratio{{iou="0.50:0.95",model="rtmdet_tiny_8xb32-300e_coco",name="balloon",'
            f'namespace="{ns}",which="finetuned"}} 0.7') in m
    assert 'edgetune_resources{kind="FinetuneJob",phase="Succeeded"} 1.0' in m
    assert f'edgetune_job_duration_seconds{{kind="FinetuneJob",name="balloon",namespace="{ns}",step="finetune"}}' in m


def test_pipeline_conversion_then_benchmark(kube, ns, operator):
    # all three at once: the conversion and the benchmark wait for their inputs
    kube.apply(res("FinetuneJob", "balloon", ns, {**FT_SPEC, "env": env(STANDIN_SLEEP=1)}),
               res("ModelConversion", "conv", ns, {"source": {"finetuneJob": "balloon"}, "backend": "onnxruntime",
                                                    "precision": "fp32", "imageSize": 320}),
               res("EdgeBenchmark", "bench", ns, {"modelConversion": "conv", "warmup": 2, "iterations": 10}))
    wait_for(lambda: (kube.cond("ModelConversion", "conv", ns, "SourceReady") or {}).get("reason") == "WaitingForSource",
             timeout=30, what="conversion waiting for its source")
    c = wait_for(lambda: kube.cond("EdgeBenchmark", "bench", ns, "ModelReady"), timeout=30, what="ModelReady")
    assert c["status"] == "False" and c["reason"] == "WaitingForModel"
    assert kube.status("EdgeBenchmark", "bench", ns)["phase"] == "Waiting"
    st = kube.wait_phase("ModelConversion", "conv", ns, ("Succeeded", "Failed"), timeout=120)
    assert st["phase"] == "Succeeded", st
    assert [s["name"] for s in st["steps"]] == ["export", "build-engine", "verify"]
    assert node_of(kube, ns, "conv-export") == "gpu-node-0"
    assert node_of(kube, ns, "conv-build-engine") == "jetson-orin-0"
    assert node_of(kube, ns, "conv-verify") == "jetson-orin-0"
    assert st["metrics"]["mapDrop"] == 0.004 and st["stage"] == "Done"
    assert st["artifacts"]["model"].endswith(f"/{ns}/modelconversion/conv/build-engine/end2end.onnx")
    header, row = columns(kube, "modelconversion", "conv", ns)
    assert header[:6] == ["NAME", "PHASE", "STAGE", "BACKEND", "PRECISION", "AP-DROP"]
    assert row[1:6] == ["Succeeded", "Done", "onnxruntime", "fp32", "0.004"]
    bst = kube.wait_phase("EdgeBenchmark", "bench", ns, ("Succeeded", "Failed"), timeout=90)
    assert bst["phase"] == "Succeeded", bst
    assert node_of(kube, ns, "bench-benchmark") == "jetson-orin-0"
    assert bst["latency"]["pipeline"]["p50Ms"] == 16.4 and bst["throughputFps"] == 60.24
    assert bst["device"] == "jetson-orin" and bst["backend"] == "onnxruntime"
    header, row = columns(kube, "edgebenchmark", "bench", ns)
    assert header[:6] == ["NAME", "PHASE", "DEVICE", "P50(MS)", "P99(MS)", "FPS"]
    assert row[1:6] == ["Succeeded", "jetson-orin", "16.4", "18.9", "60.24"]
    m = operator.metrics()
    assert (f'edgetune_benchmark_latency_seconds{{backend="onnxruntime",device="jetson-orin",'
            f'model="rtmdet_tiny_8xb32-300e_coco",name="bench",namespace="{ns}",precision="fp32",'
            f'quantile="0.99",stage="pipeline"}} 0.0189') in m
    assert f'edgetune_conversion_map_drop_ratio{{backend="onnxruntime",model="rtmdet_tiny_8xb32-300e_coco",' \
           f'name="conv",namespace="{ns}",precision="fp32"}} 0.004' in m
    assert len(kube.jobs(ns)) == 5


def test_missing_references_are_conditions(kube, ns, operator):
    kube.apply(res("ModelConversion", "orphan", ns, {"source": {"finetuneJob": "nope"}}),
               res("EdgeBenchmark", "orphan-bench", ns, {"modelConversion": "nope"}))
    c = wait_for(lambda: kube.cond("ModelConversion", "orphan", ns, "SourceReady"), what="SourceReady")
    assert (c["status"], c["reason"]) == ("False", "SourceNotFound") and "'nope' not found" in c["message"]
    c = wait_for(lambda: kube.cond("EdgeBenchmark", "orphan-bench", ns, "ModelReady"), what="ModelReady")
    assert (c["status"], c["reason"]) == ("False", "SourceNotFound")
    assert kube.jobs(ns) == []
    assert operator.healthy()
    # the reference appears later: the conversion proceeds
    kube.apply(res("FinetuneJob", "nope", ns, FT_SPEC))
    kube.wait_phase("ModelConversion", "orphan", ns, "Succeeded", timeout=120)


def test_failing_step_fails_the_resource_with_its_message(kube, ns, operator):
    kube.apply(res("FinetuneJob", "bad", ns, {**FT_SPEC, "env": env(STANDIN_FAIL_STEP="finetune")}),
               res("FinetuneJob", "crash", ns, {**FT_SPEC, "env": env(STANDIN_CRASH_STEP="finetune")}))
    st = kube.wait_phase("FinetuneJob", "bad", ns, ("Succeeded", "Failed"))
    assert st["phase"] == "Failed" and st["message"] == "finetune: stand-in failure requested for finetune"
    c = kube.cond("FinetuneJob", "bad", ns, "Failed")
    assert (c["status"], c["reason"]) == ("True", "StandinFailure")
    st = kube.wait_phase("FinetuneJob", "crash", ns, ("Succeeded", "Failed"))
    assert st["phase"] == "Failed" and "RuntimeError: stand-in crash requested for finetune" in st["message"]
    assert any(e["reason"] == "StepFailed" and e["type"] == "Warning" for e in kube.events(ns, "bad"))
    assert 'edgetune_job_failures_total{kind="FinetuneJob",step="finetune"} 2.0' in operator.metrics()


def test_accuracy_drop_fails_the_conversion(kube, ns, operator):
    kube.apply(res("FinetuneJob", "b", ns, FT_SPEC),
               res("ModelConversion", "lossy", ns, {"source": {"finetuneJob": "b"}, "backend": "onnxruntime",
                                                     "precision": "fp32", "verify": {"maxMapDrop": 0.01},
                                                     "env": env(STANDIN_MAP_DROP=0.05)}))
    st = kube.wait_phase("ModelConversion", "lossy", ns, ("Succeeded", "Failed"), timeout=120)
    assert st["phase"] == "Failed" and st["stage"] == "verify"
    assert kube.cond("ModelConversion", "lossy", ns, "Failed")["reason"] == "AccuracyDropTooLarge"
    assert st["metrics"]["mapDrop"] == 0.05


def test_unschedulable_pods_show_the_scheduler_reason(kube, ns, operator):
    kube.apply(res("FinetuneJob", "greedy", ns, {**FT_SPEC, "placement": {"resources": {"limits": {"nvidia.com/gpu": 4}}}}),
               res("FinetuneJob", "nowhere", ns, {**FT_SPEC, "placement": {"nodeSelector": {"edgetune.io/device": "jetson-nano"}}}))
    c = wait_for(lambda: (kube.cond("FinetuneJob", "greedy", ns, "Scheduled") or {}).get("status") == "False"
                 and kube.cond("FinetuneJob", "greedy", ns, "Scheduled"), timeout=10, what="Scheduled=False")
    assert c["reason"] == "Unschedulable" and "Insufficient nvidia.com/gpu" in c["message"]
    c = wait_for(lambda: (kube.cond("FinetuneJob", "nowhere", ns, "Scheduled") or {}).get("status") == "False"
                 and kube.cond("FinetuneJob", "nowhere", ns, "Scheduled"), timeout=10, what="Scheduled=False")
    assert "node affinity/selector" in c["message"]
    assert kube.status("FinetuneJob", "nowhere", ns)["phase"] == "Pending"


def test_kill_operator_while_a_job_runs(kube, ns, start_operator):
    op = start_operator([ns])
    kube.apply(res("FinetuneJob", "slow", ns, {**FT_SPEC, "env": env(STANDIN_SLEEP=8)}))
    wait_for(lambda: kube.status("FinetuneJob", "slow", ns).get("phase") == "Running", timeout=30, what="Running")
    op.kill()  # SIGKILL: no Lease release, nothing flushed
    op2 = start_operator([ns], lease=op.lease)  # waits for the old Lease to expire, then takes over
    st = kube.wait_phase("FinetuneJob", "slow", ns, ("Succeeded", "Failed"), timeout=60)
    assert st["phase"] == "Succeeded" and st["metrics"]["finetuned"]["mAP"] == 0.7
    assert [j["metadata"]["name"] for j in kube.jobs(ns)] == ["slow-finetune"]
    # a restarted operator serves the same figures (derived from status)
    assert 'name="slow"' in wait_for(lambda: 'name="slow"' in op2.metrics() and op2.metrics(), what="metrics")


def test_two_replicas_only_the_lease_holder_acts(kube, ns, start_operator):
    a = start_operator([ns], lease=f"ha-{ns}", identity="replica-a")
    b = start_operator([ns], lease=f"ha-{ns}", identity="replica-b", wait_leader=False)
    assert b.healthy() and not b.leading()  # standby serves /healthz
    kube.apply(*[res("FinetuneJob", f"ha-{i}", ns, FT_SPEC) for i in range(3)])
    for i in range(3):
        kube.wait_phase("FinetuneJob", f"ha-{i}", ns, "Succeeded", timeout=90)
    assert a.logs().count("created Job") == 3 and "created Job" not in b.logs()
    lease = kube.get("lease", f"ha-{ns}", "edgetune-system")
    assert lease["spec"]["holderIdentity"] == "replica-a"
    a.stop()  # graceful: releases the Lease, the standby takes over at once
    wait_for(b.leading, timeout=15, what="the standby to take over")
    kube.apply(res("FinetuneJob", "after", ns, FT_SPEC))
    kube.wait_phase("FinetuneJob", "after", ns, "Succeeded", timeout=60)
    assert "created Job" in b.logs()
    assert len(kube.jobs(ns)) == 4


def test_operator_permissions_are_exactly_the_role(kube, operator_sa_kubeconfig):
    sa = "system:serviceaccount:edgetune-system:edgetune-operator"

    def can(verb, resource, ns="default", sub=None):
        extra = [f"--subresource={sub}"] if sub else []
        return kube.run("auth", "can-i", verb, resource, "-n", ns, f"--as={sa}", *extra,
                        check=False).stdout.strip() == "yes"
    assert can("create", "jobs.batch") and can("delete", "jobs.batch") and not can("update", "jobs.batch")
    assert not can("patch", "finetunejobs.edgetune.io")  # kopf never writes our objects, only our status
    assert can("patch", "finetunejobs.edgetune.io", sub="status")
    assert not can("update", "finetunejobs.edgetune.io", sub="status")
    assert can("get", "pods", sub="log") and not can("get", "pods")
    assert not can("get", "secrets") and not can("create", "pods") and not can("delete", "pods")
    assert can("watch", "nodes") and can("get", "nodes") and not can("patch", "nodes")
    assert can("update", "leases.coordination.k8s.io", ns="edgetune-system")
    assert not can("update", "leases.coordination.k8s.io", ns="default")


@pytest.mark.slow
def test_scheduled_benchmark_keeps_the_last_results(kube, ns, operator):
    kube.apply(res("FinetuneJob", "b", ns, FT_SPEC),
               res("ModelConversion", "c", ns, {"source": {"finetuneJob": "b"}, "backend": "onnxruntime",
                                                 "precision": "fp32", "verify": {"enabled": False}}),
               res("EdgeBenchmark", "nightly", ns, {"modelConversion": "c", "schedule": "* * * * *",
                                                    "historyLimit": 1, "iterations": 5}))
    kube.wait_phase("EdgeBenchmark", "nightly", ns, "Succeeded", timeout=120)
    st = kube.status("EdgeBenchmark", "nightly", ns)
    assert st.get("nextScheduleTime") and st["run"] == 1
    st = wait_for(lambda: (kube.status("EdgeBenchmark", "nightly", ns).get("history") or [{}])[0].get("run") == 2
                  and kube.status("EdgeBenchmark", "nightly", ns), timeout=150, what="the second scheduled run")
    assert [h["run"] for h in st["history"]] == [2]
    wait_for(lambda: [j["metadata"]["name"] for j in kube.jobs(ns, "edgetune.io/step=benchmark")] ==
             ["nightly-benchmark-2"], timeout=30, what="run 1's Job deleted")


def test_sweep_over_labelled_conversions(kube, ns, operator):
    """One apply: a FinetuneJob, two labelled ModelConversions (the int8 one fails its accuracy
    gate) and a sweep selecting them by label: one sweep Job on the edge node, the table, the
    best row within the budget (not the fastest: that one failed its gate), column and metrics."""
    label = {"edgetune.io/sweep": "s1"}
    fp32 = res("ModelConversion", "s-fp32", ns, {"source": {"finetuneJob": "b"}, "backend": "onnxruntime",
                                                 "precision": "fp32", "verify": {"maxMapDrop": 0.01}})
    int8 = res("ModelConversion", "s-int8", ns, {"source": {"finetuneJob": "b"}, "backend": "onnxruntime",
                                                 "precision": "int8", "calibration": {"images": "calib"},
                                                 "verify": {"maxMapDrop": 0.01}, "env": env(STANDIN_MAP_DROP=0.05)})
    for body in (fp32, int8):
        body["metadata"]["labels"] = label
    kube.apply(res("FinetuneJob", "b", ns, FT_SPEC), fp32, int8,
               res("EdgeBenchmark", "sweep", ns, {"selector": {"matchLabels": label}, "maxMapDrop": 0.01,
                                                  "iterations": 20}))
    c = wait_for(lambda: kube.cond("EdgeBenchmark", "sweep", ns, "ModelReady"), timeout=30, what="ModelReady")
    assert c["status"] == "False" and c["reason"] == "WaitingForModel"
    st = kube.wait_phase("EdgeBenchmark", "sweep", ns, ("Succeeded", "Failed"), timeout=180)
    assert st["phase"] == "Succeeded", st
    assert kube.status("ModelConversion", "s-int8", ns)["phase"] == "Failed"
    assert node_of(kube, ns, "sweep-sweep") == "jetson-orin-0"
    rows = {r["conversion"]: r for r in st["rows"]}
    assert set(rows) == {"s-fp32", "s-int8"}
    assert rows["s-int8"]["accuracyOk"] is False and rows["s-int8"]["withinBudget"] is False
    assert rows["s-int8"]["p50Ms"] < rows["s-fp32"]["p50Ms"] and rows["s-int8"]["mapDrop"] == 0.05
    assert st["best"]["conversion"] == "s-fp32" and st["artifacts"]["plot"].endswith("/sweep/sweep.svg")
    header, row = columns(kube, "edgebenchmark", "sweep", ns)
    assert header[:7] == ["NAME", "PHASE", "DEVICE", "P50(MS)", "P99(MS)", "FPS", "BEST"]
    assert row[1] == "Succeeded" and row[6:9] == ["onnxruntime", "fp32", "16.0ms"]
    m = operator.metrics()
    assert (f'edgetune_sweep_best_info{{backend="onnxruntime",conversion="s-fp32",device="jetson-orin",'
            f'name="sweep",namespace="{ns}",precision="fp32"}} 1.0') in m
