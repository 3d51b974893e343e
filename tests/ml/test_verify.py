"""build_engine (onnxruntime) and verify: COCO AP of the converted model next to the PyTorch
reference from the export meta, the drop, and --max-map-drop."""

import json

import pytest

pytest.importorskip("mmdeploy", reason="mmdeploy is not installed (run `make install`)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (run `make install`)")
pytest.importorskip("pycocotools", reason="pycocotools is not installed (run `make install`)")

from test_export_support import export_model, exports_root, run_cli, run_inprocess  # noqa: E402

from edgetune_contract.results import COCO_KEYS  # noqa: E402
from edgetune_jobs.steps import build_engine, verify  # noqa: E402
from support import decoded  # noqa: E402


def test_build_onnxruntime(ort_build):
    out, doc = ort_build
    assert doc["ok"]
    assert doc["artifacts"]["model"] == "end2end.onnx" and (out / "end2end.onnx").is_file()
    assert doc["metrics"]["engine_bytes"] == (out / "end2end.onnx").stat().st_size
    assert doc["metrics"]["build_seconds"] >= 0
    prov = doc["provenance"]
    assert prov["backend"] == "onnxruntime" and prov["precision"] == "fp32"
    assert "onnxruntime" in prov["versions"] and prov["device"]["kind"] == "cpu"
    build = json.loads((out / "build.json").read_text())
    assert build["precision"] == "fp32"


def test_verify_reports_both_aps_and_the_drop(ort_export, ort_build, trained_model, tmp_path):
    code, doc = run_inprocess(verify, [
        "--out", str(tmp_path / "v"), "--model", str(ort_build[0] / "end2end.onnx"),
        "--meta", str(ort_export[0] / "pipeline.json"), "--backend", "onnxruntime",
        "--val-dataset", str(trained_model.data), "--max-map-drop", "0.02"], tmp_path / "r.json")
    assert code == 0, doc
    assert doc["ok"] and doc["reason"] == "Succeeded"
    m = doc["metrics"]
    assert set(m) == {"converted", "reference", "map_drop"}
    assert set(m["converted"]) == set(COCO_KEYS) == set(m["reference"])
    meta = json.loads((ort_export[0] / "pipeline.json").read_text())
    assert m["reference"] == meta["reference"]["metrics"]
    assert m["map_drop"] == pytest.approx(m["reference"]["mAP"] - m["converted"]["mAP"], abs=1e-4)
    # onnxruntime fp32 is the same computation: no real drop
    assert abs(m["map_drop"]) <= 0.02
    prov = doc["provenance"]
    assert prov["backend"] == "onnxruntime" and prov["precision"] == "fp32" and prov["images"] == 3
    report = json.loads((tmp_path / "v" / "verify.json").read_text())
    assert report["converted"] == m["converted"]


def test_verify_fails_when_the_drop_is_too_large(ort_export, ort_build, trained_model, tmp_path):
    meta = json.loads((ort_export[0] / "pipeline.json").read_text())
    meta["reference"]["metrics"]["mAP"] = 0.95  # pretend PyTorch was far better
    tampered = tmp_path / "pipeline.json"
    tampered.write_text(json.dumps(meta))
    code, doc = run_inprocess(verify, [
        "--out", str(tmp_path / "v"), "--model", str(ort_build[0] / "end2end.onnx"), "--meta", str(tampered),
        "--backend", "onnxruntime", "--val-dataset", str(trained_model.data), "--max-map-drop", "0.05"],
        tmp_path / "r.json")
    assert code == 1
    assert doc["ok"] is False and doc["reason"] == "AccuracyDropTooLarge"
    assert doc["metrics"]["map_drop"] > 0.05  # the figures are reported all the same
    assert "0.05" in doc["message"]


def test_verify_command_line(ort_export, ort_build, trained_model, tmp_path):
    code, doc, stderr = run_cli("verify", [
        "--out", str(tmp_path / "v"), "--model", str(ort_build[0] / "end2end.onnx"),
        "--meta", str(ort_export[0] / "pipeline.json"), "--backend", "onnxruntime",
        "--val-dataset", str(trained_model.data)], tmp_path / "r.json")
    assert code == 0, stderr
    assert decoded(doc)["step"] == "verify"


@pytest.mark.parametrize("case", ["wrong-backend", "missing-model", "missing-dataset", "no-meta"])
def test_verify_bad_inputs(case, ort_export, ort_build, tmp_path, trained_model):
    argv = {"--out": str(tmp_path / "v"), "--model": str(ort_build[0] / "end2end.onnx"),
            "--meta": str(ort_export[0] / "pipeline.json"), "--backend": "onnxruntime",
            "--val-dataset": str(trained_model.data)}
    key, value, reason = {"wrong-backend": ("--backend", "tensorrt", "InvalidInput"),
                          "missing-model": ("--model", str(tmp_path / "x.onnx"), "InvalidInput"),
                          "missing-dataset": ("--val-dataset", str(tmp_path / "none"), "DatasetNotFound"),
                          "no-meta": ("--meta", str(tmp_path / "none.json"), "InvalidInput")}[case]
    argv[key] = value
    code, doc = run_inprocess(verify, [a for kv in argv.items() for a in kv], tmp_path / "r.json")
    assert code != 0 and doc["ok"] is False and doc["reason"] == reason, doc


def test_build_rejects_what_onnxruntime_cannot_do(ort_export, tmp_path):
    args = ["--out", str(tmp_path / "b"), "--onnx", str(ort_export[0] / "end2end.onnx"),
            "--meta", str(ort_export[0] / "pipeline.json")]
    code, doc = run_inprocess(build_engine, args + ["--backend", "onnxruntime", "--precision", "fp16"],
                              tmp_path / "r.json")
    assert code == 1 and doc["reason"] == "InvalidInput" and "onnxruntime builds fp32, int8" in doc["message"]
    # an ONNX exported for onnxruntime is not a TensorRT input (mmdeploy's NMS, uint8 input)
    code, doc = run_inprocess(build_engine, args + ["--backend", "tensorrt", "--precision", "fp32"],
                              tmp_path / "r.json")
    assert code == 1 and doc["reason"] == "InvalidInput" and "exported for onnxruntime" in doc["message"]
    code, doc = run_inprocess(build_engine, ["--out", str(tmp_path / "b"), "--onnx", str(tmp_path / "x.onnx"),
                                             "--meta", str(ort_export[0] / "pipeline.json"),
                                             "--backend", "onnxruntime", "--precision", "fp32"], tmp_path / "r.json")
    assert code == 1 and doc["reason"] == "InvalidInput"


def test_build_tensorrt_without_tensorrt_says_so(trained_model, tmp_path_factory, tmp_path):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: tests/gpu covers the real build")
    except ImportError:
        pass
    out, _ = export_model(exports_root(tmp_path_factory), "tensorrt", str(trained_model.checkpoint),
                          str(trained_model.config), trained_model.image_size)
    code, doc = run_inprocess(build_engine, [
        "--out", str(tmp_path / "b"), "--onnx", str(out / "end2end.onnx"), "--meta", str(out / "pipeline.json"),
        "--backend", "tensorrt", "--precision", "int8"], tmp_path / "r.json")
    assert code == 1 and doc["reason"] == "InvalidInput" and "calibration" in doc["message"]
    code, doc = run_inprocess(build_engine, [
        "--out", str(tmp_path / "b"), "--onnx", str(out / "end2end.onnx"), "--meta", str(out / "pipeline.json"),
        "--backend", "tensorrt", "--precision", "fp16"], tmp_path / "r.json")
    assert code == 1 and doc["reason"] == "BackendUnavailable" and "tensorrt" in doc["message"]
