"""Benchmark: what object storage costs each step, next to the same step on a volume.

1. trains and exports a small RTMDet-tiny on a generated set (as scripts/result_fixtures.py);
2. starts a real S3 server (SeaweedFS, localcluster/objectstore) on loopback and publishes the
   finetune step's outputs to it, as that step does in S3 mode;
3. runs export, build-engine, verify and benchmark as their Pods run them (`python -m
   edgetune_jobs.steps.<step>` in a subprocess), alternately on local paths ("PVC mode") and
   in S3 mode (inputs downloaded and checked, outputs uploaded with the manifest), --rounds
   times each;
4. prints, per step: median wall time in both modes, the median transfer seconds (the S3
   client's set-up -- importing boto3 --, download and upload, from the result's
   provenance.transfer) and their share of the S3-mode step
   (target: under 5 % on the local network), and writes the figures as JSON (--json PATH).

A benchmark: it prints figures, never fails on a time. Loopback is the best case of a network;
the bytes moved per step are printed so the cost on another link can be estimated.

    python benchmarks/bench_store.py [--rounds 3] [--json build/bench-store.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_SHARE = 0.05


def step(module: str, argv: list[str], env: dict, result: Path) -> tuple[float, dict]:
    result.unlink(missing_ok=True)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", f"edgetune_jobs.steps.{module}", *argv], cwd=ROOT,
                          env={**os.environ, **env, "EDGETUNE_RESULT_PATH": str(result)},
                          capture_output=True, text=True)
    wall = time.monotonic() - t0
    doc = json.loads(result.read_text()) if result.exists() else {}
    if proc.returncode != 0:
        raise SystemExit(f"{module} failed: {doc.get('reason')}: {doc.get('message')}\n{proc.stderr[-2000:]}")
    return wall, doc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--image-size", type=int, default=192, help="the demo's (examples/local)")
    p.add_argument("--iterations", type=int, default=300, help="benchmark iterations (the demo's)")
    p.add_argument("--warmup", type=int, default=20, help="benchmark warm-up (the demo's)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from store_fixtures import s3_env

    from edgetune_jobs.artifacts.transfer import Transfer
    from edgetune_localcluster.objectstore import ObjectStore

    work = a.work or Path(tempfile.mkdtemp(prefix="edgetune-bench-store-"))
    ft = work / "ft"
    size = str(a.image_size)
    print(f"training a small model (generated set, 2 epochs at {size} px) ...", flush=True)
    step("finetune", ["--out", str(ft), "--dataset-source", "generate", "--generate-images", "12",
                      "--generate-size", "240", "--epochs", "2", "--batch-size", "2", "--image-size", size,
                      "--workers", "0", "--device", "cpu"], {}, work / "ft.json")
    store = ObjectStore(work / "seaweedfs").up(buckets=("edgetune",))
    root = "s3://edgetune/bench/"
    ft_uri = root + "ns/finetunejob/ft/finetune"
    Transfer.from_env(s3_env(store, ft_uri, root=root)).publish(str(ft), "finetune")
    print(f"SeaweedFS on {store.endpoint}; {a.rounds} rounds, PVC and S3 mode alternating\n", flush=True)

    def mc(s: str) -> str:
        return root + f"ns/modelconversion/mc/{s}"
    local = {"export": work / "pvc" / "export", "build": work / "pvc" / "build", "verify": work / "pvc" / "verify",
             "bench": work / "pvc" / "bench"}
    # (step, module, argv on local paths, argv in S3 mode, the S3 mode's upload URI)
    plan = [
        ("export", "export",
         ["--out", str(local["export"]), "--checkpoint", str(ft / "best.pth"), "--config", str(ft / "config.py"),
          "--backend", "onnxruntime", "--image-size", size, "--val-dataset", str(ft / "data")],
         ["--out", str(work / "s3" / "export"), "--checkpoint", f"{ft_uri}/best.pth", "--config", f"{ft_uri}/config.py",
          "--backend", "onnxruntime", "--image-size", size, "--val-dataset", f"{ft_uri}/data"], mc("export")),
        ("build-engine", "build_engine",
         ["--out", str(local["build"]), "--onnx", str(local["export"] / "end2end.onnx"),
          "--meta", str(local["export"] / "pipeline.json"), "--backend", "onnxruntime", "--precision", "fp32"],
         ["--out", str(work / "s3" / "build"), "--onnx", mc("export") + "/end2end.onnx",
          "--meta", mc("export") + "/pipeline.json", "--backend", "onnxruntime", "--precision", "fp32"],
         mc("build-engine")),
        ("verify", "verify",
         ["--out", str(local["verify"]), "--model", str(local["build"] / "end2end.onnx"),
          "--meta", str(local["export"] / "pipeline.json"), "--backend", "onnxruntime", "--val-dataset", str(ft / "data")],
         ["--out", str(work / "s3" / "verify"), "--model", mc("build-engine") + "/end2end.onnx",
          "--meta", mc("export") + "/pipeline.json", "--backend", "onnxruntime", "--val-dataset", f"{ft_uri}/data"],
         mc("verify")),
        ("benchmark", "benchmark",
         ["--out", str(local["bench"]), "--model", str(local["build"] / "end2end.onnx"),
          "--meta", str(local["export"] / "pipeline.json"), "--backend", "onnxruntime", "--warmup", str(a.warmup),
          "--iterations", str(a.iterations), "--threads", "1"],
         ["--out", str(work / "s3" / "bench"), "--model", mc("build-engine") + "/end2end.onnx",
          "--meta", mc("export") + "/pipeline.json", "--backend", "onnxruntime", "--warmup", str(a.warmup),
          "--iterations", str(a.iterations), "--threads", "1"], root + "ns/edgebenchmark/eb/benchmark"),
    ]
    rows = []
    try:
        for name, module, pvc_argv, s3_argv, upload in plan:
            pvc_s, s3_s, xfer_s, moved = [], [], [], []
            for r in range(a.rounds):
                wall, _ = step(module, pvc_argv, {}, work / f"{name}-pvc.json")
                pvc_s.append(wall)
                wall, doc = step(module, s3_argv, s3_env(store, upload, root=root), work / f"{name}-s3.json")
                t = doc["provenance"]["transfer"]
                s3_s.append(wall)
                xfer_s.append(t["client_seconds"] + t["download_seconds"] + t["upload_seconds"])
                moved.append(t["download_bytes"] + t["upload_bytes"])
            row = {"step": name, "pvc_seconds": statistics.median(pvc_s), "s3_seconds": statistics.median(s3_s),
                   "transfer_seconds": statistics.median(xfer_s), "bytes": int(statistics.median(moved))}
            row["transfer_share"] = row["transfer_seconds"] / row["s3_seconds"]
            rows.append(row)
            print(f"{name:<13} PVC {row['pvc_seconds']:6.2f} s   S3 {row['s3_seconds']:6.2f} s   transfer "
                  f"{row['transfer_seconds']:5.2f} s = {100 * row['transfer_share']:4.1f} % of the step "
                  f"({row['bytes'] / 1e6:.1f} MB moved)  [target < {100 * TARGET_SHARE:.0f} %: "
                  f"{'met' if row['transfer_share'] < TARGET_SHARE else 'NOT met'}]", flush=True)
    finally:
        store.down()
    total_s3, total_xfer = sum(r["s3_seconds"] for r in rows), sum(r["transfer_seconds"] for r in rows)
    share = total_xfer / total_s3 if total_s3 else 0.0
    print(f"{'all four':<13} PVC {sum(r['pvc_seconds'] for r in rows):6.2f} s   S3 {total_s3:6.2f} s   transfer "
          f"{total_xfer:5.2f} s = {100 * share:4.1f} % of the steps")
    print("\n(each figure the median of the rounds; wall time includes the interpreter start and imports; the\n"
          " transfer is a near-constant few tenths of a second per step here, so its share is large for a step\n"
          " that takes a second -- onnxruntime's fp32 'build' -- and small for a TensorRT build of minutes on a Jetson)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"rounds": a.rounds, "target_share": TARGET_SHARE, "image_size": a.image_size,
                                      "iterations": a.iterations, "steps": rows, "all_steps_share": share}, indent=1))
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
