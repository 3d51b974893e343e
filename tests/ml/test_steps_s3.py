"""The real steps in the operator's S3 mode, against a real S3 server (SeaweedFS): export ->
build-engine -> verify, each reading its inputs from the previous step's published set and
publishing its own, exactly as their Pods do when the GPU server and the edge device share no
volume. The figures equal those of the same steps on a volume."""
from __future__ import annotations

import json

import pytest
from store_fixtures import s3_env
from test_export_support import run_inprocess

from edgetune_jobs.artifacts.transfer import Transfer
from edgetune_jobs.steps import build_engine, export, verify

pytest.importorskip("mmdeploy", reason="mmdeploy is not installed (run `make install`)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (run `make install`)")

ROOT = "s3://edgetune/steps/"


def step_set(kind: str, name: str, step: str) -> str:
    return f"{ROOT}ns/{kind}/{name}/{step}"


def run_in_s3_mode(module, argv, upload, object_store, monkeypatch, tmp_path, name):
    for k, v in s3_env(object_store, upload, root=ROOT).items():
        monkeypatch.setenv(k, v)
    return run_inprocess(module, argv, tmp_path / f"{name}.json")


def test_export_build_verify_through_object_storage(trained_model, ort_export, object_store, monkeypatch, tmp_path):
    ft = step_set("finetunejob", "ft", "finetune")
    Transfer.from_env(s3_env(object_store, ft, root=ROOT)).publish(str(trained_model.out), "finetune")
    s = str(trained_model.image_size)

    ex = step_set("modelconversion", "mc", "export")
    code, doc = run_in_s3_mode(export, [
        "--out", str(tmp_path / "pod1" / "export"), "--checkpoint", f"{ft}/best.pth", "--config", f"{ft}/config.py",
        "--backend", "onnxruntime", "--image-size", s, "--val-dataset", f"{ft}/data"],
        ex, object_store, monkeypatch, tmp_path, "export")
    assert code == 0, doc
    transfer = doc["provenance"]["transfer"]
    assert transfer["store"] == ex and transfer["download_objects"] >= 3 and transfer["upload_objects"] >= 3
    assert transfer["download_seconds"] >= 0 and transfer["upload_bytes"] > doc["metrics"]["onnx_bytes"]
    assert transfer["client_seconds"] >= 0  # recorded: boto3's client set-up, part of the store's cost
    # the same reference AP as the export that read the very same files from a volume
    assert doc["metrics"]["reference"] == ort_export[1]["metrics"]["reference"]

    bd = step_set("modelconversion", "mc", "build-engine")
    code, doc = run_in_s3_mode(build_engine, [
        "--out", str(tmp_path / "pod2" / "build-engine"), "--onnx", f"{ex}/end2end.onnx",
        "--meta", f"{ex}/pipeline.json", "--backend", "onnxruntime", "--precision", "fp32"],
        bd, object_store, monkeypatch, tmp_path, "build")
    assert code == 0, doc
    assert doc["artifacts"]["model"] == "end2end.onnx"

    vf = step_set("modelconversion", "mc", "verify")
    code, doc = run_in_s3_mode(verify, [
        "--out", str(tmp_path / "pod3" / "verify"), "--model", f"{bd}/end2end.onnx", "--meta", f"{ex}/pipeline.json",
        "--backend", "onnxruntime", "--val-dataset", f"{ft}/data", "--max-map-drop", "0.02"],
        vf, object_store, monkeypatch, tmp_path, "verify")
    assert code == 0, doc
    assert doc["metrics"]["reference"] == ort_export[1]["metrics"]["reference"] and abs(doc["metrics"]["map_drop"]) <= 0.02
    # what the bucket holds is what the result says
    s3 = object_store.client()
    report = json.loads(s3.get_object(Bucket="edgetune", Key=vf[len("s3://edgetune/"):] + "/verify.json")["Body"].read())
    assert report["converted"] == doc["metrics"]["converted"] and report["map_drop"] == doc["metrics"]["map_drop"]


def test_a_failed_step_publishes_nothing(trained_model, object_store, monkeypatch, tmp_path):
    """No manifest, no objects: the next step cannot run on a failed step's leftovers."""
    ft = step_set("finetunejob", "ft2", "finetune")
    Transfer.from_env(s3_env(object_store, ft, root=ROOT)).publish(str(trained_model.out), "finetune")
    ex = step_set("modelconversion", "bad", "export")
    code, doc = run_in_s3_mode(export, [
        "--out", str(tmp_path / "export"), "--checkpoint", f"{ft}/best.pth", "--config", f"{ft}/config.py",
        "--backend", "onnxruntime", "--image-size", "100"], ex, object_store, monkeypatch, tmp_path, "export")
    assert code == 1 and doc["reason"] == "InvalidInput" and "multiple of 32" in doc["message"]
    listed = object_store.client().list_objects_v2(Bucket="edgetune", Prefix=ex[len("s3://edgetune/"):])
    assert listed.get("KeyCount", 0) == 0
