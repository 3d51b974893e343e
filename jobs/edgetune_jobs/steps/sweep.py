"""sweep: several converted models measured side by side on one device -- the table backend x
precision with latency, throughput and peak memory, and its picture.

    python -m edgetune_jobs.steps.sweep --out DIR --models JSON [--warmup N] [--iterations N]
        [--block N] [--images DIR] [--threads N] [--max-map-drop F]     (edgetune_contract.args.SweepArgs)

--models is a JSON list, one object per row: name, backend, precision, model, meta (paths as
the Pod sees them) and what the operator knows from each ModelConversion's verify: mAP,
mapDrop, accuracyOk, modelBytes, reason.

Each model runs in its own worker process (so its peak RSS is its own, and two runtimes never
share a process); the workers are driven in interleaved blocks of --block iterations (model
A, B, C, then A again ...), so a load change on the device hits all of them alike. Per model:
the benchmark step's measurement loop (benchmark.run_loop) and statistics. A model that cannot
be loaded (BackendUnavailable: openvino on the Jetson image) is a row with its error; the step
fails only when no model could be measured.

The best row is the fastest (pipeline p50) among the rows whose conversion kept its accuracy
(accuracyOk) and, with --max-map-drop, whose drop is within it. Writes sweep.json (every
figure), sweep.svg and sweep.png (inference.sweep_plot: accuracy vs latency, per-stage latency
distributions).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import sys
import time
from typing import Any

from edgetune_contract.args import BACKENDS, SweepArgs
from edgetune_contract.results import SweepResult, accuracy_gate

from ..cli import StepError, entry_point
from ..inference.device import MEMORY_PROVENANCE, device_info, versions
from .inputs import check_backend, load_step_inputs, open_detector, read_build_info

REPORT = "sweep.json"
PLOT_SVG = "sweep.svg"
PLOT_PNG = "sweep.png"
ROW_KEYS = ("name", "backend", "precision", "model", "meta")


def parse_models(text: str) -> list[dict[str, Any]]:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StepError("InvalidInput", f"--models is not JSON: {exc}") from None
    if not isinstance(rows, list) or not rows:
        raise StepError("InvalidInput", "--models must be a non-empty JSON list of rows")
    names = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in ROW_KEYS):
            raise StepError("InvalidInput", f"--models[{i}] needs the strings {', '.join(ROW_KEYS)}")
        if row["backend"] not in BACKENDS:
            raise StepError("InvalidInput", f"--models[{i}]: unknown backend {row['backend']!r}")
        if row["name"] in names:
            raise StepError("InvalidInput", f"--models: the name {row['name']!r} appears twice")
        names.add(row["name"])
    return rows


# --- the worker: one model, one process --------------------------------------------------------


def _worker(conn, row: dict, images_dir: str | None, threads: int | None, warmup: int) -> None:
    """Load the model, warm up, then answer ("run", n) with samples, ("stop",) with peak RSS."""
    try:
        from ..inference.device import peak_rss_mib
        from .benchmark import load_images, run_loop

        meta, meta_dir = load_step_inputs(row["model"], row["meta"])
        check_backend(meta, row["backend"])
        build = read_build_info(row["model"])
        precision = build.get("precision", row["precision"])
        if threads:
            import cv2
            cv2.setNumThreads(threads)
        images, desc = load_images(images_dir)
        det = open_detector(row["backend"], row["model"], meta, meta_dir, threads=threads, precision=precision)
        run_loop(det, images, warmup, 0)
        prov = det.provenance()
        conn.send({"ready": True, "images": desc, "input_shape": det.input_shape(),
                   "precision_run": prov.get("precision_run") or build.get("precision_run") or precision})
    except Exception as exc:  # noqa: BLE001 - reported as the row's error
        reason = getattr(exc, "reason", None) or ("BackendUnavailable" if isinstance(exc, ImportError)
                                                 else type(exc).__name__)
        conn.send({"ready": False, "error": f"{reason}: {getattr(exc, 'message', None) or exc}"})
        return
    while True:
        cmd = conn.recv()
        if cmd[0] == "run":
            conn.send(run_loop(det, images, 0, cmd[1]))
        else:
            conn.send({"peak_rss_mib": peak_rss_mib()})
            return


class Worker:
    def __init__(self, row: dict, args: SweepArgs):
        ctx = mp.get_context("spawn")
        self.row = row
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, row, args.images, args.threads, args.warmup),
                                daemon=True)
        self.proc.start()
        self.hello = self.conn.recv() if self.conn.poll(1800) else {"ready": False, "error": "Timeout: no answer"}
        self.samples: dict[str, list[float]] = {}

    def run(self, n: int) -> None:
        self.conn.send(("run", n))
        for k, v in self.conn.recv().items():
            self.samples.setdefault(k, []).extend(v)

    def stop(self) -> float | None:
        try:
            if self.hello.get("ready"):
                self.conn.send(("stop",))
                return self.conn.recv().get("peak_rss_mib")
            return None
        finally:
            self.proc.join(30)


def within_budget(row: dict, budget: float | None) -> bool:
    """The row's verdict: its conversion kept its accuracy (its own verify gate) and its drop is
    within the sweep's budget (edgetune_contract.results.accuracy_gate)."""
    return row.get("accuracyOk") is not False and accuracy_gate(row.get("mapDrop"), budget)


def best_row(rows: list[dict], budget: float | None) -> dict | None:
    """The fastest measured row within the budget."""
    candidates = [r for r in rows if r.get("p50_ms") is not None and within_budget(r, budget)]
    return min(candidates, key=lambda r: r["p50_ms"]) if candidates else None


def run(args: SweepArgs) -> SweepResult:
    from ..inference.stats import fps, stage_stats

    rows = parse_models(args.models)
    if args.warmup < 0 or args.iterations < 1 or args.block < 1:
        raise StepError("InvalidInput", f"--warmup must be >= 0, --iterations and --block >= 1 "
                                        f"(got {args.warmup}, {args.iterations}, {args.block})")
    if args.threads is not None and args.threads < 1:
        raise StepError("InvalidInput", f"--threads must be >= 1, got {args.threads}")
    if args.images and not os.path.isdir(args.images):
        raise StepError("DatasetNotFound", f"image folder {args.images} does not exist")
    t0 = time.monotonic()
    workers = []
    for row in rows:  # one at a time: loading (and OpenVINO compiling) competes for the CPU
        workers.append(Worker(row, args))
    live = [w for w in workers if w.hello.get("ready")]
    for _ in range(math.ceil(args.iterations / args.block)):
        for w in live:
            w.run(min(args.block, args.iterations - len(w.samples.get("pipeline", []))))
    table, report_rows = [], []
    for w in workers:
        peak = w.stop()
        row = {k: w.row.get(k) for k in ("name", "backend", "precision", "mAP", "mapDrop", "accuracyOk",
                                         "modelBytes", "reason")}
        row["within_budget"] = within_budget(row, args.max_map_drop)
        if not w.hello.get("ready"):
            row["error"] = w.hello.get("error", "failed")[:300]
            table.append({"name": row["name"], "error": row["error"][:120], "within_budget": False})
            report_rows.append(row)
            continue
        stats = stage_stats(w.samples)
        pipe = stats["pipeline"]
        row.update({"p50_ms": pipe["p50_ms"], "p99_ms": pipe["p99_ms"], "mean_ms": pipe["mean_ms"],
                    "fps": fps(w.samples["pipeline"]), "peak_rss_mib": peak,
                    "inference_p50_ms": stats["inference"]["p50_ms"], "precision_run": w.hello["precision_run"],
                    "stats": stats, "iterations": len(w.samples["pipeline"]), "images": w.hello["images"]})
        report_rows.append(row)
        table.append({k: row[k] for k in ("name", "p50_ms", "p99_ms", "mean_ms", "fps", "peak_rss_mib",
                                          "inference_p50_ms", "precision_run", "within_budget")
                      if row.get(k) is not None})
    measured = [r for r in report_rows if "p50_ms" in r]
    if not measured:
        raise StepError("BackendUnavailable" if all("BackendUnavailable" in r["error"] for r in report_rows)
                        else "SweepFailed", "no model could be measured: " +
                        "; ".join(f"{r['name']}: {r['error']}" for r in report_rows))
    best = best_row(report_rows, args.max_map_drop)
    os.makedirs(args.out, exist_ok=True)
    dev = device_info()
    vers = versions("onnxruntime", "openvino", "tensorrt", "numpy")
    provenance = {"device": dev, "versions": vers, "warmup": args.warmup, "iterations": args.iterations,
                  "block": args.block, "threads": args.threads or "default", "order": "interleaved blocks",
                  "isolation": "one process per model", "max_map_drop": args.max_map_drop,
                  "memory": MEMORY_PROVENANCE["rss"], "seconds": round(time.monotonic() - t0, 2)}
    samples = {w.row["name"]: {k: [round(x, 4) for x in v] for k, v in w.samples.items()} for w in workers}
    with open(os.path.join(args.out, REPORT), "w", encoding="utf-8") as fh:
        json.dump({"rows": report_rows, "best": best and best["name"], "provenance": provenance,
                   "samples_ms": samples}, fh)
    artifacts = {"report": REPORT}
    try:
        from ..inference.sweep_plot import draw

        draw(report_rows, samples, best and best["name"], os.path.join(args.out, PLOT_SVG),
             os.path.join(args.out, PLOT_PNG), title=f"{len(measured)} models on {dev.get('cpu', '')}"[:90],
             budget=args.max_map_drop)
        artifacts.update({"plot": PLOT_SVG, "plot_png": PLOT_PNG})
    except ImportError as exc:  # matplotlib is not in every edge image
        provenance["plot"] = f"not drawn: {exc}"
    failed = [r["name"] for r in report_rows if "error" in r]
    msg = (f"{len(measured)} model(s) measured side by side"
           + (f", best {best['name']} ({best['backend']} {best['precision']}): p50 {best['p50_ms']:.2f} ms"
              if best else ", no row within the accuracy budget")
           + (f"; not measured: {', '.join(failed)}" if failed else ""))
    return SweepResult(message=msg, rows=table, best=best and best["name"], artifacts=artifacts,
                       provenance=provenance)


main = entry_point(SweepArgs, run)

if __name__ == "__main__":
    sys.exit(main())
