"""Runs every job step once for real, on CPU, on a small generated set, and saves the result
documents they wrote as tests/fixtures/results/<step>.json (what
tests/unit/test_result_fixtures.py decodes with the typed result classes).

    .venv/bin/python scripts/result_fixtures.py [--out tests/fixtures/results] [--work DIR]

finetune runs twice (from random weights, then from the first run's checkpoint, so that
`base` is measured too); then export (onnxruntime, with the reference AP), build-engine,
verify (with --max-map-drop) and benchmark. Each step runs as the operator runs it:
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
    a = p.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="edgetune-fixtures-"))
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
    docs["benchmark"] = run("benchmark", ["--out", str(work / "bm"), *model, "--warmup", "5", "--iterations", "50",
                                          "--images", str(ft / "data"), "--threads", "2"], work, "benchmark")
    a.out.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (a.out / f"{name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(docs)} result documents to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
