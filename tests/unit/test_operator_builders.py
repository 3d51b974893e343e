"""Job manifests are pure functions of the resource: names, labels, placement, security, args."""
from __future__ import annotations

import pytest

from edgetune_jobs import contract
from edgetune_operator import builders
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


def pod(job):
    return job["spec"]["template"]["spec"]


def ctr(job):
    return pod(job)["containers"][0]


def test_deterministic_and_owned():
    a = builders.build_job(FT, "finetune", S)
    b = builders.build_job(FT, "finetune", S)
    assert a == b
    assert a["metadata"]["name"] == "balloon-finetune"
    (ref,) = a["metadata"]["ownerReferences"]
    assert ref == {"apiVersion": "edgetune.io/v1alpha1", "kind": "FinetuneJob", "name": "balloon", "uid": "uid-1",
                   "controller": True, "blockOwnerDeletion": True}


def test_labels_on_job_and_pod():
    job = builders.build_job(MC, "build-engine", S, BUILD_IN)
    lbl = job["metadata"]["labels"]
    assert lbl[contract.LABEL_KIND] == "ModelConversion" and lbl[contract.LABEL_RESOURCE] == "conv"
    assert lbl[contract.LABEL_STEP] == "build-engine" and lbl[contract.LABEL_RUN] == "1"
    assert lbl["app.kubernetes.io/managed-by"] == "edgetune-operator"
    assert lbl["app.kubernetes.io/name"] == "edgetune" and lbl["app.kubernetes.io/component"] == "build-engine"
    assert job["spec"]["template"]["metadata"]["labels"] == lbl


def test_gpu_defaults_for_finetune_and_export():
    for job in (builders.build_job(FT, "finetune", S), builders.build_job(MC, "export", S, MC_IN)):
        assert pod(job)["nodeSelector"] == {"edgetune.io/device": "x86-gpu"}
        assert ctr(job)["resources"]["limits"] == {"nvidia.com/gpu": 1}
        assert "tolerations" not in pod(job)
        assert ctr(job)["image"] == S.trainer_image


@pytest.mark.parametrize("body,step,inputs", [(MC, "build-engine", BUILD_IN), (MC, "verify", VERIFY_IN),
                                              (EB, "benchmark", BENCH_IN)])
def test_jetson_defaults_for_build_verify_benchmark(body, step, inputs):
    job = builders.build_job(body, step, S, inputs)
    assert pod(job)["nodeSelector"] == {"edgetune.io/device": "jetson-orin"}
    assert pod(job)["tolerations"] == [{"key": "edgetune.io/edge", "operator": "Equal", "value": "true",
                                        "effect": "NoSchedule"}]
    assert "resources" not in ctr(job)
    assert ctr(job)["image"] == S.jetson_image


def test_spec_placement_replaces_defaults():
    body = res("FinetuneJob", {"dataset": {"generate": {}}, "placement": {
        "nodeSelector": {"pool": "a100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "resources": {"limits": {"nvidia.com/gpu": 2, "memory": "16Gi"}}, "image": "my/trainer:1"}})
    job = builders.build_job(body, "finetune", S)
    assert pod(job)["nodeSelector"] == {"pool": "a100"}
    assert pod(job)["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
    assert ctr(job)["resources"] == {"limits": {"nvidia.com/gpu": 2, "memory": "16Gi"}}
    assert ctr(job)["image"] == "my/trainer:1"
    # an explicitly empty nodeSelector removes the default
    body["spec"]["placement"] = {"nodeSelector": {}}
    assert "nodeSelector" not in pod(builders.build_job(body, "finetune", S))


def test_settings_change_defaults():
    s = from_env({"EDGETUNE_EDGE_NODE_SELECTOR": '{"kubernetes.io/arch": "arm64"}',
                  "EDGETUNE_EDGE_TOLERATIONS": "[]", "EDGETUNE_GPU_RESOURCES": '{"limits": {"nvidia.com/gpu": 2}}',
                  "EDGETUNE_JETSON_IMAGE": "reg/jetson:jp6", "EDGETUNE_EDGE_RUNTIME_CLASS": "nvidia"})
    job = builders.build_job(EB, "benchmark", s, BENCH_IN)
    assert pod(job)["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert "tolerations" not in pod(job) and pod(job)["runtimeClassName"] == "nvidia"
    assert ctr(job)["image"] == "reg/jetson:jp6"
    assert ctr(builders.build_job(FT, "finetune", s))["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_security_and_termination():
    job = builders.build_job(FT, "finetune", S)
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
    job = builders.build_job(body, "export", S, MC_IN)
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 600
    assert builders.build_job(MC, "verify", S, VERIFY_IN)["spec"]["activeDeadlineSeconds"] == 3600


def test_artifact_volume_env_and_out():
    job = builders.build_job(FT, "finetune", S)
    assert pod(job)["volumes"] == [{"name": "artifacts", "persistentVolumeClaim": {"claimName": "edgetune-artifacts"}}]
    assert ctr(job)["volumeMounts"] == [{"name": "artifacts", "mountPath": "/artifacts"}]
    env = {e["name"]: e["value"] for e in ctr(job)["env"]}
    out = "/artifacts/demo/finetunejob/balloon/finetune"
    assert env[contract.ENV_ARTIFACT_DIR] == out and env[contract.ENV_RESULT_PATH] == "/dev/termination-log"
    assert ctr(job)["args"][:2] == ["--out", out]
    body = res("FinetuneJob", {"dataset": {"generate": {}}, "artifacts": {"claimName": "other"},
                               "env": [{"name": "HTTP_PROXY", "value": "http://p:3128"}]})
    job = builders.build_job(body, "finetune", S)
    assert pod(job)["volumes"][0]["persistentVolumeClaim"]["claimName"] == "other"
    assert {"name": "HTTP_PROXY", "value": "http://p:3128"} in ctr(job)["env"]


def test_command_and_override():
    assert ctr(builders.build_job(FT, "finetune", S))["command"] == ["python", "-m", "edgetune_jobs.finetune"]
    assert "workingDir" not in ctr(builders.build_job(FT, "finetune", S))
    s = from_env({"EDGETUNE_JOB_PYTHON": "/opt/venv/bin/python"})
    assert ctr(builders.build_job(MC, "verify", s, VERIFY_IN))["command"] == ["/opt/venv/bin/python", "-m",
                                                                              "edgetune_jobs.verify"]
    s = from_env({"EDGETUNE_STEP_COMMAND_OVERRIDE": '["python", "tests/cluster/standin_step.py"]',
                  "EDGETUNE_STEP_WORKING_DIR": "/repo"})
    c = ctr(builders.build_job(FT, "finetune", s))
    assert c["command"] == ["python", "tests/cluster/standin_step.py", "finetune"] and c["workingDir"] == "/repo"


def test_finetune_args():
    body = res("FinetuneJob", {"dataset": {"path": "datasets/balloon", "format": "via", "valFraction": 0.2},
                               "model": {"checkpoint": "https://x/ckpt.pth"},
                               "training": {"epochs": 3, "device": "cpu", "evalBase": False}})
    a = ctr(builders.build_job(body, "finetune", S))["args"]
    s = " ".join(a)
    assert "--dataset-source path --dataset-path /artifacts/datasets/balloon --dataset-format via" in s
    assert "--val-fraction 0.2" in s and "--checkpoint https://x/ckpt.pth" in s
    assert "--epochs 3 --batch-size 12 --image-size 640 --lr 0.004 --seed 0 --workers 2 --device cpu" in s
    assert a[-1] == "--no-eval-base"
    url = res("FinetuneJob", {"dataset": {"url": "https://h/b.zip"}})
    s = " ".join(ctr(builders.build_job(url, "finetune", S))["args"])
    assert "--dataset-source url --dataset-url https://h/b.zip" in s and "--device" not in s


def test_conversion_and_benchmark_args():
    s = " ".join(ctr(builders.build_job(MC, "export", S, MC_IN))["args"])
    assert ("--checkpoint /artifacts/x/best.pth --config /artifacts/x/config.py --backend tensorrt --image-size 640"
            " --score-threshold 0.05 --iou-threshold 0.6 --max-detections 100 --val-dataset /artifacts/x/data") in s
    assert "--dynamic" not in s
    dyn = res("ModelConversion", {"source": {"finetuneJob": "balloon"}, "backend": "onnxruntime", "dynamic": True})
    assert "--backend onnxruntime --image-size 640 --dynamic " in " ".join(
        ctr(builders.build_job(dyn, "export", S, MC_IN))["args"])
    int8 = res("ModelConversion", {"source": {"finetuneJob": "b"}, "precision": "int8",
                                   "calibration": {"images": "calib"}})
    s = " ".join(ctr(builders.build_job(int8, "build-engine", S, BUILD_IN))["args"])
    assert ("--onnx /artifacts/e/end2end.onnx --meta /artifacts/e/pipeline.json --backend tensorrt --precision int8"
            " --calibration-images /artifacts/calib --workspace-mib 1024") in s
    s = " ".join(ctr(builders.build_job(MC, "verify", S, VERIFY_IN))["args"])
    assert "--model /artifacts/b/end2end.engine --meta /artifacts/e/pipeline.json --backend tensorrt" in s
    assert "--val-dataset /artifacts/x/data --max-map-drop 0.02" in s
    s = " ".join(ctr(builders.build_job(EB, "benchmark", S, {**BENCH_IN, "images": "/artifacts/x/data/images"}))["args"])
    assert "--backend tensorrt --warmup 20 --iterations 200 --images /artifacts/x/data/images" in s


def test_job_names():
    assert builders.job_name("b", "benchmark", 1) == "b-benchmark"
    assert builders.job_name("b", "benchmark", 7) == "b-benchmark-7"
    long = "x" * 63
    names = {builders.job_name(long + s, "build-engine") for s in ("", "y")}
    assert all(len(n) <= 63 for n in names)
    n = builders.job_name("a" * 60, "build-engine")
    assert len(n) <= 63 and n.endswith("-build-engine") and n == builders.job_name("a" * 60, "build-engine")
    assert builders.job_name("a" * 60, "build-engine") != builders.job_name("a" * 59 + "b", "build-engine")


def test_paths_and_uris():
    uri = builders.artifact_uri("edgetune-artifacts", "demo", "FinetuneJob", "b", "finetune", "best.pth")
    assert uri == "pvc://edgetune-artifacts/demo/finetunejob/b/finetune/best.pth"
    assert builders.uri_to_path(uri, "edgetune-artifacts") == "/artifacts/demo/finetunejob/b/finetune/best.pth"
    assert builders.uri_to_path(uri, "other") is None
    assert builders.uri_to_path("https://h/x", "c") == "https://h/x"
    assert builders.out_dir("n", "EdgeBenchmark", "b", "benchmark", 3) == "/artifacts/n/edgebenchmark/b/benchmark-3"
