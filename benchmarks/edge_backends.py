"""bench-edge's edgetune backends x precisions: a small model trained on the generated set
(cached), built for every CPU backend/precision at the benchmark's size (what is timed) and at
its training size (where its AP drop against PyTorch is verified: a model trained at 192 px
finds nothing at 640), run as sweep workers (one process per model,
edgetune_jobs.steps.sweep.Worker) in bench-edge's interleaved blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
CONTENDERS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
              ("openvino", "fp16"), ("openvino", "int8"))
# the cached model: the demo's recipe (generated balloon-like set, RTMDet-tiny from random weights,
# mAP ~0.5 after 50 epochs at 192 px), 40 epochs
TRAIN = ("--dataset-source", "generate", "--generate-images", "24", "--generate-size", "192",
         "--config", "rtmdet_tiny_8xb32-300e_coco", "--epochs", "40", "--batch-size", "4", "--image-size", "192",
         "--lr", "0.004", "--seed", "0", "--workers", "0", "--device", "cpu", "--val-interval", "20")


def cache_root() -> Path:
    return Path(os.environ.get("EDGETUNE_CACHE") or Path.home() / ".cache" / "edgetune") / "bench-edge"


def trained_model(log=print) -> tuple[str, str, str, dict]:
    """(checkpoint, config, prepared dataset, finetune result): trained once, then cached (keyed
    on the recipe and the code of the finetune step)."""
    key = hashlib.sha256(" ".join(TRAIN).encode() + (ROOT / "jobs/edgetune_jobs/steps/finetune.py").read_bytes()
                         ).hexdigest()[:12]
    out = cache_root() / f"model-{key}"
    done = out / "result.json"
    if not done.is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log(f"  training the benchmark model once (cached in {out}): {' '.join(TRAIN)}")
        env = dict(os.environ, EDGETUNE_RESULT_PATH=str(tmp.parent / f"{tmp.name}.json"))
        proc = subprocess.run([sys.executable, "-m", "edgetune_jobs.steps.finetune", "--out", str(tmp), *TRAIN],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"training failed:\n{proc.stderr[-3000:]}")
        shutil.move(env["EDGETUNE_RESULT_PATH"], tmp / "result.json")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    result = json.loads(done.read_text())
    return str(out / "best.pth"), str(out / "config.py"), str(out / "data"), result


def _build(run_step, work: Path, export_dir: Path, folder: Path, backend: str, precision: str, data: str,
           tag: str) -> dict:
    """build_engine once (a finished build in the work dir is reused)."""
    from edgetune_jobs.steps import build_engine

    done = work / f"build-{tag}.json"
    if done.is_file() and (folder / "build.json").is_file():
        doc = json.loads(done.read_text())
        if doc.get("ok"):
            return doc
    return run_step(build_engine, ["--out", str(folder), "--onnx", str(export_dir / "end2end.onnx"),
                                   "--meta", str(export_dir / "pipeline.json"), "--backend", backend,
                                   "--precision", precision, "--calibration-images", data,
                                   "--calibration-max-images", "32"], done)


def build_all(run_step, work: Path, export_dir: Path, acc_export: Path, data: str, threads, which=CONTENDERS,
              log=print) -> list[dict]:
    """Build every backend/precision from export_dir (the benchmark's size: what the workers run)
    and from acc_export (the model's training size, with the PyTorch reference AP: verified there,
    since a model trained at 192 px detects nothing at 640); the rows for sweep workers + drops."""
    from edgetune_jobs.steps import verify

    rows = []
    for backend, precision in which:
        name = f"{'ort' if backend == 'onnxruntime' else 'ov'}-{precision}"
        try:
            doc = _build(run_step, work, export_dir, work / "backends" / name, backend, precision, data, name)
            acc = _build(run_step, work, acc_export, work / "backends-acc" / name, backend, precision, data,
                         f"acc-{name}")
        except SystemExit as exc:  # e.g. openvino not installed: reported, the others go on
            log(f"  {name}: not built: {exc}")
            continue
        acc_model = str(work / "backends-acc" / name / acc["artifacts"]["model"])
        vdoc = run_step(verify, ["--out", str(work / "backends-acc" / name / "verify"), "--model", acc_model,
                                 "--meta", str(acc_export / "pipeline.json"), "--backend", backend,
                                 "--val-dataset", data]
                        + (["--threads", str(threads)] if threads else []), work / f"verify-{name}.json")
        m = vdoc["metrics"]
        rows.append({"name": name, "backend": backend, "precision": precision,
                     "model": str(work / "backends" / name / doc["artifacts"]["model"]),
                     "meta": str(export_dir / "pipeline.json"), "mAP": m["converted"]["mAP"],
                     "reference_mAP": m["reference"]["mAP"], "mapDrop": m["map_drop"],
                     "accuracy_input": vdoc["provenance"].get("input_padding"),
                     "modelBytes": doc["metrics"]["engine_bytes"],
                     "precision_run": doc["provenance"].get("precision_run", precision),
                     "calibration": {k: doc["provenance"][k] for k in ("calibration_images", "calibration_method")
                                     if k in doc["provenance"]}})
    return rows


def start_workers(rows: list[dict], image: str, threads, warmup: int, work: Path) -> list:
    from edgetune_jobs.steps.sweep import Worker

    frame_dir = work / "frame"
    frame_dir.mkdir(exist_ok=True)
    shutil.copy(image, frame_dir / Path(image).name)
    args = SimpleNamespace(images=str(frame_dir), threads=threads, warmup=warmup)
    workers = []
    for row in rows:
        w = Worker(row, args)
        if not w.hello.get("ready"):
            print(f"  {row['name']}: not loaded: {w.hello.get('error')}")
            continue
        workers.append(w)
    return workers


def report(workers: list, sdk_p50: float | None, log=print) -> list[dict]:
    """Print the table (p50/p99 pipeline, model, pipeline/model, fps, peak RSS, size, drop, x SDK)."""
    from edgetune_jobs.inference.stats import fps, stage_stats

    out = []
    base = None
    log(f"  {'backend/precision':<22} {'ran':<20} {'p50':>8} {'p99':>8} {'model':>8} {'pipe/mod':>8} {'fps':>7} "
        f"{'RSS MiB':>8} {'size MB':>8} {'mAP':>6} {'drop':>7} {'x ort32':>8} {'x SDK':>7}")
    for w in workers:
        peak = w.stop()
        stats = stage_stats(w.samples)
        p, inf = stats["pipeline"], stats["inference"]
        row = {**{k: w.row[k] for k in ("name", "backend", "precision", "mAP", "reference_mAP", "mapDrop",
                                        "modelBytes", "calibration")},
               "precision_run": w.hello["precision_run"], "latency": stats, "fps": fps(w.samples["pipeline"]),
               "peak_rss_mib": peak, "pipeline_over_model": round(p["p50_ms"] / inf["p50_ms"], 3)}
        if w.row["name"] == "ort-fp32":
            base = p["p50_ms"]
        out.append(row)
    for row in out:
        p = row["latency"]["pipeline"]
        row["over_ort_fp32"] = round(p["p50_ms"] / base, 3) if base else None
        row["over_sdk"] = round(p["p50_ms"] / sdk_p50, 3) if sdk_p50 else None
        log(f"  {row['backend'] + ' ' + row['precision']:<22} {row['precision_run'][:20]:<20} {p['p50_ms']:8.2f} "
            f"{p['p99_ms']:8.2f} {row['latency']['inference']['p50_ms']:8.2f} {row['pipeline_over_model']:8.3f} "
            f"{row['fps']:7.1f} {row['peak_rss_mib'] or 0:8.1f} {row['modelBytes'] / 1e6:8.1f} {row['mAP']:6.3f} "
            f"{row['mapDrop']:+7.4f} {row['over_ort_fp32'] or float('nan'):8.3f} "
            f"{row['over_sdk'] if row['over_sdk'] is not None else float('nan'):7.3f}")
    return out
