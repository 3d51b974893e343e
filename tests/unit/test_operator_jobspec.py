"""Job manifests are pure functions of the resource: names, labels, placement, security, args.
Command lines are checked as the step reads them: parsed by the step's own arguments class."""
from __future__ import annotations

import datetime as dt

import pytest

from edgetune_contract import names as contract
from edgetune_contract.args import STEP_ARGS
from edgetune_operator import jobspec
from edgetune_operator.kinds import edgebenchmark, finetunejob, modelconversion
from edgetune_operator.kinds.common import Context
from edgetune_operator.settings import from_env


def res(kind, spec, name="balloon", ns="demo"):
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": ns, "uid": "uid-1", "generation": 1}, "spec": spec}


FT = res("FinetuneJob", {"dataset": {"generate": {"images": 8}}})
MC = res("ModelConversion", {"source": {"finetuneJob": "balloon"}}, name="conv")
EB = res("EdgeBenchmark", {"modelConversion": "conv"}, name="bench")
MC_IN = {"checkpoint": "/artifacts/x/best.pth", "config": "/artifacts/x/config.py", "val_dataset": "/artifacts/x/data"}
BUILD_IN = {"onnx": "/artifacts/e/end2end.onnx", "meta": "/artifacts/e/pipeline.json"}
VERIFY_IN = {"model": "/artifacts/b/end2end.engine", "meta": "/artifacts/e/pipeline.json", "val_dataset": "/artifacts/x/data"}
BENCH_IN = {"model": "/artifacts/b/end2end.engine", "meta": "/artifacts/e/pipeline.json", "backend": "tensorrt"}
S = from_env({})
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _uri(path):
    """/artifacts/x -> pvc://edgetune-artifacts/x (how status records what a Pod saw at /artifacts/x)."""
    return "pvc://edgetune-artifacts/" + path[len("/artifacts/"):]


def build_job(body, step, settings=S, inputs=None, run=1):
    """The Job of `step` as the kind's planner builds it, upstream artifacts given as Pod paths."""
    c = Context(body, [], [], settings, T0)
    inputs = inputs or {}
    if step == "finetune":
        args = finetunejob.finetune_args(c)
    elif step == "benchmark":
        args = edgebenchmark.benchmark_args(c, inputs, run)
    else:
        c.status["source"] = {"checkpoint": _uri(inputs.get("checkpoint", "/artifacts/x/best.pth")),
                              "config": _uri(inputs.get("config", "/artifacts/x/config.py")),
                              "valDataset": _uri(inputs.get("val_dataset", "/artifacts/x/data"))}
        arts = {"onnx": inputs.get("onnx"), "meta": inputs.get("meta"), "engine": inputs.get("model")}
        c.status["artifacts"] = {k: _uri(v) for k, v in arts.items() if v}
        args = modelconversion.step_args(c, step)
    return jobspec.build_job(body, args, settings, run=run)


def argv(job):
    """The Job's command line parsed by its step's own arguments class."""
    step = job["metadata"]["labels"][contract.LABEL_STEP]
    return STEP_ARGS[step].from_argv(ctr(job)["args"])


def pod(job):
    return job["spec"]["template"]["spec"]


def ctr(job):
    return pod(job)["containers"][0]


def test_deterministic_and_owned():
    a = build_job(FT, "finetune", S)
    b = build_job(FT, "finetune", S)
    assert a == b
    assert a["metadata"]["name"] == "balloon-finetune"
    (ref,) = a["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": "edgetune.io/v1alpha1", "kind": "FinetuneJob", "name": "balloon", "uid": "uid-1",
                   "controller": True, "blockOwnerDeletion": True}


def test_labels_on_job_and_pod():
    job = build_job(MC, "build-engine", S, BUILD_IN)
    lbl = job["metadata"]["labels"]
    assert lbl[contract.LABEL_KIND] == "ModelConversion" and lbl[contract.LABEL_RESOURCE] == "conv"
    assert lbl[contract.LABEL_STEP] == "build-engine" and lbl[contract.LABEL_RUN] == "1"
    assert lbl["app.kubernetes.io/managed-by"] == "edgetune-operator"
    assert lbl["app.kubernetes.io/name"] == "edgetune" and lbl["app.kubernetes.io/component"] == "build-engine"
    assert job["spec"]["template"]["metadata"]["labels"] == lbl


def test_gpu_defaults_for_finetune_and_export():
    for job in (build_job(FT, "finetune", S), build_job(MC, "export", S, MC_IN)):
        assert pod(job)["nodeSelector"] == {"edgetune.io/device": "x86-gpu"}
        assert ctr(job)["resources"]["limits"] == {"nvidia.com/gpu": 1}
        assert "tolerations" not in pod(job)
        assert ctr(job)["image"] == S.trainer_image


@pytest.mark.parametrize("body,step,inputs", [(MC, "build-engine", BUILD_IN), (MC, "verify", VERIFY_IN),
                                              (EB, "benchmark", BENCH_IN)])
def test_jetson_defaults_for_build_verify_benchmark(body, step, inputs):
    job = build_job(body, step, S, inputs)
    assert pod(job)["nodeSelector"] == {"edgetune.io/device": "jetson-orin"}
    assert pod(job)["tolerations"] == [{"key": "edgetune.io/edge", "operator": "Equal", "value": "true",
                                        "effect": "NoSchedule"}]
    assert "resources" not in ctr(job)
    assert ctr(job)["image"] == S.jetson_image


def test_spec_placement_replaces_defaults():
    body = res("FinetuneJob", {"dataset": {"generate": {}}, "placement": {
        "nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "resources": {"limits": {"nvidia.com/gpu": 2, "memory": "16Gi"}}, "image": "my/trainer:1"}})
    job = build_job(body, "finetune", S)
    assert pod(job)["nodeSelector"] == {"pool": "a100"}
    assert pod(job)["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert ctr(job)["resources"] == {"limits": {"nvidia.com/gpu": 2, "memory": "16Gi"}}
    assert ctr(job)["image"] == "my/trainer:1"
    # an explicitly empty nodeSelector removes the default
    body["spec"]["placement"] = {"nodeSelector": {}}
    assert "nodeSelector" not in pod(build_job(body, "finetune", S))


def test_settings_change_defaults():
    s = from_env({"EDGETUNE_EDGE_NODE_SELECTOR": '{"kubernetes.io/arch": "arm64"}',
                  "EDGETUNE_EDGE_TOLERATIONS": "[]", "EDGETUNE_GPU_RESOURCES": '{"limits": {"nvidia.com/gpu": 2}}',
                  "EDGETUNE_JETSON_IMAGE": "reg/jetson:jp6", "EDGETUNE_EDGE_RUNTIME_CLASS": "nvidia"})
    job = build_job(EB, "benchmark", s, BENCH_IN)
    assert pod(job)["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert "tolerations" not in pod(job) and pod(job)["runtimeClassName"] == "nvidia"
    assert ctr(job)["image"] == "reg/jetson:jp6"
    assert ctr(build_job(FT, "finetune", s))["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_security_and_termination():
    job = build_job(FT, "finetune", S)
    p, c = pod(job), ctr(job)
    assert p["automountServiceAccountToken"] is False
    assert p["restartPolicy"] == "Never"
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["terminationMessagePath"] == contract.DEFAULT_RESULT_PATH
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 86400


def test_run_settings():
    body = res("ModelConversion", {"source": {"finetuneJob": "b"}, "run": {"backoffLimit": 2,
                                                                          "activeDeadlineSeconds": 600}})
    job = build_job(body, "export", S, MC_IN)
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 600
    assert build_job(MC, "verify", S, VERIFY_IN)["spec"]["activeDeadlineSeconds"] == 3600


def test_artifact_volume_env_and_out():
    job = build_job(FT, "finetune", S)
    assert pod(job)["volumes"] == [{"name": "artifacts", "persistentVolumeClaim": {"claimName": "edgetune-artifacts"}}]
    assert ctr(job)["volumeMounts"] == [{"name": "artifacts", "mountPath": "/artifacts"}]
    env = {e["name"]: e["value"] for e in ctr(job)["env"]}
    out = "/artifacts/demo/finetunejob/balloon/finetune"
    assert env[contract.ENV_ARTIFACT_DIR] == out and env[contract.ENV_RESULT_PATH] == "/dev/termination-log"
    assert ctr(job)["args"][:2] == ["--out", out] and argv(job).out == out
    body = res("FinetuneJob", {"dataset": {"generate": {}}, "artifacts": {"claimName": "other"},
                               "env": [{"name": "HTTP_PROXY", "value": "http://p:3128"}]})
    job = build_job(body, "finetune", S)
    assert pod(job)["volumes"][0]["persistentVolumeClaim"]["claimName"] == "other"
    assert {"name": "HTTP_PROXY", "value": "http://p:3128"} in ctr(job)["env"]


def test_command_and_override():
    assert ctr(build_job(FT, "finetune", S))["command"] == ["python", "-m", "edgetune_jobs.steps.finetune"]
    assert "workingDir" not in ctr(build_job(FT, "finetune", S))
    s = from_env({"EDGETUNE_JOB_PYTHON": "/opt/venv/bin/python"})
    assert ctr(build_job(MC, "verify", s, VERIFY_IN))["command"] == ["/opt/venv/bin/python", "-m",
                                                                              "edgetune_jobs.steps.verify"]
    s = from_env({"EDGETUNE_STEP_COMMAND_OVERRIDE": '["python", "/opt/edgetune/standin_step.py"]'})
    c = ctr(build_job(FT, "finetune", s))
    assert c["command"] == ["python", "/opt/edgetune/standin_step.py", "finetune"] and "workingDir" not in c


def test_finetune_args():
    body = res("FinetuneJob", {"dataset": {"path": "datasets/balloon", "format": "via", "valFraction": 0.3},
                               "model": {"checkpoint": "https://x/ckpt.pth"},
                               "training": {"epochs": 3, "device": "cpu", "evalBase": False}})
    a = argv(build_job(body, "finetune"))
    assert (a.dataset_source, a.dataset_path, a.dataset_format) == ("path", "/artifacts/datasets/balloon", "via")
    assert a.val_fraction == 0.3 and a.checkpoint == "https://x/ckpt.pth"
    # the CRD's defaults (batchSize 12, imageSize 640, ...) reach the step
    assert (a.epochs, a.batch_size, a.image_size, a.lr, a.seed, a.workers, a.device) == (3, 12, 640, 0.004, 0, 2, "cpu")
    assert a.eval_base is False and a.val_interval == 10
    assert ctr(build_job(body, "finetune"))["args"][-1] == "--no-eval-base"
    url = argv(build_job(res("FinetuneJob", {"dataset": {"url": "https://h/b.zip"}}), "finetune"))
    assert (url.dataset_source, url.dataset_url, url.device) == ("url", "https://h/b.zip", None)
    gen = argv(build_job(FT, "finetune"))
    assert (gen.dataset_source, gen.generate_images, gen.generate_seed) == ("generate", 8, 0)


def test_conversion_and_benchmark_args():
    a = argv(build_job(MC, "export", S, MC_IN))
    assert (a.checkpoint, a.config, a.backend, a.image_size) == (
        "/artifacts/x/best.pth", "/artifacts/x/config.py", "tensorrt", 640)
    assert (a.score_threshold, a.iou_threshold, a.max_detections) == (0.05, 0.6, 100)
    assert a.val_dataset == "/artifacts/x/data" and a.dynamic is False and "--dynamic" not in ctr(
        build_job(MC, "export", S, MC_IN))["args"]
    dyn = res("ModelConversion", {"source": {"finetuneJob": "balloon"}, "backend": "onnxruntime", "dynamic": True})
    a = argv(build_job(dyn, "export", S, MC_IN))
    assert a.backend == "onnxruntime" and a.dynamic is True
    int8 = res("ModelConversion", {"source": {"finetuneJob": "b"}, "precision": "int8",
                                   "calibration": {"images": "calib"}})
    a = argv(build_job(int8, "build-engine", S, BUILD_IN))
    assert (a.onnx, a.meta, a.backend, a.precision) == (
        "/artifacts/e/end2end.onnx", "/artifacts/e/pipeline.json", "tensorrt", "int8")
    assert a.calibration_images == "/artifacts/calib" and a.workspace_mib == 1024
    a = argv(build_job(MC, "verify", S, VERIFY_IN))
    assert (a.model, a.meta, a.backend) == ("/artifacts/b/end2end.engine", "/artifacts/e/pipeline.json", "tensorrt")
    assert a.val_dataset == "/artifacts/x/data" and a.max_map_drop == 0.02
    a = argv(build_job(EB, "benchmark", S, {**BENCH_IN, "images": "/artifacts/x/data/images"}))
    assert (a.backend, a.warmup, a.iterations, a.images) == ("tensorrt", 20, 200, "/artifacts/x/data/images")


def test_a_missing_upstream_artifact_is_a_reason_not_a_job():
    c = Context(MC, [], [], S, T0)
    c.status["source"] = {"checkpoint": "pvc://edgetune-artifacts/x/best.pth", "config": "pvc://edgetune-artifacts/x/c.py"}
    c.status["artifacts"] = {"meta": "pvc://edgetune-artifacts/e/pipeline.json"}
    assert modelconversion.step_args(c, "build-engine") == "cannot start build-engine: no onnx from the previous step"


def test_job_names():
    assert contract.job_name("b", "benchmark", 1) == "b-benchmark"
    assert contract.job_name("b", "benchmark", 7) == "b-benchmark-7"
    long = "x" * 63
    names = {contract.job_name(long + s, "build-engine") for s in ("", "y")}
    assert all(len(n) <= 63 for n in names)
    n = contract.job_name("a" * 60, "build-engine")
    assert len(n) <= 63 and n.endswith("-build-engine") and n == contract.job_name("a" * 60, "build-engine")
    assert contract.job_name("a" * 60, "build-engine") != contract.job_name("a" * 59 + "b", "build-engine")


S3 = {"endpoint": "https://s3.example:9000", "bucket": "edgetune", "prefix": "runs",
      "credentialsSecret": {"name": "s3-keys", "accessKeyIDKey": "id", "secretAccessKeyKey": "secret"},
      "caBundle": {"configMap": "s3-ca"}}


def test_object_storage_mode_gives_scratch_endpoint_and_secret_references_only():
    body = res("FinetuneJob", {"dataset": {"path": "datasets/balloon"}, "model": {"checkpoint": "models/base.pth"},
                               "artifacts": {"s3": S3}})
    job = build_job(body, "finetune")
    env = {e["name"]: e for e in ctr(job)["env"]}
    assert env["EDGETUNE_ARTIFACT_STORE"]["value"] == "s3"
    assert env["EDGETUNE_ARTIFACT_URI"]["value"] == "s3://edgetune/runs/demo/finetunejob/balloon/finetune"
    assert env["EDGETUNE_S3_ENDPOINT"]["value"] == "https://s3.example:9000"
    assert env["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID",
                                        "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": "id"}}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "s3-keys", "key": "secret"}}
    assert env["EDGETUNE_S3_CA_BUNDLE"]["value"] == "/etc/edgetune/s3-ca/ca.crt"
    assert {"name": "artifacts", "emptyDir": {}} in pod(job)["volumes"]
    assert {"name": "s3-ca", "configMap": {"name": "s3-ca"}} in pod(job)["volumes"]
    assert not any("persistentVolumeClaim" in v for v in pod(job)["volumes"])
    a = argv(job)  # spec paths are keys under the prefix; the step downloads them
    assert a.dataset_path == "s3://edgetune/runs/datasets/balloon" and a.checkpoint == "s3://edgetune/runs/models/base.pth"


def test_the_operators_default_store():
    s = from_env({"EDGETUNE_ARTIFACTS_S3": '{"endpoint": "http://seaweedfs:8333", "bucket": "b", '
                                           '"credentialsSecret": {"name": "k"}}'})
    env = {e["name"]: e.get("value") for e in ctr(build_job(FT, "finetune", s))["env"]}
    assert env["EDGETUNE_ARTIFACT_URI"] == "s3://b/demo/finetunejob/balloon/finetune"
    pvc = res("FinetuneJob", {"dataset": {"generate": {}}, "artifacts": {"claimName": "mine"}})
    assert pod(build_job(pvc, "finetune", s))["volumes"] == [
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "mine"}}]  # the spec's choice wins
    env = {e["name"]: e.get("value") for e in ctr(build_job(FT, "finetune"))["env"]}
    assert env["EDGETUNE_ARTIFACT_STORE"] == "pvc" and "EDGETUNE_ARTIFACT_URI" not in env


@pytest.mark.parametrize("text, error", [
    ('{"bucket": "b", "credentialsSecret": {"name": "k"}}', "missing endpoint"),
    ('{"endpoint": "http://x", "bucket": "b"}', "missing credentialsSecret.name"),
    ('{"endpoint": "ftp://x", "bucket": "b", "credentialsSecret": {"name": "k"}}', "must be an http"),
])
def test_a_bad_default_store_is_refused_at_start(text, error):
    from edgetune_operator.settings import SettingsError

    with pytest.raises(SettingsError, match=error):
        from_env({"EDGETUNE_ARTIFACTS_S3": text})
