"""A stand-in for the real job steps, for the operator's cluster tests and benchmark.

    python tests/cluster/standin_step.py <step> --out DIR [the step's contract arguments...]

The operator runs it when EDGETUNE_STEP_COMMAND_OVERRIDE='["python", "tests/cluster/standin_step.py"]'
(the step name is appended to the override). It writes small artifact files and a plausible
result document (edgetune_jobs.contract) to $EDGETUNE_RESULT_PATH, like the real step would.

Behaviour knobs, from the environment (a resource's spec.env):
    STANDIN_SLEEP=<seconds>           sleep before finishing (every step), or
    STANDIN_SLEEP_<STEP>=<seconds>    only this step (STEP upper-case, '-' -> '_')
    STANDIN_FAIL_STEP=<step>[,<step>] exit 1 with an ok=false result (reason StandinFailure)
    STANDIN_CRASH_STEP=<step>         exit 1 with a traceback on stderr and no result document
    STANDIN_MAP_DROP=<float>          the mAP drop the verify step reports (default 0.004)
During a sleep the finetune step prints progress lines (contract.progress_line) every 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "jobs"))

from edgetune_jobs import contract  # noqa: E402

COCO_BASE = {"mAP": 0.185, "mAP50": 0.229, "mAP75": 0.215, "mAP_s": 0.0, "mAP_m": 0.021, "mAP_l": 0.357}
COCO_FT = {"mAP": 0.700, "mAP50": 0.818, "mAP75": 0.776, "mAP_s": 0.025, "mAP_m": 0.508, "mAP_l": 0.853}


def _args(argv: list[str]) -> tuple[str, dict[str, str]]:
    step = argv[0]
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    known, rest = ap.parse_known_args(argv[1:])
    opts: dict[str, str] = {"out": known.out}
    i = 0
    while i < len(rest):
        if rest[i].startswith("--"):
            key = rest[i][2:]
            if i + 1 < len(rest) and not rest[i + 1].startswith("--"):
                opts[key] = rest[i + 1]
                i += 2
                continue
            opts[key] = "true"
        i += 1
    return step, opts


def _sleep(step: str) -> float:
    env = os.environ
    v = env.get("STANDIN_SLEEP_" + step.upper().replace("-", "_")) or env.get("STANDIN_SLEEP") or "0"
    return float(v)


def main(argv: list[str]) -> int:
    step, opts = _args(argv)
    out = Path(opts["out"])
    out.mkdir(parents=True, exist_ok=True)
    print(f"stand-in {step}: args {opts}", flush=True)
    if step in os.environ.get("STANDIN_CRASH_STEP", "").split(","):
        raise RuntimeError(f"stand-in crash requested for {step}")
    delay = _sleep(step)
    t0 = time.monotonic()
    epochs = int(opts.get("epochs", "4"))
    while time.monotonic() - t0 < delay:
        if step == "finetune":
            frac = min(1.0, (time.monotonic() - t0) / delay) if delay else 1.0
            print(contract.progress_line(phase="train", epoch=int(frac * epochs), epochs=epochs,
                                         iter=int(frac * 100), iters=100, loss=1.0 - 0.5 * frac,
                                         eta_seconds=max(0.0, delay - (time.monotonic() - t0)),
                                         percent=round(100 * frac, 1)), flush=True)
        time.sleep(0.5)
    if step in os.environ.get("STANDIN_FAIL_STEP", "").split(","):
        doc = contract.make_result(step, False, reason="StandinFailure",
                                   message=f"stand-in failure requested for {step}")
        contract.write_result(doc)
        print(doc["message"], file=sys.stderr)
        return 1
    metrics: dict = {}
    artifacts: dict = {}
    provenance: dict = {"standin": True, "device": os.environ.get("STANDIN_DEVICE", "")}
    if step == "finetune":
        (out / "best.pth").write_bytes(b"standin-checkpoint")
        (out / "config.py").write_text("# stand-in config\n")
        (out / "data" / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "data" / "images").mkdir(parents=True, exist_ok=True)
        base = None if opts.get("no-eval-base") == "true" else COCO_BASE
        metrics = {"base": base, "finetuned": COCO_FT}
        artifacts = {"checkpoint": "best.pth", "config": "config.py", "dataset": "data"}
        provenance.update(epochs=epochs, batch_size=int(opts.get("batch-size", "1")), seed=int(opts.get("seed", "0")),
                          dataset={"source": opts.get("dataset-source"), "train_images": 61, "val_images": 13})
    elif step == "export":
        for key in ("checkpoint", "config"):
            if not Path(opts[key]).exists():
                doc = contract.make_result(step, False, reason="CheckpointNotFound", message=f"{opts[key]} not found")
                contract.write_result(doc)
                return 1
        (out / "end2end.onnx").write_bytes(b"onnx" * 100)
        (out / "pipeline.json").write_text("{}")
        metrics = {"onnx_bytes": 400}
        artifacts = {"onnx": "end2end.onnx", "meta": "pipeline.json"}
        provenance.update(backend=opts.get("backend"), input_shape=[1, 3, int(opts["image-size"]), int(opts["image-size"])])
    elif step == "build-engine":
        if not Path(opts["onnx"]).exists():
            doc = contract.make_result(step, False, reason="InvalidInput", message=f"{opts['onnx']} not found")
            contract.write_result(doc)
            return 1
        if opts.get("backend") == "tensorrt":
            (out / "end2end.engine").write_bytes(b"engine" * 10)
            artifacts = {"engine": "end2end.engine"}
        else:
            (out / "end2end.onnx").write_bytes(b"onnx" * 100)
            artifacts = {"model": "end2end.onnx"}
        metrics = {"build_seconds": 1.5, "engine_bytes": 60}
        provenance.update(backend=opts.get("backend"), precision=opts.get("precision"))
    elif step == "verify":
        drop = float(os.environ.get("STANDIN_MAP_DROP", "0.004"))
        ref = dict(COCO_FT)
        conv = {k: round(v - drop, 6) for k, v in ref.items()}
        limit = float(opts.get("max-map-drop", "1"))
        ok = drop <= limit
        metrics = {"converted": conv, "reference": ref, "map_drop": drop}
        provenance.update(backend=opts.get("backend"), images=13)
        doc = contract.make_result(step, ok, reason="Succeeded" if ok else "AccuracyDropTooLarge",
                                   message="" if ok else f"mAP drop {drop} exceeds {limit}",
                                   metrics=metrics, provenance=provenance)
        contract.write_result(doc)
        return 0 if ok else 1
    elif step == "benchmark":
        stats = {
            "preprocess": (5.1, 5.0, 5.4, 6.0), "inference": (10.9, 10.8, 11.3, 12.5),
            "postprocess": (0.4, 0.4, 0.5, 0.6), "pipeline": (16.6, 16.4, 17.2, 18.9)}
        for stage, (mean, p50, p90, p99) in stats.items():
            metrics[stage] = {"mean_ms": mean, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99,
                              "min_ms": p50 * 0.9, "max_ms": p99 * 1.1}
        metrics["fps"] = round(1000.0 / 16.6, 2)
        (out / "latency.json").write_text("{}")
        artifacts = {"report": "latency.json"}
        provenance.update(backend=opts.get("backend"), warmup=int(opts.get("warmup", "0")),
                          iterations=int(opts.get("iterations", "1")), device=os.environ.get("STANDIN_DEVICE") or
                          "jetson-orin")
    else:
        print(f"unknown step {step}", file=sys.stderr)
        return 2
    contract.write_result(contract.make_result(step, True, message=f"stand-in {step} done", metrics=metrics,
                                               artifacts=artifacts, provenance=provenance))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception:
        # a crash: the traceback on stderr, then a moment before exiting — on a real node the
        # kubelet reads the log for the termination message (FallbackToLogsOnError) when the
        # container exits, and containerd may not have copied the last lines to it yet
        import traceback
        traceback.print_exc()
        sys.stderr.flush()
        time.sleep(1)
        sys.exit(1)
