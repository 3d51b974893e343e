"""The contract package (edgetune_contract): typed command lines, result documents, progress,
names and device labels — what the operator and the steps both rely on."""
from __future__ import annotations

import dataclasses
import json

import pytest

from edgetune_contract import names, results, store
from edgetune_contract.args import STEP_ARGS, BenchmarkArgs, ExportArgs, FinetuneArgs
from edgetune_contract.cliargs import ArgumentError
from edgetune_contract.progress import PROGRESS_PREFIX, Progress, ProgressPlan, parse_progress


# --- names --------------------------------------------------------------------------------------

def test_kinds_and_steps_are_written_once():
    assert names.KINDS == ("FinetuneJob", "ModelConversion", "EdgeBenchmark")
    assert names.PLURALS == {"FinetuneJob": "finetunejobs", "ModelConversion": "modelconversions",
                             "EdgeBenchmark": "edgebenchmarks"}
    assert names.KIND_STEPS == {"FinetuneJob": ("finetune",), "ModelConversion": ("export", "build-engine", "verify"),
                                "EdgeBenchmark": ("benchmark", "sweep")}
    assert list(STEP_ARGS) == list(names.STEPS) == list(results.RESULT_TYPES)
    assert names.step_command("build-engine") == ["python", "-m", "edgetune_jobs.steps.build_engine"]
    with pytest.raises(ValueError, match="unknown step"):
        names.step_command("train")


def test_job_names_and_artifact_locations():
    assert names.job_name("b", "benchmark", 1) == "b-benchmark"
    assert names.job_name("b", "benchmark", 7) == "b-benchmark-7"
    long = names.job_name("a" * 60, "build-engine")
    assert len(long) == 63 and long.endswith("-build-engine")
    assert long != names.job_name("a" * 59 + "b", "build-engine")
    assert names.out_dir("ns", "EdgeBenchmark", "b", "benchmark", 3) == "/artifacts/ns/edgebenchmark/b/benchmark-3"


def test_artifact_stores_uris_and_step_arguments():
    pvc = store.PvcStore("claim")
    uri = pvc.artifact_uri("ns", "ModelConversion", "c", "export", "end2end.onnx")
    assert uri == "pvc://claim/ns/modelconversion/c/export/end2end.onnx"
    assert pvc.in_pod(uri) == "/artifacts/ns/modelconversion/c/export/end2end.onnx"
    assert pvc.in_pod("pvc://other/ns/x") is None and pvc.in_pod("s3://b/x") is None
    assert pvc.in_pod("https://h/x.zip") == "https://h/x.zip"
    assert pvc.spec_path("data/x") == "/artifacts/data/x" and pvc.spec_path("s3://b/x") == "s3://b/x"
    s3 = store.S3Store.from_spec({"endpoint": "http://seaweed:8333", "bucket": "edgetune", "prefix": "/runs/",
                                  "credentialsSecret": {"name": "s3-keys"}})
    assert (s3.prefix, s3.region, s3.access_key_id_key, s3.secret_access_key_key) == (
        "runs/", "us-east-1", "accessKeyID", "secretAccessKey")
    uri = s3.artifact_uri("ns", "FinetuneJob", "b", "finetune", "best.pth")
    assert uri == "s3://edgetune/runs/ns/finetunejob/b/finetune/best.pth" and s3.in_pod(uri) == uri
    assert s3.in_pod("s3://another-bucket/x") is None and s3.in_pod("pvc://claim/x") is None
    assert s3.spec_path("datasets/balloon") == "s3://edgetune/runs/datasets/balloon"
    assert s3.step_uri("ns", "EdgeBenchmark", "e", "benchmark", 2) == "s3://edgetune/runs/ns/edgebenchmark/e/benchmark-2"
    assert store.split_s3_uri("s3://b/a/b.c") == ("b", "a/b.c")
    with pytest.raises(ValueError):
        store.split_s3_uri("https://b/x")


# --- typed command lines ------------------------------------------------------------------------

def test_arguments_round_trip_and_show_only_what_differs():
    a = FinetuneArgs(out="/o", dataset_source="url", dataset_url="https://h/b.zip", epochs=5, lr=0.01,
                     eval_base=False, device="cpu")
    argv = a.to_argv()
    assert argv == ["--out", "/o", "--dataset-source", "url", "--dataset-url", "https://h/b.zip",
                    "--epochs", "5", "--lr", "0.01", "--device", "cpu", "--no-eval-base"]
    assert FinetuneArgs.from_argv(argv) == a
    e = ExportArgs(out="/o", checkpoint="c.pth", config="c.py", backend="onnxruntime", image_size=640,
                   dynamic=True, fold=False, score_threshold=0.25)
    assert e.to_argv() == ["--out", "/o", "--checkpoint", "c.pth", "--config", "c.py", "--backend", "onnxruntime",
                           "--image-size", "640", "--dynamic", "--score-threshold", "0.25", "--no-fold-preprocess"]
    assert ExportArgs.from_argv(e.to_argv()) == e


@pytest.mark.parametrize("argv, message", [
    (["--out", "o"], "required: --checkpoint, --config, --backend, --image-size"),
    (["--out", "o", "--checkpoint", "c", "--config", "k", "--backend", "tflite", "--image-size", "64"],
     "invalid choice: 'tflite'"),
    (["--out", "o", "--checkpoint", "c", "--config", "k", "--backend", "tensorrt", "--image-size", "x"],
     "invalid int value: 'x'"),
    (["--out", "o", "--checkpoint", "c", "--config", "k", "--backend", "tensorrt", "--image-size", "64",
      "--unknown"], "unrecognized arguments: --unknown"),
])
def test_bad_command_lines_raise_argument_error(argv, message):
    with pytest.raises(ArgumentError, match=message):
        ExportArgs.from_argv(argv)


def test_arguments_check_their_own_values():
    with pytest.raises(ArgumentError, match="--backend must be one of tensorrt, onnxruntime, openvino, torch"):
        BenchmarkArgs(out="o", model="m", meta="x", backend="tflite")
    with pytest.raises(ArgumentError, match="--iterations must be int"):
        BenchmarkArgs(out="o", model="m", meta="x", backend="torch", iterations="100")
    with pytest.raises(ArgumentError, match="missing required argument"):
        BenchmarkArgs(out="o", model="m", backend="torch")


def test_every_step_parser_has_help_for_humans():
    for cls in STEP_ARGS.values():
        text = cls.parser(prog=f"python -m {names.step(cls.STEP).module}").format_help()
        for f in dataclasses.fields(cls):
            assert cls.flag_of(f.name) in text, (cls.STEP, f.name)


# --- result documents ---------------------------------------------------------------------------

def test_result_round_trip_and_size_limit():
    r = results.BenchmarkResult(latency={"pipeline": results.latency("p", {"p50_ms": 1.5})}, fps=float("nan"),
                                message="x" * 10_000)
    text = r.encode()
    assert len(text.encode()) <= results.MAX_RESULT_BYTES
    back = results.decode(text)
    assert isinstance(back, results.BenchmarkResult) and back.fps is None
    assert back.latency["pipeline"]["p50_ms"] == 1.5 and back.message.endswith("...")
    doc = json.loads(text)
    assert doc["metrics"]["pipeline"]["p50_ms"] == 1.5 and doc["schema"] == "edgetune.io/result/v1"


@pytest.mark.parametrize("text, needle", [
    ("Traceback...\nValueError: boom", "ValueError: boom"),
    ('{"schema": "other"}', "schema"),
    ('{"schema": "edgetune.io/result/v1", "step": "finetune", "ok": "yes"}', "'ok'"),
    ('{"schema": "edgetune.io/result/v1", "step": "train", "ok": true, "reason": "", "message": "", '
     '"metrics": {}, "artifacts": {}, "provenance": {}}', "unknown step 'train'"),
    ('{"schema": "edgetune.io/result/v1", "step": "verify", "ok": true, "reason": "", "message": "", '
     '"metrics": {"mapdrop": 0.1}, "artifacts": {}, "provenance": {}}', r"unknown metrics \['mapdrop'\]"),
    ('{"schema": "edgetune.io/result/v1", "step": "verify", "ok": true, "reason": "", "message": "", '
     '"metrics": {"converted": {"mAP": "high"}}, "artifacts": {}, "provenance": {}}', "metrics.converted.mAP"),
    ('{"schema": "edgetune.io/result/v1", "step": "benchmark", "ok": true, "reason": "", "message": "", '
     '"metrics": {"pipeline": {"p50": 1}}, "artifacts": {}, "provenance": {}}', r"unknown keys \['p50'\]"),
])
def test_decode_rejects_what_is_not_a_result(text, needle):
    with pytest.raises(results.ResultError, match=needle):
        results.decode(text)


def test_a_result_class_refuses_another_steps_document():
    doc = results.ExportResult(onnx_bytes=3).to_doc()
    assert results.ExportResult.from_doc(doc).onnx_bytes == 3
    with pytest.raises(results.ResultError, match="a export result where a verify result was expected"):
        results.VerifyResult.from_doc(doc)


def test_failure_results_have_no_figures():
    r = results.failure("verify", "DatasetNotFound", "no val.json")
    assert isinstance(r, results.VerifyResult) and not r.ok and r.map_drop is None
    assert results.decode(r.encode()) == r


@pytest.mark.parametrize("ref, conv, limit, drop, ok", [
    ({"mAP": 0.70}, {"mAP": 0.69}, 0.02, 0.01, True),
    ({"mAP": 0.70}, {"mAP": 0.65}, 0.02, 0.05, False),
    ({"mAP": 0.70}, {"mAP": 0.68}, 0.02, 0.02, True),   # at the limit is within it
    ({"mAP": 0.70}, {"mAP": 0.75}, 0.0, -0.05, True),   # better than the reference
    (None, {"mAP": 0.7}, 0.02, None, False),             # a limit without a reference cannot pass
    (None, {"mAP": 0.7}, None, None, True),              # no limit: nothing to gate
])
def test_the_accuracy_gate(ref, conv, limit, drop, ok):
    assert results.map_drop(ref, conv) == drop
    assert results.accuracy_gate(results.map_drop(ref, conv), limit) is ok


@pytest.mark.parametrize("device, label", [
    ({"kind": "jetson", "model": "NVIDIA Jetson AGX Orin Developer Kit\x00", "jetpack": "5.1.2",
      "power_mode": "MAXN (mode 0)", "arch": "aarch64"},
     "NVIDIA Jetson AGX Orin Developer Kit (JetPack 5.1.2, MAXN (mode 0))"),
    ({"kind": "jetson", "l4t": "36.2.0"}, "Jetson (L4T 36.2.0)"),
    ({"kind": "gpu", "gpu": "NVIDIA H100 80GB HBM3", "cpu": "x", "cpus": 16}, "NVIDIA H100 80GB HBM3"),
    ({"kind": "cpu", "cpu": "AMD EPYC", "cpus": 2, "arch": "x86_64"}, "AMD EPYC (2 CPUs, x86_64)"),
    ("jetson-orin-0", "jetson-orin-0"),
    (None, ""),
])
def test_device_label(device, label):
    assert results.device_label(device) == label


# --- progress -----------------------------------------------------------------------------------

def test_progress_lines_last_record_wins():
    lines = ["noise", Progress(phase="train", epoch=1, percent=10.0).line(),
             "x " + Progress(phase="train", epoch=2, percent=20.0).line(), PROGRESS_PREFIX + "{broken"]
    assert parse_progress(lines) == Progress(phase="train", epoch=2, percent=20.0)
    assert parse_progress(["nothing here"]) is None


def test_the_whole_jobs_percentage_never_goes_back_and_names_the_phase():
    plan = ProgressPlan()  # data 2, eval-base 8, train 80, eval 10
    seq = [plan.report("data", 0.0), plan.report("data", 1.0), plan.report("eval-base", 0.5),
           plan.report("eval-base", 1.0), plan.report("train", 0.02, epoch=1, epochs=50, eta_seconds=483),
           plan.report("val", 0.1, epoch=5, epochs=50, phase_percent=40.0),
           plan.report("train", 0.05),  # a late line about an earlier point: the percentage holds
           plan.report("eval", 0.5), plan.report("done", 1.0)]
    assert [p.percent for p in seq] == [0.0, 2.0, 6.0, 10.0, 11.6, 18.0, 18.0, 95.0, 100.0]
    assert [p.text() for p in seq][2:6] == ["6% evaluating base model", "10% evaluating base model",
                                            "12% training epoch 1/50, ETA 8m03s", "18% validating epoch 5/50"]
    assert seq[2].phase_percent == 50.0 and seq[5].phase_percent == 40.0
    # without a base model to evaluate, its share goes to the other phases
    assert ProgressPlan(skip=("eval-base",)).report("train", 0.0).percent == pytest.approx(2.17, abs=0.01)
    with pytest.raises(ValueError, match="not in the plan"):
        ProgressPlan(skip=("eval-base",)).report("eval-base", 0.5)
