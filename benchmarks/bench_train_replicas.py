"""Benchmark: distributed fine-tuning throughput, 1 and 2 training processes side by side.

The demo's recipe (examples/local/01-finetunejob.yaml, from the generated base model) for a
few epochs, run by the finetune step with `--nproc-per-node N` (torchrun, gloo on the CPU, one
torch thread per process: the same launcher and worker code a FinetuneJob with
`spec.training.replicas`/`processesPerReplica` runs in its Pods). Prints, per N, the training
images per second (train images x epochs / the step's train_seconds), the speed-up against
N=1, the global batch and learning rate the step scaled to, and the fine-tuned mAP.

    python benchmarks/bench_train_replicas.py [--replicas 1,2] [--epochs 6] [--json PATH]

A benchmark: it prints figures (and JSON), it never fails on a time. On this project's 2-core
machines N=2 has one core per process; N=1 leaves one idle.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import RECIPE_YAML, load, recipe_args, run_step, with_overrides  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", default="1,2", help="comma-separated training process counts")
    p.add_argument("--epochs", type=int, default=6, help="epochs per run (the recipe's own: 30)")
    p.add_argument("--out", default=str(ROOT / "build" / "bench-train-replicas"))
    p.add_argument("--json", help="also write every figure to this file")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT / "jobs"))
    from edgetune_jobs.training import base_model

    ckpt = base_model.ensure(log=lambda m: print(f"==> {m}", flush=True))
    spec = yaml.safe_load(RECIPE_YAML.read_text())["spec"]
    rows = []
    for i, n in enumerate(int(x) for x in a.replicas.split(",")):
        args = with_overrides(recipe_args(spec, str(ckpt)), {
            "--epochs": str(a.epochs), "--val-interval": str(a.epochs), "--workers": "0",
            "--nproc-per-node": str(n), "--master-port": str(29571 + i)})
        doc = run_step(Path(a.out) / f"n{n}", args, threads=1)
        prov = doc["provenance"]
        images = prov["dataset"]["train_images"] * a.epochs
        dist = prov.get("distributed") or {}
        rows.append({"processes": n, "train_seconds": prov["train_seconds"],
                     "images_per_second": round(images / prov["train_seconds"], 2),
                     "global_batch": dist.get("global_batch", prov.get("batch_size")),
                     "lr": dist.get("lr", prov.get("lr")), "backend": dist.get("backend", "none"),
                     "iterations": prov["iterations"], "mAP": doc["metrics"]["finetuned"].get("mAP"),
                     "load": doc["_load"]})
        print(f"{n} process(es): {rows[-1]['images_per_second']} images/s ({images} images in "
              f"{prov['train_seconds']} s), load {doc['_load']}", flush=True)
    base = rows[0]["images_per_second"]
    print(f"\nrecipe {RECIPE_YAML.relative_to(ROOT)}, {a.epochs} epochs from the base model, 1 torch thread per "
          f"process, CPU (gloo); machine load before -> after each run in the log above")
    print(f"{'processes':>10}{'images/s':>10}{'speed-up':>10}{'global batch':>14}{'lr':>9}{'iters':>7}{'mAP':>7}")
    for r in rows:
        print(f"{r['processes']:>10}{r['images_per_second']:>10}{r['images_per_second'] / base:>10.2f}"
              f"{r['global_batch']:>14}{r['lr']:>9.4g}{r['iterations']:>7}"
              f"{r['mAP'] if r['mAP'] is not None else 'n/a':>7}")
    if a.json:
        Path(a.json).write_text(json.dumps({"epochs": a.epochs, "rows": rows, "load_now": load()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
