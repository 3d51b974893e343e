"""The planner: resource + Jobs + Pods (+ referenced resource) -> Jobs to create, status, Events.
Result documents are written here as JSON, as a step writes them into its termination message."""
from __future__ import annotations

import datetime as dt

import json

from edgetune_contract.args import BenchmarkArgs, BuildEngineArgs, ExportArgs, FinetuneArgs, VerifyArgs
from edgetune_contract.progress import parse_progress
from edgetune_operator import kinds, observe
from edgetune_operator.controller.executor import merge_patch
from edgetune_operator.settings import from_env

S = from_env({})
T0 = dt.datetime(2025, 7, 26, 20, 0, tzinfo=dt.timezone.utc)


def at(seconds):
    return T0 + dt.timedelta(seconds=seconds)


def iso(seconds):
    return observe.fmt_time(at(seconds))


def res(kind, spec, name, status=None, ns="demo"):
    b = {"apiVersion": "edgetune.io/v1alpha1", "kind": kind,
         "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "generation": 1, "resourceVersion": "1"},
         "spec": spec}
    if status is not None:
        b["status"] = status
    return b


def job(manifest, *, active=0, complete=False, failed=False, reason="BackoffLimitExceeded", msg="Job has reached the specified backoff limit", start=1, end=None):
    conds = []
    if complete:
        conds.append({"type": "Complete", "status": "True"})
    if failed:
        conds.append({"type": "Failed", "status": "True", "reason": reason, "message": msg})
    st = {"active": active, "startTime": iso(start), "conditions": conds}
    if complete:
        st["completionTime"] = iso(end or start + 60)
        st["succeeded"] = 1
    return observe.summarize_job({"metadata": {**manifest["metadata"], "creationTimestamp": iso(0),
                                               "uid": f"uid-{manifest['metadata']['name']}-{start}"}, "status": st})


def pod(manifest, *, phase="Pending", node=None, unschedulable=None, exit_code=None, message="", suffix="abcde",
        term_reason=None, index=None, ready=None, disruption=None, deleting=False, created=1):
    jname = manifest["metadata"]["name"]
    labels = {**manifest["spec"]["template"]["metadata"]["labels"], "batch.kubernetes.io/job-name": jname}
    meta = {"name": f"{jname}-{suffix}", "labels": labels, "creationTimestamp": iso(created)}
    if index is not None:  # as the Job controller marks an Indexed Job's Pods
        meta["annotations"] = {"batch.kubernetes.io/job-completion-index": str(index)}
    if deleting:
        meta["deletionTimestamp"] = iso(50)
    st = {"phase": phase, "conditions": []}
    if ready is not None:
        st["conditions"].append({"type": "Ready", "status": ready})
    if disruption:  # as the taint manager marks a Pod it evicts from a lost node
        st["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
                                 "message": disruption})
    if unschedulable:
        st["conditions"].append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": unschedulable})
    elif node:
        st["conditions"].append({"type": "PodScheduled", "status": "True"})
    if phase == "Running":
        st["containerStatuses"] = [{"name": "step", "state": {"running": {"startedAt": iso(2)}}}]
    if exit_code is not None:
        st["containerStatuses"] = [{"name": "step", "state": {"terminated": {
            "exitCode": exit_code, "message": message, "startedAt": iso(2), "finishedAt": iso(60),
            "reason": term_reason or ("Completed" if exit_code == 0 else "Error")}}}]
    return observe.summarize_pod({"metadata": meta, "spec": {"nodeName": node}, "status": st})


def result(step, ok=True, reason="", message="", metrics=None, artifacts=None, provenance=None):
    return json.dumps({"schema": "edgetune.io/result/v1", "step": step, "ok": ok,
                       "reason": reason or ("Succeeded" if ok else "Failed"), "message": message,
                       "metrics": metrics or {}, "artifacts": artifacts or {}, "provenance": provenance or {}})


def parsed(manifest, args_class):
    """A Job's command line as the step parses it (with its own arguments class)."""
    return args_class.from_argv(manifest["spec"]["template"]["spec"]["containers"][0]["args"])


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def advance(body, plan):
    """The resource as it is after the plan's status was written."""
    return {**body, "status": plan.status}


FT_RESULT = result("finetune", metrics={"base": {"mAP": 0.185, "mAP50": 0.229, "mAP75": 0.215},
                                        "finetuned": {"mAP": 0.7, "mAP50": 0.818, "mAP75": 0.776}},
                   artifacts={"checkpoint": "best.pth", "config": "config.py", "dataset": "data"},
                   provenance={"epochs": 40, "device": "cuda"})


def test_finetune_lifecycle():
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "balloon")
    p = kinds.plan(body, [], [], S, at(0))
    (manifest,) = p.create
    assert manifest["metadata"]["name"] == "balloon-finetune"
    assert p.status["phase"] == "Pending" and p.status["startTime"] == iso(0)
    assert not p.events  # JobCreated is announced by the executor once the API server created the Job
    body = advance(body, p)

    # a re-run before the Job shows up in the index asks for the same Job (AlreadyExists) and changes nothing
    again = kinds.plan(body, [], [], S, at(0.5))
    assert [j["metadata"]["name"] for j in again.create] == ["balloon-finetune"]
    assert merge_patch(body["status"], again.status) is None

    # the Pod cannot be scheduled: the scheduler's message shows in a condition
    msg = "0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had untolerated taint {edgetune.io/edge: true}."
    p = kinds.plan(body, [job(manifest, active=1)], [pod(manifest, unschedulable=msg)], S, at(2))
    assert not p.create
    c = cond(p.status, "Scheduled")
    assert (c["status"], c["reason"], c["message"]) == ("False", "Unschedulable", msg)
    assert p.status["phase"] == "Pending" and ("Warning", "Unschedulable", f"Pod balloon-finetune-abcde: {msg}") in p.events
    body = advance(body, p)

    # running, with progress from the log
    line = ('EDGETUNE_PROGRESS {"epoch":3,"epochs":40,"eta_seconds":200,"iter":120,"iters":1600,"loss":0.8,'
            '"percent":17.5,"phase":"train","phase_percent":7.5}')
    prog = parse_progress(["noise", line])
    p = kinds.plan(body, [job(manifest, active=1)], [pod(manifest, phase="Running", node="gpu-node-0")], S, at(30),
                       progress=prog)
    assert p.status["phase"] == "Running"
    assert cond(p.status, "Scheduled")["status"] == "True" and "gpu-node-0" in cond(p.status, "Scheduled")["message"]
    assert p.status["progress"]["percent"] == 17.5
    assert p.status["progress"]["text"] == "18% training epoch 3/40, ETA 3m20s"
    assert p.status["progress"]["phase"] == "train"
    assert p.status["progress"]["epoch"] == 3 and p.status["progress"]["etaSeconds"] == 200
    assert p.requeue_after == S.progress_interval
    assert cond(p.status, "Progressing")["status"] == "True"
    body = advance(body, p)

    # done: figures, artifacts, provenance
    jobs = [job(manifest, complete=True, start=1, end=61)]
    pods = [pod(manifest, phase="Succeeded", node="gpu-node-0", exit_code=0, message=FT_RESULT)]
    p = kinds.plan(body, jobs, pods, S, at(62))
    st = p.status
    assert st["phase"] == "Succeeded" and st["completionTime"] == iso(62)
    assert st["metrics"]["finetuned"]["mAP"] == 0.7 and st["metrics"]["base"]["mAP50"] == 0.229
    assert st["artifacts"]["checkpoint"] == "pvc://edgetune-artifacts/demo/finetunejob/balloon/finetune/best.pth"
    assert st["provenance"]["finetune"]["epochs"] == 40
    assert st["progress"]["percent"] == 100.0
    (step,) = st["steps"]
    assert step["phase"] == "Succeeded" and step["durationSeconds"] == 60.0 and step["node"] == "gpu-node-0"
    assert cond(st, "Ready")["status"] == "True" and cond(st, "Failed")["status"] == "False"
    assert ("Normal", "Succeeded", "fine-tuned: mAP 0.700, mAP50 0.818") in p.events
    body = advance(body, p)

    # sticky: with the Job and Pods gone, nothing is re-created and nothing changes
    p = kinds.plan(body, [], [], S, at(600))
    assert not p.create and not p.events and merge_patch(body["status"], p.status) is None


def test_condition_transition_time_is_kept():
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "b")
    p = kinds.plan(body, [], [], S, at(0))
    body = advance(body, p)
    p2 = kinds.plan(body, [], [], S, at(50))
    assert cond(p2.status, "Ready")["lastTransitionTime"] == iso(0)


def test_failed_job_carries_the_job_message():
    body = res("FinetuneJob", {"dataset": {"url": "https://h/x.zip"}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    body = advance(body, kinds.plan(body, [], [], S, at(0)))
    msg = result("finetune", False, reason="DatasetNotFound", message="https://h/x.zip: HTTP 404")
    p = kinds.plan(body, [job(manifest, failed=True)], [pod(manifest, phase="Failed", exit_code=1, message=msg)],
                       S, at(70))
    st = p.status
    assert st["phase"] == "Failed" and st["message"] == "finetune: https://h/x.zip: HTTP 404"
    c = cond(st, "Failed")
    assert (c["status"], c["reason"]) == ("True", "DatasetNotFound")
    assert cond(st, "Ready")["status"] == "False"
    assert p.failed_steps == ["finetune"]
    assert any(e[0] == "Warning" and e[1] == "StepFailed" for e in p.events)


def test_failed_job_without_result_uses_the_log_tail():
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    tail = "Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n"
    p = kinds.plan(body, [job(manifest, failed=True)], [pod(manifest, phase="Failed", exit_code=1, message=tail)],
                       S, at(70))
    assert p.status["phase"] == "Failed"
    assert p.status["message"] == "finetune: exit code 1: RuntimeError: CUDA out of memory"
    assert cond(p.status, "Failed")["reason"] == "BackoffLimitExceeded"


def test_a_container_killed_for_memory_says_oomkilled_and_what_to_raise():
    """The kernel's OOM kill leaves no result document and at most a partial log: the
    kubelet's terminated reason is what tells the user."""
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    p = kinds.plan(body, [job(manifest, failed=True)],
                   [pod(manifest, phase="Failed", node="gpu-0", exit_code=137, message="epoch 3\n", term_reason="OOMKilled")],
                   S, at(70))
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "OOMKilled"
    msg = p.status["message"]
    assert "node gpu-0" in msg and "exit code 137" in msg and "resources.limits.memory" in msg and "epoch 3" in msg


def test_deadline_exceeded():
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    p = kinds.plan(body, [job(manifest, failed=True, reason="DeadlineExceeded",
                                  msg="Job was active longer than specified deadline")], [], S, at(9000))
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "DeadlineExceeded"
    assert "longer than specified deadline" in p.status["message"]


def test_complete_job_waits_briefly_for_the_pod_status():
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    p = kinds.plan(body, [job(manifest, complete=True, start=1, end=61)],
                       [pod(manifest, phase="Running", node="n")], S, at(62))
    assert p.status["phase"] == "Running" and p.requeue_after == 2.0
    p = kinds.plan(body, [job(manifest, complete=True, start=1, end=61)], [], S, at(200))
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "InvalidResult"


# --- ModelConversion -------------------------------------------------------------------------------

MC_SPEC = {"source": {"finetuneJob": "balloon"}, "backend": "onnxruntime", "precision": "fp32",
           "verify": {"maxMapDrop": 0.02}}


def ft_done():
    st = {"phase": "Succeeded", "model": "rtmdet_tiny_8xb32-300e_coco", "artifacts": {
        "checkpoint": "pvc://edgetune-artifacts/demo/finetunejob/balloon/finetune/best.pth",
        "config": "pvc://edgetune-artifacts/demo/finetunejob/balloon/finetune/config.py",
        "dataset": "pvc://edgetune-artifacts/demo/finetunejob/balloon/finetune/data"}}
    return res("FinetuneJob", {"dataset": {"generate": {}}}, "balloon", status=st)


def test_conversion_missing_source_is_a_condition():
    body = res("ModelConversion", MC_SPEC, "conv")
    p = kinds.plan(body, [], [], S, at(0), related=None)
    assert not p.create
    c = cond(p.status, "SourceReady")
    assert (c["status"], c["reason"]) == ("False", "SourceNotFound") and "'balloon' not found" in c["message"]
    assert p.status["phase"] == "Pending" and p.status["stage"] == "Waiting"
    assert cond(p.status, "Progressing")["status"] == "False"
    assert any(e[1] == "SourceNotFound" for e in p.events)
    pending = res("FinetuneJob", {"dataset": {"generate": {}}}, "balloon", status={"phase": "Running"})
    p = kinds.plan(body, [], [], S, at(0), related=pending)
    assert not p.create and cond(p.status, "SourceReady")["reason"] == "WaitingForSource"


def run_step(body, manifest, res_text, t, related=None):
    jobs = [job(manifest, complete=True, start=t - 10, end=t)]
    pods = [pod(manifest, phase="Succeeded", node="n", exit_code=0, message=res_text)]
    return jobs, pods


def test_conversion_chain_and_accuracy_gate():
    body = res("ModelConversion", MC_SPEC, "conv")
    src = ft_done()
    p = kinds.plan(body, [], [], S, at(0), related=src)
    (export,) = p.create
    args = parsed(export, ExportArgs)
    assert args.checkpoint == "/artifacts/demo/finetunejob/balloon/finetune/best.pth"
    assert args.config == "/artifacts/demo/finetunejob/balloon/finetune/config.py"
    assert args.val_dataset == "/artifacts/demo/finetunejob/balloon/finetune/data"
    assert p.status["stage"] == "export" and p.status["model"] == "rtmdet_tiny_8xb32-300e_coco"
    assert cond(p.status, "SourceReady")["status"] == "True"
    body = advance(body, p)

    exp_res = result("export", metrics={"onnx_bytes": 1234}, artifacts={"onnx": "end2end.onnx", "meta": "pipeline.json"})
    jobs, pods = run_step(body, export, exp_res, 100)
    p = kinds.plan(body, jobs, pods, S, at(101), related=None)  # the source may be gone by now
    (build,) = p.create
    assert build["metadata"]["name"] == "conv-build-engine"
    bargs = parsed(build, BuildEngineArgs)
    assert bargs.onnx == "/artifacts/demo/modelconversion/conv/export/end2end.onnx"
    assert bargs.meta == "/artifacts/demo/modelconversion/conv/export/pipeline.json"
    assert (bargs.backend, bargs.precision) == ("onnxruntime", "fp32")
    assert build["spec"]["template"]["spec"]["nodeSelector"] == {"edgetune.io/device": "jetson-orin"}
    assert p.status["stage"] == "build-engine" and p.status["metrics"]["onnxBytes"] == 1234
    body = advance(body, p)

    b_res = result("build-engine", metrics={"build_seconds": 3.0, "engine_bytes": 99}, artifacts={"model": "end2end.onnx"})
    j2, p2 = run_step(body, build, b_res, 200)
    p = kinds.plan(body, jobs + j2, pods + p2, S, at(201))
    (verify,) = p.create
    vargs = parsed(verify, VerifyArgs)
    assert vargs.model == "/artifacts/demo/modelconversion/conv/build-engine/end2end.onnx"
    assert vargs.val_dataset == "/artifacts/demo/finetunejob/balloon/finetune/data"
    assert vargs.max_map_drop == 0.02  # the verify step owns the accuracy gate: it gets the limit
    body = advance(body, p)

    # the step's verdict on a drop over the limit: ok=false, exit 1, the Job fails
    v_res = result("verify", ok=False, reason="AccuracyDropTooLarge",
                   message="onnxruntime fp32 mAP 0.6500 vs PyTorch 0.7000, drop +0.0500 > allowed 0.02 on 13 images",
                   metrics={"converted": {"mAP": 0.65}, "reference": {"mAP": 0.70}, "map_drop": 0.05})
    j3 = [job(verify, failed=True)]
    p3 = [pod(verify, phase="Failed", node="n", exit_code=1, message=v_res)]
    p = kinds.plan(body, jobs + j2 + j3, pods + p2 + p3, S, at(301))
    st = p.status
    assert st["phase"] == "Failed" and st["stage"] == "verify"
    assert cond(st, "Failed")["reason"] == "AccuracyDropTooLarge"
    assert st["metrics"]["mapDrop"] == 0.05 and st["metrics"]["converted"]["mAP"] == 0.65
    assert st["message"] == ("verify: onnxruntime fp32 mAP 0.6500 vs PyTorch 0.7000, drop +0.0500 > allowed 0.02"
                             " on 13 images")
    assert [s["phase"] for s in st["steps"]] == ["Succeeded", "Succeeded", "Failed"]

    v_ok = result("verify", metrics={"converted": {"mAP": 0.695}, "reference": {"mAP": 0.70}, "map_drop": 0.005})
    j3, p3 = run_step(body, verify, v_ok, 300)
    p = kinds.plan(body, jobs + j2 + j3, pods + p2 + p3, S, at(301))
    assert p.status["phase"] == "Succeeded" and p.status["stage"] == "Done"
    assert p.status["artifacts"]["model"] == "pvc://edgetune-artifacts/demo/modelconversion/conv/build-engine/end2end.onnx"
    assert p.status["completionTime"] == iso(301)


def test_conversion_from_a_checkpoint_without_verify():
    spec = {"source": {"model": {"checkpoint": "models/x.pth", "config": "models/rtmdet_tiny_custom.py"}},
            "verify": {"enabled": False}}
    p = kinds.plan(res("ModelConversion", spec, "c"), [], [], S, at(0))
    args = parsed(p.create[0], ExportArgs)
    assert (args.checkpoint, args.config) == ("/artifacts/models/x.pth", "/artifacts/models/rtmdet_tiny_custom.py")
    assert args.val_dataset is None
    assert p.status["model"] == "rtmdet_tiny_custom"


# --- EdgeBenchmark ----------------------------------------------------------------------------------

def conv_done(backend="tensorrt"):
    st = {"phase": "Succeeded", "model": "rtmdet_tiny_8xb32-300e_coco",
          "source": {"valDataset": "pvc://edgetune-artifacts/demo/finetunejob/balloon/finetune/data"},
          "artifacts": {"engine": "pvc://edgetune-artifacts/demo/modelconversion/conv/build-engine/end2end.engine",
                        "meta": "pvc://edgetune-artifacts/demo/modelconversion/conv/export/pipeline.json"}}
    return res("ModelConversion", {"source": {"finetuneJob": "balloon"}, "backend": backend, "precision": "fp16"},
               "conv", status=st)


BENCH = result("benchmark", metrics={
    **{s: {"mean_ms": m, "p50_ms": m - 0.1, "p90_ms": m + 0.5, "p99_ms": m + 2, "min_ms": m - 1, "max_ms": m + 3}
       for s, m in (("preprocess", 5.1), ("inference", 10.9), ("postprocess", 0.4), ("pipeline", 16.6))},
    "fps": 60.2}, provenance={"device": "jetson-orin (Orin, JetPack 5.1.2)", "iterations": 200})


def test_benchmark_waits_for_the_model():
    body = res("EdgeBenchmark", {"modelConversion": "conv"}, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=None)
    assert p.status["phase"] == "Waiting" and cond(p.status, "ModelReady")["reason"] == "SourceNotFound"
    running = res("ModelConversion", {"source": {"finetuneJob": "b"}}, "conv", status={"phase": "Running"})
    p = kinds.plan(body, [], [], S, at(0), related=running)
    c = cond(p.status, "ModelReady")
    assert (c["status"], c["reason"]) == ("False", "WaitingForModel") and not p.create
    assert p.status["phase"] == "Waiting"


def test_benchmark_run_and_figures():
    body = res("EdgeBenchmark", {"modelConversion": "conv"}, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=conv_done())
    (manifest,) = p.create
    args = parsed(manifest, BenchmarkArgs)
    assert args.model == "/artifacts/demo/modelconversion/conv/build-engine/end2end.engine"
    assert args.backend == "tensorrt" and args.images == "/artifacts/demo/finetunejob/balloon/finetune/data/images"
    assert cond(p.status, "ModelReady")["status"] == "True"
    assert (p.status["backend"], p.status["precision"]) == ("tensorrt", "fp16")
    body = advance(body, p)
    jobs, pods = run_step(body, manifest, BENCH, 100)
    p = kinds.plan(body, jobs, pods, S, at(101), related=conv_done())
    st = p.status
    assert st["phase"] == "Succeeded"
    assert st["latency"]["pipeline"] == {"meanMs": 16.6, "p50Ms": 16.5, "p90Ms": 17.1, "p99Ms": 18.6,
                                         "minMs": 15.6, "maxMs": 19.6}
    assert st["throughputFps"] == 60.2 and st["device"] == "jetson-orin (Orin, JetPack 5.1.2)"
    assert st["history"][0]["run"] == 1 and st["history"][0]["p50Ms"] == 16.5
    assert p.requeue_after is None and "nextScheduleTime" not in st


def test_scheduled_benchmark_reruns_and_prunes():
    body = res("EdgeBenchmark", {"modelConversion": "conv", "schedule": "*/10 * * * *", "historyLimit": 2}, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=conv_done())
    m1 = p.create[0]
    assert p.status["lastScheduleTime"] == iso(0)
    body = advance(body, p)
    jobs, pods = run_step(body, m1, BENCH, 60)
    p = kinds.plan(body, jobs, pods, S, at(61), related=conv_done())
    assert p.status["phase"] == "Succeeded" and p.status["nextScheduleTime"] == iso(600)
    assert 538 < p.requeue_after < 541 and not p.create
    body = advance(body, p)
    # the tick is due: run 2
    p = kinds.plan(body, jobs, pods, S, at(600), related=conv_done())
    (m2,) = p.create
    assert m2["metadata"]["name"] == "bench-benchmark-2" and p.status["run"] == 2
    assert m2["metadata"]["labels"]["edgetune.io/run"] == "2"
    assert parsed(m2, BenchmarkArgs).out == "/artifacts/demo/edgebenchmark/bench/benchmark-2"
    body = advance(body, p)
    j2, p2 = run_step(body, m2, BENCH, 660)
    p = kinds.plan(body, jobs + j2, pods + p2, S, at(661), related=conv_done())
    assert [h["run"] for h in p.status["history"]] == [2, 1]
    body = advance(body, p)
    p = kinds.plan(body, jobs + j2, pods + p2, S, at(1200), related=conv_done())
    (m3,) = p.create
    body = advance(body, p)
    j3, p3 = run_step(body, m3, BENCH, 1260)
    p = kinds.plan(body, jobs + j2 + j3, pods + p2 + p3, S, at(1261), related=conv_done())
    assert [h["run"] for h in p.status["history"]] == [3, 2]
    assert p.delete == ["bench-benchmark"]  # run 1 fell out of the history


def test_ticks_that_come_while_a_run_is_going_are_skipped_and_recorded_once():
    """Forbid, like a CronJob's concurrencyPolicy: run 1 lasts 25 minutes across the ticks at
    :10 and :20; no second Job starts meanwhile, run 2 starts at :30, and both ticks are
    counted (once, however often the resource is reconciled) with a RunSkipped Event."""
    body = res("EdgeBenchmark", {"modelConversion": "conv", "schedule": "*/10 * * * *"}, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=conv_done())
    m1 = p.create[0]
    body = advance(body, p)
    jobs, pods = run_step(body, m1, BENCH, 1500)
    running = [job(m1, active=1)], [pod(m1, phase="Running", node="jetson-0")]
    p = kinds.plan(body, *running, S, at(700), related=conv_done())  # the :10 tick, run 1 still going
    assert not p.create and p.status["phase"] == "Running" and "skippedRuns" not in p.status
    body = advance(body, p)
    p = kinds.plan(body, jobs, pods, S, at(1501), related=conv_done())
    assert not p.create and p.status["skippedRuns"] == 2 and p.status["lastSkippedTime"] == iso(1200)
    assert p.status["nextScheduleTime"] == iso(1800)
    (skip,) = [e for e in p.events if e[1] == "RunSkipped"]
    assert skip[0] == "Normal" and "2 scheduled run(s) skipped" in skip[2] and "run 1" in skip[2]
    body = advance(body, p)
    p = kinds.plan(body, jobs, pods, S, at(1600), related=conv_done())  # reconciled again: not counted twice
    assert p.status["skippedRuns"] == 2 and not [e for e in p.events if e[1] == "RunSkipped"]
    body = advance(body, p)
    p = kinds.plan(body, jobs, pods, S, at(1800), related=conv_done())
    (m2,) = p.create
    assert m2["metadata"]["name"] == "bench-benchmark-2" and p.status["skippedRuns"] == 2


def test_merge_patch():
    assert merge_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"a": 1, "b": {"c": 2}, "e": [1]}) == \
        {"b": {"c": 2, "d": None}, "e": [1]}
    assert merge_patch({"a": [1]}, {"a": [1]}) is None


def test_a_failed_source_fails_the_conversion_and_then_the_benchmark():
    failed_ft = res("FinetuneJob", {"dataset": {"url": "https://h/x.zip"}}, "balloon",
                    status={"phase": "Failed", "message": "finetune: https://h/x.zip: HTTP 404"})
    p = kinds.plan(res("ModelConversion", MC_SPEC, "conv"), [], [], S, at(0), related=failed_ft)
    assert not p.create and p.status["phase"] == "Failed" and p.status["stage"] == "Failed"
    c = cond(p.status, "Failed")
    assert (c["status"], c["reason"]) == ("True", "SourceFailed") and "HTTP 404" in c["message"]
    assert ("Warning", "SourceFailed", c["message"]) in p.events
    failed_mc = res("ModelConversion", MC_SPEC, "conv", status={"phase": "Failed", "message": c["message"]})
    p = kinds.plan(res("EdgeBenchmark", {"modelConversion": "conv"}, "bench"), [], [], S, at(0), related=failed_mc)
    assert not p.create and p.status["phase"] == "Failed"
    c = cond(p.status, "Failed")
    assert c["reason"] == "ModelConversionFailed" and "HTTP 404" in c["message"]
    # a source that is only late is waited for, not failed
    p = kinds.plan(res("ModelConversion", MC_SPEC, "conv"), [], [], S, at(0),
                   related=res("FinetuneJob", {"dataset": {"generate": {}}}, "balloon", status={"phase": "Running"}))
    assert p.status["phase"] == "Pending" and cond(p.status, "Failed")["status"] == "False"


def test_a_pod_stuck_waiting_fails_the_step_after_the_waiting_timeout():
    body = res("FinetuneJob", {"dataset": {"generate": {}}, "run": {"podWaitingTimeoutSeconds": 60}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    body = advance(body, kinds.plan(body, [], [], S, at(0)))
    stuck = pod(manifest, node="gpu-node-0")
    stuck["container"] = {"state": "waiting", "reason": "ErrImageNeverPull",
                          "message": 'Container image "ghcr.io/edgetune/trainer:0.1.0" is not present with pull policy of Never'}
    jobs = [job(manifest, active=1)]
    # within the timeout: the kubelet's reason and message in status, and a wake-up at the timeout
    p = kinds.plan(body, jobs, [stuck], S, at(31))
    assert p.status["phase"] == "Pending" and cond(p.status, "Ready")["reason"] == "ErrImageNeverPull"
    assert "is not present with pull policy of Never" in p.status["message"] and not p.delete
    assert 29 < p.requeue_after <= 30.5  # the Pod was created at 1 s: 60 s later
    body = advance(body, p)
    # past it: Failed with that reason, the Job deleted, nothing created again
    p = kinds.plan(body, jobs, [stuck], S, at(62))
    st = p.status
    assert st["phase"] == "Failed" and cond(st, "Failed")["reason"] == "ErrImageNeverPull"
    assert "waited 61 s, the waiting timeout is 60 s" in st["message"] and "gpu-node-0" in st["message"]
    assert p.delete == ["b-finetune"] and not p.create
    # a Pod merely starting (pulling a large image) is not stuck, however long it takes
    starting = dict(stuck, container={"state": "waiting", "reason": "ContainerCreating", "message": ""})
    fresh = advance(body, kinds.plan(body, [], [], S, at(0)))
    fresh["status"].pop("steps", None)
    p = kinds.plan(fresh, jobs, [starting], S, at(5000))
    assert p.status["phase"] == "Pending" and cond(p.status, "Ready")["reason"] == "ContainerCreating"
    assert not p.delete


def test_a_job_deleted_while_its_step_runs_is_recreated_once_then_the_step_fails():
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    body = advance(body, kinds.plan(body, [], [], S, at(0)))
    p = kinds.plan(body, [job(manifest, active=1)], [pod(manifest, phase="Running", node="gpu-node-0")], S, at(10))
    body = advance(body, p)
    # someone deletes the Job: it is created again, with a Warning, and the step says so
    p = kinds.plan(body, [], [], S, at(20))
    assert [j["metadata"]["name"] for j in p.create] == ["b-finetune"]
    assert any(e[:2] == ("Warning", "JobRecreated") for e in p.events)
    (step,) = p.status["steps"]
    assert step["recreated"] == 1 and step["reason"] == "JobRecreated" and p.status["phase"] == "Pending"
    body = advance(body, p)
    p = kinds.plan(body, [job(manifest, active=1)], [pod(manifest, phase="Running", node="gpu-node-0")], S, at(30))
    assert p.status["steps"][0]["recreated"] == 1  # kept while the recreated Job runs
    body = advance(body, p)
    # deleted again: the step fails, nothing is created
    p = kinds.plan(body, [], [], S, at(40))
    assert not p.create and p.status["phase"] == "Failed"
    assert cond(p.status, "Failed")["reason"] == "JobDeleted" and "deleted while the step ran, again" in p.status["message"]


def replica(manifest, index, **kw):
    return pod(manifest, suffix=f"{index}-x", index=index, **kw)


def test_a_distributed_finetunejob_is_an_indexed_job_behind_a_headless_service():
    spec = {"dataset": {"generate": {}}, "training": {"replicas": 2, "processesPerReplica": 2, "checkpointInterval": 5},
            "run": {"queueName": "gpu-queue"}}
    p = kinds.plan(res("FinetuneJob", spec, "b"), [], [], S, at(0))
    svc, manifest = p.create
    assert svc["kind"] == "Service" and svc["metadata"]["name"] == "b-finetune"
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {"batch.kubernetes.io/job-name": "b-finetune"}
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-b"
    js = manifest["spec"]
    assert (js["completionMode"], js["completions"], js["parallelism"]) == ("Indexed", 2, 2)
    assert js["template"]["spec"]["subdomain"] == "b-finetune"
    assert js["suspend"] is True and manifest["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    container = js["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2  # one GPU per process
    a = parsed(manifest, FinetuneArgs)
    assert (a.nnodes, a.nproc_per_node, a.master_addr, a.master_port, a.checkpoint_interval) == (
        2, 2, "b-finetune-0.b-finetune", 29500, 5)
    single = parsed(kinds.plan(res("FinetuneJob", {"dataset": {"generate": {}}}, "s"), [], [], S, at(0)).create[0],
                    FinetuneArgs)
    assert (single.nnodes, single.master_addr) == (1, None)


def test_replicas_that_cannot_all_start_fail_after_the_start_timeout():
    spec = {"dataset": {"generate": {}}, "training": {"replicas": 2, "startTimeoutSeconds": 120}}
    body = res("FinetuneJob", spec, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[1]
    body = advance(body, kinds.plan(body, [], [], S, at(0)))
    msg = "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    pods = [replica(manifest, 0, phase="Running", node="gpu-node-0"), replica(manifest, 1, unschedulable=msg)]
    jobs = [job(manifest, active=2)]
    p = kinds.plan(body, jobs, pods, S, at(60))
    c = cond(p.status, "Scheduled")
    assert (c["status"], c["reason"], c["message"]) == ("False", "Unschedulable", msg)  # the one that cannot start
    assert p.status["phase"] == "Running" and not p.delete and p.requeue_after <= 61.5  # awake by the timeout
    body = advance(body, p)
    p = kinds.plan(body, jobs, pods, S, at(125))
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "StartTimeout"
    assert "1 of 2 replicas running" in p.status["message"] and msg in p.status["message"]
    assert p.delete == ["b-finetune"]  # the running replica stops holding its GPU


def test_a_distributed_result_comes_from_replica_0():
    spec = {"dataset": {"generate": {}}, "training": {"replicas": 2}}
    body = res("FinetuneJob", spec, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[1]
    body = advance(body, kinds.plan(body, [], [], S, at(0)))
    worker = result("finetune", message="worker of node rank 1 done")
    pods = [replica(manifest, 1, phase="Succeeded", node="gpu-node-1", exit_code=0, message=worker),
            replica(manifest, 0, phase="Succeeded", node="gpu-node-0", exit_code=0, message=FT_RESULT)]
    p = kinds.plan(body, [job(manifest, complete=True, end=90)], pods, S, at(91))
    assert p.status["phase"] == "Succeeded" and p.status["metrics"]["finetuned"]["mAP"] == 0.7
    assert p.status["steps"][0]["node"] == "gpu-node-0"


# --- a node that stops responding ---------------------------------------------------------------

def node(name, ready="True", reason="KubeletReady", message="kubelet is posting ready status", unreachable=False):
    taints = [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}] if unreachable else []
    return observe.summarize_node({"metadata": {"name": name}, "spec": {"taints": taints}, "status": {"conditions": [
        {"type": "Ready", "status": ready, "reason": reason, "message": message, "lastTransitionTime": iso(30)}]}})


LOST = node("jetson-0", "Unknown", "NodeStatusUnknown", "Kubelet stopped posting node status.", unreachable=True)
EVICTED = "Taint manager: deleting due to NoExecute taint"


def test_a_node_that_stops_responding_is_a_condition_then_the_evicted_step_is_retried():
    body = res("EdgeBenchmark", {"modelConversion": "conv", "run": {"backoffLimit": 1}}, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=conv_done())
    (manifest,) = p.create
    assert manifest["spec"]["backoffLimit"] == 1
    body = advance(body, p)
    running = pod(manifest, phase="Running", node="jetson-0", ready="True")
    jobs = [job(manifest, active=1)]
    p = kinds.plan(body, jobs, [running], S, at(20), related=conv_done(), nodes={"jetson-0": node("jetson-0")})
    assert p.status["phase"] == "Running" and "NodeReady" not in {c["type"] for c in p.status["conditions"]}
    body = advance(body, p)
    # the kubelet is gone: the Pod still says Running, the node lifecycle controller says why
    stale = pod(manifest, phase="Running", node="jetson-0", ready="False")
    p = kinds.plan(body, jobs, [stale], S, at(60), related=conv_done(), nodes={"jetson-0": LOST})
    c = cond(p.status, "NodeReady")
    assert (c["status"], c["reason"]) == ("False", "NodeNotReady")
    assert "jetson-0" in c["message"] and "Kubelet stopped posting node status" in c["message"]
    assert [e[1] for e in p.events if e[0] == "Warning"] == ["NodeNotReady"]
    body = advance(body, p)
    p = kinds.plan(body, jobs, [stale], S, at(65), related=conv_done(), nodes={"jetson-0": LOST})
    assert not p.events  # said once
    body = advance(body, p)
    # evicted: the old Pod never finishes terminating, its replacement waits for the node
    old = pod(manifest, phase="Running", node="jetson-0", ready="False", disruption=EVICTED, deleting=True)
    waiting = pod(manifest, suffix="fghij", unschedulable="0/4 nodes are available: 1 node(s) had untolerated taint "
                                                          "{node.kubernetes.io/unreachable: }")
    p = kinds.plan(body, [job(manifest, active=1)], [old, waiting], S, at(80), related=conv_done(),
                   nodes={"jetson-0": LOST})
    c = cond(p.status, "NodeReady")
    assert (c["status"], c["reason"]) == ("False", "PodEvicted") and "retries" in c["message"]
    assert p.status["phase"] == "Pending" and "untolerated taint" in cond(p.status, "Scheduled")["message"]
    assert "PodEvicted" in [e[1] for e in p.events]
    body = advance(body, p)
    # the node is back and the retry is bound to it, before our copy of the node says so (the
    # node and Pod watches race): no second NodeNotReady, the condition waits for the node's event
    again = pod(manifest, suffix="fghij", phase="Running", node="jetson-0", ready="True", created=70)
    p = kinds.plan(body, [job(manifest, active=1)], [again], S, at(118), related=conv_done(),
                   nodes={"jetson-0": LOST})
    assert cond(p.status, "NodeReady")["reason"] == "PodEvicted" and not [e for e in p.events if e[0] == "Warning"]
    body = advance(body, p)
    # the node is back: the retry runs there, and finishes
    p = kinds.plan(body, [job(manifest, active=1)], [again], S, at(120), related=conv_done(),
                   nodes={"jetson-0": node("jetson-0")})
    assert p.status["phase"] == "Running" and cond(p.status, "NodeReady")["status"] == "True"


def test_a_lost_node_with_no_retry_left_fails_the_step_with_nodelost():
    body = res("EdgeBenchmark", {"modelConversion": "conv"}, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=conv_done())
    (manifest,) = p.create
    body = advance(body, p)
    old = pod(manifest, phase="Running", node="jetson-0", ready="False", disruption=EVICTED, deleting=True)
    # the Job controller decides at once (FailureTarget); Failed waits for a Pod that never terminates
    failing = job(manifest, active=0)
    failing["conditions"]["FailureTarget"] = {"status": "True", "reason": "BackoffLimitExceeded",
                                             "message": "Job has reached the specified backoff limit", "time": iso(90)}
    p = kinds.plan(body, [failing], [old], S, at(91), related=conv_done(), nodes={"jetson-0": LOST})
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "NodeLost"
    msg = p.status["message"]
    assert "node jetson-0 stopped responding" in msg and EVICTED in msg and "backoffLimit" in msg


def test_a_node_index_entry_says_ready_and_unreachable():
    assert (LOST["ready"], LOST["unreachable"], LOST["reason"]) == ("Unknown", True, "NodeStatusUnknown")
    assert node("gpu-node-0")["ready"] == "True" and not node("gpu-node-0")["unreachable"]


def test_a_resumed_run_says_so_in_its_message():
    body = res("FinetuneJob", {"dataset": {"generate": {}}, "training": {"checkpointInterval": 1}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    body = advance(body, kinds.plan(body, [], [], S, at(0)))
    done = result("finetune", message="bbox mAP n/a -> 0.7 (resumed from epoch 3)",
                  metrics={"finetuned": {"mAP": 0.7, "mAP50": 0.8}}, provenance={"resumed_from_epoch": 3})
    jobs, pods = run_step(body, manifest, done, 100)
    p = kinds.plan(body, jobs, pods, S, at(101))
    assert p.status["phase"] == "Succeeded" and p.status["message"].endswith("(resumed from epoch 3)")
    assert p.status["provenance"]["finetune"]["resumed_from_epoch"] == 3


def test_a_failure_target_waits_for_the_pods_result_document():
    """The Job controller decides (FailureTarget) before the Pod's final status is posted: the
    step's own reason, from its result document, is waited for, not BackoffLimitExceeded."""
    body = res("FinetuneJob", {"dataset": {"generate": {}}}, "b")
    manifest = kinds.plan(body, [], [], S, at(0)).create[0]
    body = advance(body, kinds.plan(body, [], [], S, at(0)))
    failing = job(manifest, active=0)
    failing["conditions"]["FailureTarget"] = {"status": "True", "reason": "BackoffLimitExceeded",
                                             "message": "Job has reached the specified backoff limit", "time": iso(60)}
    p = kinds.plan(body, [failing], [pod(manifest, phase="Running", node="gpu-0")], S, at(61))
    assert p.status["phase"] == "Running" and p.requeue_after == 2.0  # Finishing
    bad = result("finetune", ok=False, reason="ArtifactCorrupted", message="checkpoint /x/best.pth is truncated")
    p = kinds.plan(body, [failing], [pod(manifest, phase="Failed", node="gpu-0", exit_code=1, message=bad)], S, at(63))
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "ArtifactCorrupted"
    # a Pod that never reports: the Job's reason after the grace period
    p = kinds.plan(body, [failing], [pod(manifest, phase="Running", node="gpu-0")], S, at(200))
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "BackoffLimitExceeded"
