"""Runs every job step once for real, on CPU, on a small generated set, and saves the result
documents they wrote as tests/fixtures/results/<step>.json (what
tests/unit/test_result_fixtures.py decodes with the typed result classes).

    .venv/bin/python scripts/result_fixtures.py [--out tests/fixtures/results] [--work DIR]

finetune runs twice (from random weights, then from the first run's checkpoint, so that
`base` is measured too); then export (onnxruntime, with the reference AP), build-engine,
verify (with --max-map-drop), benchmark, and a sweep over that model, its onnxruntime int8 and
OpenVINO fp32 builds (`--only benchmark,sweep --work DIR` re-runs just those on an earlier
run's folder). Each step runs as the operator runs it:
`python -m edgetune_jobs.steps.<step>` in a subprocess, its document read from
$EDGETUNE_RESULT_PATH. About 6 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(step_module: str, argv: list[str], work: Path, name: str) -> dict:
    result = work / f"{name}.result.json"
    env = dict(os.environ, EDGETUNE_RESULT_PATH=str(result), EDGETUNE_PROGRESS_INTERVAL="30")
    proc = subprocess.run([sys.executable, "-m", f"edgetune_jobs.steps.{step_module}", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"{name}: {json.loads(result.read_text())['message']}", flush=True)
    return json.loads(result.read_text())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "results")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--only", default="", help="comma-separated steps to re-run (the rest must be in --work)")
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="edgetune-fixtures-"))
    if a.only:
        if not a.work:
            raise SystemExit("--only needs the --work folder of an earlier run")
        return write(a.out, later_steps(work, set(a.only.split(","))))
    train = ["--dataset-source", "generate", "--generate-images", "24", "--generate-size", "192",
             "--batch-size", "4", "--image-size", "160", "--workers", "0", "--device", "cpu", "--val-interval", "5"]
    docs = {"finetune-random-init": run("finetune", ["--out", str(work / "ft0"), *train, "--epochs", "25"],
                                        work, "finetune-random-init")}
    docs["finetune"] = run("finetune", ["--out", str(work / "ft"), *train, "--epochs", "5", "--checkpoint",
                                        str(work / "ft0" / "best.pth")], work, "finetune")
    ft = work / "ft"
    docs["export"] = run("export", ["--out", str(work / "ex"), "--checkpoint", str(ft / "best.pth"),
                                    "--config", str(ft / "config.py"), "--backend", "onnxruntime",
                                    "--image-size", "160", "--val-dataset", str(ft / "data")], work, "export")
    docs["build-engine"] = run("build_engine", ["--out", str(work / "bd"), "--onnx", str(work / "ex" / "end2end.onnx"),
                                                "--meta", str(work / "ex" / "pipeline.json"),
                                                "--backend", "onnxruntime", "--precision", "fp32"], work, "build-engine")
    model = ["--model", str(work / "bd" / "end2end.onnx"), "--meta", str(work / "ex" / "pipeline.json"),
             "--backend", "onnxruntime"]
    docs["verify"] = run("verify", ["--out", str(work / "vf"), *model, "--val-dataset", str(ft / "data"),
                                    "--max-map-drop", "0.02"], work, "verify")
    docs.update(later_steps(work, {"benchmark", "sweep"}))
    return write(a.out, docs)


def later_steps(work: Path, which: set) -> dict:
    ft, ex, docs = work / "ft", work / "ex", {}
    model = ["--model", str(work / "bd" / "end2end.onnx"), "--meta", str(ex / "pipeline.json"),
             "--backend", "onnxruntime"]
    if "benchmark" in which:
        docs["benchmark"] = run("benchmark", ["--out", str(work / "bm"), *model, "--warmup", "5", "--iterations",
                                              "50", "--images", str(ft / "data"), "--threads", "2"], work, "benchmark")
    if "sweep" in which:
        rows = [{"name": "ort-fp32", "backend": "onnxruntime", "precision": "fp32",
                 "model": str(work / "bd" / "end2end.onnx"), "meta": str(ex / "pipeline.json"), "accuracyOk": True}]
        for name, backend, precision, path in (("ort-int8", "onnxruntime", "int8", "end2end.onnx"),
                                               ("ov-fp32", "openvino", "fp32", "end2end.xml")):
            run("build_engine", ["--out", str(work / name), "--onnx", str(ex / "end2end.onnx"), "--meta",
                                 str(ex / "pipeline.json"), "--backend", backend, "--precision", precision,
                                 "--calibration-images", str(ft / "data")], work, f"build-{name}")
            rows.append({"name": name, "backend": backend, "precision": precision, "model": str(work / name / path),
                         "meta": str(ex / "pipeline.json"), "accuracyOk": True})
        docs["sweep"] = run("sweep", ["--out", str(work / "sw"), "--models", json.dumps(rows), "--warmup", "5",
                                      "--iterations", "40", "--block", "10", "--threads", "2",
                                      "--images", str(ft / "data")], work, "sweep")
    return docs


def write(out: Path, docs: dict) -> int:
    out.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (out / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(docs)} result documents to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
