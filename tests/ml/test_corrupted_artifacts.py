"""Files that arrive truncated or are not what their name says: the step that consumes one
fails with a reason the user can act on, naming the file -- ArtifactCorrupted when the file is
damaged (a checkpoint's zip or CRC, an ONNX that does not parse), InvalidModel when a runtime
refuses a model -- never a traceback from deep inside mmengine or onnxruntime."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_export_support import run_inprocess

from edgetune_jobs.steps import benchmark, build_engine, export, verify


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def flipped(src: Path, dst: Path) -> Path:
    """One byte changed in the middle of the file (the size stays right)."""
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not-a-checkpoint"])
def test_export_refuses_a_damaged_checkpoint_naming_it(damage, trained_model, tmp_path):
    ckpt = tmp_path / "best.pth"
    if damage == "truncated":
        truncated(trained_model.checkpoint, ckpt)
    elif damage == "flipped":
        flipped(trained_model.checkpoint, ckpt)
    else:
        ckpt.write_text("<html>404 Not Found</html>\n")  # what a bad download leaves
    code, doc = run_inprocess(export, ["--out", str(tmp_path / "e"), "--checkpoint", str(ckpt),
                                       "--config", str(trained_model.config), "--backend", "onnxruntime",
                                       "--image-size", "128"], tmp_path / "r.json")
    assert code == 1 and doc["ok"] is False
    assert doc["reason"] == "ArtifactCorrupted" and str(ckpt) in doc["message"], doc
    assert not (tmp_path / "e" / "end2end.onnx").exists()


def test_the_intact_checkpoint_passes_the_same_check(trained_model):
    from edgetune_jobs.steps.inputs import check_checkpoint

    check_checkpoint(str(trained_model.checkpoint))  # the control: no error


@pytest.mark.parametrize("damage", ["truncated", "not-onnx"])
def test_build_refuses_a_damaged_onnx_naming_it(damage, ort_export, tmp_path):
    onnx_file = tmp_path / "end2end.onnx"
    if damage == "truncated":
        truncated(ort_export[0] / "end2end.onnx", onnx_file, 0.6)
    else:
        onnx_file.write_bytes(b"\x00\x01garbage" * 100)
    code, doc = run_inprocess(build_engine, ["--out", str(tmp_path / "b"), "--onnx", str(onnx_file),
                                             "--meta", str(ort_export[0] / "pipeline.json"),
                                             "--backend", "onnxruntime", "--precision", "fp32"], tmp_path / "r.json")
    assert code == 1 and doc["reason"] in ("ArtifactCorrupted", "InvalidModel"), doc
    assert str(onnx_file) in doc["message"]
    if damage == "truncated":
        assert doc["reason"] == "ArtifactCorrupted"


def test_benchmark_and_verify_refuse_a_model_the_runtime_cannot_load(ort_export, ort_build, trained_model,
                                                                     tmp_path):
    built = tmp_path / "built"
    shutil.copytree(ort_build[0], built)
    model = truncated(ort_build[0] / "end2end.onnx", built / "end2end.onnx", 0.7)
    meta = str(ort_export[0] / "pipeline.json")
    code, doc = run_inprocess(benchmark, ["--out", str(tmp_path / "bm"), "--model", str(model), "--meta", meta,
                                          "--backend", "onnxruntime", "--warmup", "1", "--iterations", "2"],
                              tmp_path / "r1.json")
    assert code == 1 and doc["reason"] == "InvalidModel" and str(model) in doc["message"], doc
    code, doc = run_inprocess(verify, ["--out", str(tmp_path / "v"), "--model", str(model), "--meta", meta,
                                       "--backend", "onnxruntime", "--val-dataset", str(trained_model.data)],
                              tmp_path / "r2.json")
    assert code == 1 and doc["reason"] == "InvalidModel" and str(model) in doc["message"], doc
