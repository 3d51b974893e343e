"""benchmark on onnxruntime and torch: consistent percentiles, the stage breakdown, the
result document the operator reads, and clear failures."""

import json

import pytest

pytest.importorskip("mmdeploy", reason="mmdeploy is not installed (run `make install`)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (run `make install`)")

from test_export_support import run_cli, run_inprocess  # noqa: E402

from edgetune_contract.results import LATENCY_STATS, STAGES  # noqa: E402
from edgetune_jobs.steps import benchmark  # noqa: E402
from support import decoded  # noqa: E402

PROVENANCE_KEYS = {"backend", "precision", "device", "warmup", "iterations", "images", "input_shape",
                   "threads", "gpu_timing", "versions"}


def _check_doc(doc, iterations=None):
    assert doc["ok"], doc
    decoded(doc)  # the typed decoder accepts it
    m = doc["metrics"]
    for stage in STAGES:
        s = m[stage]
        assert set(s) == set(LATENCY_STATS)
        assert 0 <= s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"], (stage, s)
        assert s["min_ms"] <= s["mean_ms"] <= s["max_ms"]
    # the pipeline interval contains the three stages
    parts = sum(m[st]["mean_ms"] for st in ("preprocess", "inference", "postprocess"))
    assert m["pipeline"]["mean_ms"] == pytest.approx(parts, rel=0.05, abs=0.05)
    assert m["pipeline"]["min_ms"] >= m["inference"]["min_ms"]
    assert m["fps"] == pytest.approx(1000.0 / m["pipeline"]["mean_ms"], rel=1e-3)
    assert set(doc["provenance"]) >= PROVENANCE_KEYS
    if iterations is not None:
        assert doc["provenance"]["iterations"] == iterations
    return m


def test_benchmark_onnxruntime(ort_export, ort_build, trained_model, tmp_path):
    code, doc = run_inprocess(benchmark, [
        "--out", str(tmp_path / "b"), "--model", str(ort_build[0] / "end2end.onnx"),
        "--meta", str(ort_export[0] / "pipeline.json"), "--backend", "onnxruntime",
        "--warmup", "5", "--iterations", "40", "--images", str(trained_model.data), "--threads", "1"],
        tmp_path / "r.json")
    assert code == 0, doc
    _check_doc(doc, 40)
    prov = doc["provenance"]
    s = trained_model.image_size
    assert prov["backend"] == "onnxruntime" and prov["precision"] == "fp32" and prov["threads"] == 1
    assert prov["input_shape"] == [1, s, s, 3] and prov["input_dtype"] == "uint8"
    assert prov["gpu_timing"] is False and prov["device"]["kind"] == "cpu" and prov["device"]["cpu"]
    assert "inference_gpu" not in doc["metrics"]
    report = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    assert len(report["samples_ms"]["pipeline"]) == 40


def test_benchmark_torch_and_duration(ort_export, trained_model, tmp_path):
    code, doc = run_inprocess(benchmark, [
        "--out", str(tmp_path / "b"), "--model", str(trained_model.checkpoint),
        "--meta", str(ort_export[0] / "pipeline.json"), "--backend", "torch",
        "--warmup", "2", "--iterations", "1000", "--duration", "1.5"], tmp_path / "r.json")
    assert code == 0, doc
    m = _check_doc(doc)
    prov = doc["provenance"]
    assert prov["backend"] == "torch" and prov["iterations"] >= 1 and prov["duration_s"] == 1.5
    report = json.loads((tmp_path / "b" / "benchmark.json").read_text())
    # --duration, not --iterations, ended the loop: it ran for at least 1.5 s (the loop's own
    # clock) and every recorded iteration lies within that time
    assert len(report["samples_ms"]["pipeline"]) == prov["iterations"]
    assert report["wall_seconds"] >= 1.5
    assert sum(report["samples_ms"]["pipeline"]) / 1000 <= report["wall_seconds"]
    assert prov["images"].startswith("synthetic")
    assert "torch" in prov["versions"]
    assert m["pipeline"]["p50_ms"] > 0


def test_benchmark_command_line(ort_export, ort_build, tmp_path):
    code, doc, stderr = run_cli("benchmark", [
        "--out", str(tmp_path / "b"), "--model", str(ort_build[0] / "end2end.onnx"),
        "--meta", str(ort_export[0] / "pipeline.json"), "--backend", "onnxruntime",
        "--warmup", "2", "--iterations", "10"], tmp_path / "r.json")
    assert code == 0, stderr
    _check_doc(doc, 10)


@pytest.mark.parametrize("case", ["torch-needs-pth", "tensorrt-for-ort-export", "missing-model",
                                  "bad-iterations", "missing-images", "unknown-backend"])
def test_benchmark_bad_inputs(case, ort_export, ort_build, tmp_path):
    argv = {"--out": str(tmp_path / "b"), "--model": str(ort_build[0] / "end2end.onnx"),
            "--meta": str(ort_export[0] / "pipeline.json"), "--backend": "onnxruntime",
            "--warmup": "1", "--iterations": "5"}
    changes, reason = {
        "torch-needs-pth": ({"--backend": "torch"}, "InvalidInput"),
        "tensorrt-for-ort-export": ({"--backend": "tensorrt"}, "InvalidInput"),
        "missing-model": ({"--model": str(tmp_path / "x.onnx")}, "InvalidInput"),
        "bad-iterations": ({"--iterations": "0"}, "InvalidInput"),
        "missing-images": ({"--images": str(tmp_path / "none")}, "DatasetNotFound"),
        "unknown-backend": ({"--backend": "tflite"}, "InvalidInput"),
    }[case]
    argv.update(changes)
    code, doc = run_inprocess(benchmark, [a for kv in argv.items() for a in kv], tmp_path / "r.json")
    assert code != 0 and doc["ok"] is False and doc["reason"] == reason, doc
    assert doc["message"] and "\n" not in doc["message"]
