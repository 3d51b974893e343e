"""The CRDs on the real API server: malformed resources are rejected with a message naming the
field, the examples are accepted, the server's defaults are the operator's, spec is immutable."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from edgetune_operator import schema

pytest_plugins = ["operator_fixtures"]
pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]

FT = {"dataset": {"generate": {"images": 8}}}
MC = {"source": {"finetuneJob": "balloon"}}
EB = {"modelConversion": "conv"}


def obj(kind, spec, name="x", ns="default"):
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def with_(base, path, value):
    spec = copy.deepcopy(base)
    node = spec
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    if value is DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return spec


DELETE = object()

# (id, kind, spec, expected text in the error: the field's path)
CASES = [
    ("ft-no-dataset", "FinetuneJob", {}, "spec.dataset: Required value"),
    ("ft-two-sources", "FinetuneJob", {"dataset": {"generate": {}, "url": "https://h/x.zip"}}, "spec.dataset"),
    ("ft-no-source", "FinetuneJob", {"dataset": {"format": "via"}}, "exactly one of dataset.url"),
    ("ft-url-scheme", "FinetuneJob", {"dataset": {"url": "ftp://h/x.zip"}}, "spec.dataset.url"),
    ("ft-abs-path", "FinetuneJob", {"dataset": {"path": "/data/balloon"}}, "spec.dataset.path"),
    ("ft-dotdot-path", "FinetuneJob", {"dataset": {"path": "a/../../etc"}}, "spec.dataset.path"),
    ("ft-format", "FinetuneJob", with_(FT, "dataset.format", "yolo"), "spec.dataset.format"),
    ("ft-generate-coco", "FinetuneJob", with_(FT, "dataset.format", "coco"), "spec.dataset.format"),
    ("ft-generate-few", "FinetuneJob", with_(FT, "dataset.generate.images", 2), "spec.dataset.generate.images"),
    ("ft-val-fraction", "FinetuneJob", with_(FT, "dataset.valFraction", 0), "spec.dataset.valFraction"),
    ("ft-imagesize-32x", "FinetuneJob", with_(FT, "training.imageSize", 650), "spec.training.imageSize"),
    ("ft-imagesize-min", "FinetuneJob", with_(FT, "training.imageSize", 32), "spec.training.imageSize"),
    ("ft-epochs", "FinetuneJob", with_(FT, "training.epochs", 0), "spec.training.epochs"),
    ("ft-batch-type", "FinetuneJob", with_(FT, "training.batchSize", "12"), "spec.training.batchSize"),
    ("ft-lr", "FinetuneJob", with_(FT, "training.learningRate", 0), "spec.training.learningRate"),
    ("ft-device", "FinetuneJob", with_(FT, "training.device", "tpu"), "spec.training.device"),
    ("ft-val-interval", "FinetuneJob", with_(FT, "training.valInterval", 50), "spec.training.valInterval"),
    ("ft-config", "FinetuneJob", with_(FT, "model.config", "rtmdet tiny!"), "spec.model.config"),
    ("ft-unknown-field", "FinetuneJob", with_(FT, "training.epoch", 3), "spec.training.epoch"),
    ("ft-toleration-op", "FinetuneJob", with_(FT, "placement.tolerations", [{"key": "k", "operator": "Maybe"}]),
     "spec.placement.tolerations[0].operator"),
    ("ft-toleration-exists-value", "FinetuneJob",
     with_(FT, "placement.tolerations", [{"key": "k", "operator": "Exists", "value": "v"}]),
     "spec.placement.tolerations[0]"),
    ("ft-quantity", "FinetuneJob", with_(FT, "placement.resources.limits", {"nvidia.com/gpu": "lots"}),
     "spec.placement.resources.limits.nvidia.com/gpu"),
    ("ft-node-selector-key", "FinetuneJob", with_(FT, "placement.nodeSelector", {"bad key!": "x"}),
     "spec.placement.nodeSelector"),
    ("ft-env-reserved", "FinetuneJob", with_(FT, "env", [{"name": "EDGETUNE_RESULT_PATH", "value": "/x"}]),
     "spec.env[0].name"),
    ("ft-env-name", "FinetuneJob", with_(FT, "env", [{"name": "1BAD", "value": "x"}]), "spec.env[0].name"),
    ("ft-backoff", "FinetuneJob", with_(FT, "run.backoffLimit", 11), "spec.run.backoffLimit"),
    ("ft-deadline", "FinetuneJob", with_(FT, "run.activeDeadlineSeconds", 1), "spec.run.activeDeadlineSeconds"),
    ("ft-claim", "FinetuneJob", with_(FT, "artifacts.claimName", "Bad_Claim"), "spec.artifacts.claimName"),
    ("mc-no-source", "ModelConversion", {"backend": "tensorrt"}, "spec.source: Required value"),
    ("mc-two-sources", "ModelConversion",
     {"source": {"finetuneJob": "b", "model": {"checkpoint": "a.pth", "config": "a.py"}}}, "spec.source"),
    ("mc-backend", "ModelConversion", with_(MC, "backend", "tflite"), "spec.backend"),
    ("mc-precision", "ModelConversion", with_(MC, "precision", "int4"), "spec.precision"),
    ("mc-int8-no-calibration", "ModelConversion", with_(MC, "precision", "int8"), "spec.calibration"),
    ("mc-imagesize", "ModelConversion", with_(MC, "imageSize", 100), "spec.imageSize"),
    ("mc-max-drop", "ModelConversion", with_(MC, "verify.maxMapDrop", 1.5), "spec.verify.maxMapDrop"),
    ("mc-verify-needs-val", "ModelConversion",
     {"source": {"model": {"checkpoint": "a.pth", "config": "a.py"}}}, "spec.verify.enabled"),
    ("mc-model-no-config", "ModelConversion", {"source": {"model": {"checkpoint": "a.pth"}}},
     "spec.source.model.config"),
    ("mc-score", "ModelConversion", with_(MC, "postprocess.scoreThreshold", -0.1), "spec.postprocess.scoreThreshold"),
    ("mc-source-name", "ModelConversion", {"source": {"finetuneJob": "Bad_Name"}}, "spec.source.finetuneJob"),
    ("mc-workspace", "ModelConversion", with_(MC, "build.workspaceMiB", 10), "spec.build.workspaceMiB"),
    ("mc-dynamic-int8", "ModelConversion",
     {**MC, "precision": "int8", "calibration": {"images": "calib"}, "dynamic": True}, "spec.dynamic"),
    ("mc-ort-fp16", "ModelConversion", {**MC, "backend": "onnxruntime", "precision": "fp16"},
     "backend onnxruntime builds precision fp32, int8"),
    ("mc-trt-bf16", "ModelConversion", {**MC, "backend": "tensorrt", "precision": "bf16"}, "spec.precision"),
    ("mc-calibration-method", "ModelConversion",
     {**MC, "precision": "int8", "calibration": {"images": "calib", "method": "kl"}}, "spec.calibration.method"),
    ("eb-no-model", "EdgeBenchmark", {"warmup": 1},
     "exactly one of modelConversion, modelConversions and selector must be set"),
    ("eb-two-sources", "EdgeBenchmark", {**EB, "selector": {"matchLabels": {"a": "b"}}},
     "exactly one of modelConversion, modelConversions and selector must be set"),
    ("eb-sweep-schedule", "EdgeBenchmark", {"modelConversions": ["a", "b"], "schedule": "@daily"}, "spec.schedule"),
    ("eb-budget-single", "EdgeBenchmark", {**EB, "maxMapDrop": 0.01}, "spec.maxMapDrop"),
    ("eb-selector-empty", "EdgeBenchmark", {"selector": {"matchLabels": {}}}, "spec.selector.matchLabels"),
    ("eb-sweep-dup", "EdgeBenchmark", {"modelConversions": ["a", "a"]}, "spec.modelConversions"),
    ("eb-iterations", "EdgeBenchmark", with_(EB, "iterations", 0), "spec.iterations"),
    ("eb-warmup", "EdgeBenchmark", with_(EB, "warmup", -1), "spec.warmup"),
    ("eb-schedule", "EdgeBenchmark", with_(EB, "schedule", "every day at 2"), "spec.schedule"),
    ("eb-history", "EdgeBenchmark", with_(EB, "historyLimit", 0), "spec.historyLimit"),
    ("eb-images-abs", "EdgeBenchmark", with_(EB, "images", "/images"), "spec.images"),
    ("eb-duration", "EdgeBenchmark", with_(EB, "durationSeconds", 0), "spec.durationSeconds"),
    ("eb-threads", "EdgeBenchmark", with_(EB, "threads", 0), "spec.threads"),
    ("eb-fleet-sweep", "EdgeBenchmark", {"modelConversions": ["a", "b"], "fleet": {}},
     "a fleet benchmark measures one modelConversion"),
    ("eb-fleet-schedule", "EdgeBenchmark", {**EB, "fleet": {}, "schedule": "@daily"}, "a fleet benchmark runs once"),
    ("eb-fleet-labels", "EdgeBenchmark", {**EB, "fleet": {"deviceLabels": ["not a label key"]}},
     "spec.fleet.deviceLabels"),
    ("eb-fleet-max", "EdgeBenchmark", {**EB, "fleet": {"maxNodes": 0}}, "spec.fleet.maxNodes"),
]


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("kind,spec,field", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_resources_are_rejected_naming_the_field(kube, crds, kind, spec, field):
    p = kube.create(obj(kind, spec), dry_run=True, check=False)
    assert p.returncode != 0, f"accepted: {spec}"
    assert field in p.stderr, p.stderr


def test_long_names_are_rejected(kube, crds):
    p = kube.create(obj("FinetuneJob", FT, name="a" * 64), dry_run=True, check=False)
    assert p.returncode != 0 and "metadata.name must be at most 63 characters" in p.stderr, p.stderr


def test_examples_are_accepted(kube, crds, namespace):
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("apiVersion") != "edgetune.io/v1alpha1":
                continue
            doc["metadata"]["namespace"] = namespace
            p = kube.create(doc, dry_run=True, check=False)
            assert p.returncode == 0, f"{path}: {p.stderr}"


@pytest.mark.parametrize("kind,spec", [("FinetuneJob", FT), ("ModelConversion", MC), ("EdgeBenchmark", EB),
                                       ("ModelConversion", {**MC, "target": {"tolerations": [{"key": "a"}]}})])
def test_server_defaults_are_the_operators(kube, crds, namespace, kind, spec):
    import json
    p = kube.run("create", "--dry-run=server", "-o", "json", "-f", "-",
                 input=json.dumps(obj(kind, spec, ns=namespace)))
    assert json.loads(p.stdout)["spec"] == schema.apply_defaults(kind, spec)


def test_spec_is_immutable(kube, crds, namespace):
    kube.create(obj("FinetuneJob", FT, name="imm", ns=namespace))
    p = kube.run("patch", "finetunejob", "imm", "-n", namespace, "--type=merge",
                 "-p", '{"spec": {"training": {"epochs": 3}}}', check=False)
    assert p.returncode != 0 and "spec is immutable" in p.stderr, p.stderr
    # metadata stays editable
    kube.run("label", "finetunejob", "imm", "-n", namespace, "team=vision")


def test_kubectl_explain_documents_fields(kube, crds):
    out = kube.run("explain", "finetunejob.spec.training.imageSize").stdout
    assert "multiple of 32" in out
    out = kube.run("explain", "modelconversion.spec.verify.maxMapDrop").stdout
    assert "mAP(PyTorch) - mAP(converted)" in out
