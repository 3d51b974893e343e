"""Distributed fine-tuning on the local cluster's real nodes: an Indexed Job of two Pods behind
a headless Service, torchrun with gloo on the CPU, the rendezvous on replica 0's DNS name
(CoreDNS); one replica's training process killed mid-run and the run resumed from the last
checkpoint; and a replica that cannot be scheduled failing the resource after the start
timeout with nothing left running."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("operator_fixtures")
from operator_fixtures import real_steps_settings, wait_for  # noqa: E402

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.cluster, pytest.mark.ml]

# CPU training: no GPU requested, so both replicas fit on the one GPU node of the cluster
CPU_PLACEMENT = {"resources": {"requests": {"cpu": "100m"}}}


def finetune(name, ns, **training):
    spec = {"dataset": {"generate": {"images": 12}}, "placement": CPU_PLACEMENT, "run": {"backoffLimit": 4},
            "training": {"epochs": 2, "batchSize": 2, "imageSize": 64, "workers": 0, "valInterval": 1,
                         "device": "cpu", "replicas": 2, **training}}
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": "FinetuneJob", "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def replica_pods(kube, ns, job):
    pods = kube.get("pods", ns=ns, selector=f"batch.kubernetes.io/job-name={job}")["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


def terminated(pod):
    return ((pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("terminated") or {}


def on_the_volume(kube, ns, checkpoint):
    """The base checkpoint and its sidecar on the namespace's artifact volume (a local folder
    of the cluster's provisioner), where a user's pretrained weights would be; its spec path."""
    from edgetune_jobs.training import base_model

    pvc = kube.get("pvc", "edgetune-artifacts", ns)
    folder = Path(kube.get("pv", pvc["spec"]["volumeName"])["spec"]["hostPath"]["path"]) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    for src in (checkpoint, base_model.sidecar_path(checkpoint)):
        shutil.copyfile(src, folder / src.name)
        (folder / src.name).chmod(0o644)
    return f"models/{checkpoint.name}"


@pytest.mark.timeout(3600)  # the base model, on a cold cache, is pre-trained first (15-30 min)
def test_two_replicas_train_with_torchrun(kube, ns, start_operator, ml_image):
    from edgetune_jobs.training import base_model

    # from the base model (pre-trained here once, cached): 6 iterations of random weights
    # detect nothing, and a figure of None is no figure in status
    ckpt = base_model.ensure(log=lambda m: print(f"base model: {m}", flush=True))
    start_operator([ns], extra_env=real_steps_settings(ml_image))
    body = finetune("ddp", ns)
    body["spec"]["model"] = {"checkpoint": on_the_volume(kube, ns, ckpt)}
    kube.apply(body)
    st = kube.wait_phase("FinetuneJob", "ddp", ns, ("Succeeded", "Failed"), timeout=900)
    assert st["phase"] == "Succeeded", st.get("message")
    dist = st["provenance"]["finetune"]["distributed"]
    assert (dist["world_size"], dist["nnodes"], dist["backend"]) == (2, 2, "gloo")
    assert dist["lr"] == pytest.approx(2 * dist["lr_given"])
    assert 0 <= st["metrics"]["finetuned"]["mAP"] <= 1  # rank 0 evaluated
    assert st["provenance"]["finetune"]["base_model"]["stamp"] == base_model.stamp()
    # the Indexed Job, its headless Service, and both replicas' own accounts of their ranks
    (job,) = kube.jobs(ns)
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 2
    svc = kube.get("service", "ddp-finetune", ns)
    assert svc["spec"]["clusterIP"] == "None"
    pods = {p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"]: p
            for p in replica_pods(kube, ns, "ddp-finetune")}
    assert sorted(pods) == ["0", "1"]
    for index, pod in pods.items():
        log = kube.run("logs", pod["metadata"]["name"], "-n", ns).stdout
        assert f"node {index} of 2" in log and "rendezvous ddp-finetune-0.ddp-finetune:29500" in log
        assert f"rank {index}: trained" in log
    one = json.loads(terminated(pods["1"])["message"])
    assert one["ok"] and one["message"].startswith("node 1: training done")


def _kill_torchrun(kube, ns, pod_name):
    """SIGKILL the replica's torchrun (its workers go with it), as a lost process would."""
    script = ("import os, signal\n"
              "for p in os.listdir('/proc'):\n"
              "    if p.isdigit():\n"
              "        try: cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
              "        except OSError: continue\n"
              "        if b'torch.distributed.run' in cmd: os.kill(int(p), signal.SIGKILL); print('killed', p)\n")
    return kube.run("exec", pod_name, "-n", ns, "--", "python", "-c", script, check=False)


def test_a_killed_replica_makes_the_job_retry_and_the_training_resume(kube, ns, start_operator, ml_image):
    start_operator([ns], extra_env=real_steps_settings(ml_image))
    kube.apply(finetune("resume", ns, epochs=5, checkpointInterval=1))

    def in_epoch_3():
        p = kube.status("FinetuneJob", "resume", ns).get("progress") or {}
        return p.get("phase") == "train" and (p.get("epoch") or 0) >= 3 and p

    wait_for(in_epoch_3, timeout=900, what="training in epoch 3")
    pods = [p for p in replica_pods(kube, ns, "resume-finetune")
            if p["metadata"]["labels"]["batch.kubernetes.io/job-completion-index"] == "1"]
    got = _kill_torchrun(kube, ns, pods[-1]["metadata"]["name"])
    assert "killed" in got.stdout, (got.stdout, got.stderr)
    st = kube.wait_phase("FinetuneJob", "resume", ns, ("Succeeded", "Failed"), timeout=900)
    assert st["phase"] == "Succeeded", st.get("message")
    resumed = st["provenance"]["finetune"]["resumed_from_epoch"]
    assert resumed >= 2 and f"resumed from epoch {resumed}" in st["message"]
    failed = [p for p in replica_pods(kube, ns, "resume-finetune") if p["status"].get("phase") == "Failed"]
    assert failed, "the kill failed no Pod: nothing was retried"
    assert any("DistributedFailed" in (terminated(p).get("message") or "") or "rank" in
               (terminated(p).get("message") or "") for p in failed), [terminated(p) for p in failed]


def test_an_unschedulable_replica_fails_the_run_after_the_start_timeout(kube, ns, operator):
    """Each replica asks for the GPU node's one GPU: replica 1 cannot be placed. Stand-in step."""
    body = finetune("gang", ns, startTimeoutSeconds=30)  # the CRD's minimum
    body["spec"]["placement"] = {"resources": {"limits": {"nvidia.com/gpu": 1}}}
    body["spec"]["env"] = [{"name": "STANDIN_SLEEP_FINETUNE", "value": "600"}]
    kube.apply(body)
    sched = wait_for(lambda: (c := kube.cond("FinetuneJob", "gang", ns, "Scheduled")) and c["status"] == "False" and c,
                     timeout=60, what="Scheduled=False")
    assert "nvidia.com/gpu" in sched["message"], sched
    st = kube.wait_phase("FinetuneJob", "gang", ns, ("Failed",), timeout=120)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "StartTimeout" and "nvidia.com/gpu" in failed["message"], failed
    # the Job is gone and with it every replica: no GPU keeps waiting
    wait_for(lambda: not [p for p in replica_pods(kube, ns, "gang-finetune")
                          if p["status"].get("phase") in ("Pending", "Running")], timeout=60,
             what="no replica left running")
    time.sleep(1)
    assert not kube.jobs(ns)
