"""A stand-in for the real job steps, for the operator's fast lifecycle tests and benchmark.

    python tests/cluster/standin_step.py <step> --out DIR [the step's arguments...]

The operator runs it when EDGETUNE_STEP_COMMAND_OVERRIDE='["python", "tests/cluster/standin_step.py"]'
(the step name is appended to the override). It re-implements nothing of the contract: the
command line is parsed by the step's own arguments class (edgetune_contract.args, so a flag
the operator renders wrongly fails here as in the real step), and the result is the step's
own typed result class (edgetune_contract.results), written like the real step writes it.
Only the figures are canned (the reference workflow's), and the artifacts are small files.

Behaviour knobs, from the environment (a resource's spec.env):
    STANDIN_SLEEP=<seconds>           sleep before finishing (every step), or
    STANDIN_SLEEP_<STEP>=<seconds>    only this step (STEP upper-case, '-' -> '_')
    STANDIN_FAIL_STEP=<step>[,<step>] exit 1 with an ok=false result (reason StandinFailure)
    STANDIN_CRASH_STEP=<step>         exit 1 with a traceback on stderr and no result document
    STANDIN_MAP_DROP=<float>          the mAP drop the verify step reports (default 0.004)
During a sleep the finetune step prints progress lines through the same ProgressPlan as the
real step, every 0.5 s.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "contract"))

from edgetune_contract import results  # noqa: E402
from edgetune_contract.args import STEP_ARGS  # noqa: E402
from edgetune_contract.cliargs import ArgumentError  # noqa: E402
from edgetune_contract.progress import ProgressPlan  # noqa: E402

COCO_BASE = {"mAP": 0.185, "mAP50": 0.229, "mAP75": 0.215, "mAP_s": 0.0, "mAP_m": 0.021, "mAP_l": 0.357}
COCO_FT = {"mAP": 0.700, "mAP50": 0.818, "mAP75": 0.776, "mAP_s": 0.025, "mAP_m": 0.508, "mAP_l": 0.853}
LATENCY = {"preprocess": (5.1, 5.0, 5.4, 6.0), "inference": (10.9, 10.8, 11.3, 12.5),
           "postprocess": (0.4, 0.4, 0.5, 0.6), "pipeline": (16.6, 16.4, 17.2, 18.9)}


def _sleep(step: str, args) -> None:
    env = os.environ
    delay = float(env.get("STANDIN_SLEEP_" + step.upper().replace("-", "_")) or env.get("STANDIN_SLEEP") or "0")
    plan = ProgressPlan(skip=() if getattr(args, "checkpoint", None) and getattr(args, "eval_base", False)
                        else ("eval-base",))
    t0 = time.monotonic()
    while time.monotonic() - t0 < delay:
        if step == "finetune":
            frac = min(1.0, (time.monotonic() - t0) / delay)
            print(plan.report("train", frac, epoch=max(1, int(frac * args.epochs)), epochs=args.epochs,
                              iter=int(frac * 100), iters=100, loss=1.0 - 0.5 * frac,
                              eta_seconds=max(0.0, delay - (time.monotonic() - t0))).line(), flush=True)
        time.sleep(0.5)


def _missing(step: str, reason: str, path: str) -> results.StepResult | None:
    return None if Path(path).exists() else results.failure(step, reason, f"{path} not found")


def result_of(step: str, args, out: Path) -> results.StepResult:
    prov = {"standin": True, "device": os.environ.get("STANDIN_DEVICE", "")}
    if step == "finetune":
        (out / "best.pth").write_bytes(b"standin-checkpoint")
        (out / "config.py").write_text("# stand-in config\n")
        (out / "data" / "annotations").mkdir(parents=True, exist_ok=True)
        (out / "data" / "images").mkdir(parents=True, exist_ok=True)
        prov.update(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                    dataset={"source": args.dataset_source, "train_images": 61, "val_images": 13})
        return results.FinetuneResult(
            message="stand-in finetune done", base=COCO_BASE if args.eval_base else None, finetuned=COCO_FT,
            artifacts={"checkpoint": "best.pth", "config": "config.py", "dataset": "data"}, provenance=prov)
    if step == "export":
        failed = _missing(step, "CheckpointNotFound", args.checkpoint) or _missing(step, "CheckpointNotFound",
                                                                                   args.config)
        if failed:
            return failed
        (out / "end2end.onnx").write_bytes(b"onnx" * 100)
        (out / "pipeline.json").write_text("{}")
        prov.update(backend=args.backend, input_shape=[1, 3, args.image_size, args.image_size])
        return results.ExportResult(message="stand-in export done", onnx_bytes=400,
                                    artifacts={"onnx": "end2end.onnx", "meta": "pipeline.json"}, provenance=prov)
    if step == "build-engine":
        failed = _missing(step, "InvalidInput", args.onnx)
        if failed:
            return failed
        name, key = ("end2end.engine", "engine") if args.backend == "tensorrt" else ("end2end.onnx", "model")
        (out / name).write_bytes(b"engine" * 10)
        prov.update(backend=args.backend, precision=args.precision)
        return results.BuildEngineResult(message="stand-in build done", build_seconds=1.5, engine_bytes=60,
                                         artifacts={key: name}, provenance=prov)
    if step == "verify":
        drop = float(os.environ.get("STANDIN_MAP_DROP", "0.004"))
        converted = {k: round(v - drop, 6) for k, v in COCO_FT.items()}
        ok = results.accuracy_gate(drop, args.max_map_drop)
        prov.update(backend=args.backend, images=13)
        return results.VerifyResult(
            ok=ok, reason="Succeeded" if ok else "AccuracyDropTooLarge",
            message="stand-in verify done" if ok else f"mAP drop {drop} exceeds {args.max_map_drop}",
            converted=converted, reference=dict(COCO_FT), map_drop=drop, provenance=prov)
    if step == "sweep":  # int8 rows are faster; within_budget as the real step decides it
        rows = []
        for i, m in enumerate(json.loads(args.models)):
            p50 = (5.0 if m["precision"] == "int8" else 16.0) + i * 0.1
            ok = m.get("accuracyOk") is not False and results.accuracy_gate(m.get("mapDrop"), args.max_map_drop)
            rows.append({"name": m["name"], "p50_ms": p50, "p99_ms": p50 + 2, "mean_ms": p50 + 0.5,
                         "fps": round(1000 / (p50 + 0.5), 2), "peak_rss_mib": 200.0 + i,
                         "inference_p50_ms": p50 - 0.5, "precision_run": m["precision"], "within_budget": ok})
        within = [r for r in rows if r["within_budget"]]
        best = min(within, key=lambda r: r["p50_ms"])["name"] if within else None
        (out / "sweep.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
        return results.SweepResult(message=f"stand-in sweep done, best {best}", rows=rows, best=best,
                                   artifacts={"report": "sweep.svg", "plot": "sweep.svg"}, provenance=prov)
    # benchmark
    failed = _missing(step, "InvalidInput", args.model)
    if failed:
        return failed
    (out / "latency.json").write_text("{}")
    latency = {stage: {"mean_ms": mean, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "min_ms": p50 * 0.9,
                       "max_ms": p99 * 1.1} for stage, (mean, p50, p90, p99) in LATENCY.items()}
    prov.update(backend=args.backend, warmup=args.warmup, iterations=args.iterations,
                device=os.environ.get("STANDIN_DEVICE") or "jetson-orin", versions={"standin": "1"})
    if os.environ.get("EDGETUNE_NODE_NAME"):  # a fleet's Job: the node it ran on, as the real step records it
        prov["node"] = os.environ["EDGETUNE_NODE_NAME"]
    return results.BenchmarkResult(message="stand-in benchmark done", latency=latency, fps=round(1000.0 / 16.6, 2),
                                   peak_rss_mib=180.0,
                                   artifacts={"report": "latency.json"}, provenance=prov)


def main(argv: list[str]) -> int:
    step = argv[0]
    if step not in STEP_ARGS:
        print(f"unknown step {step}", file=sys.stderr)
        return 2
    try:
        args = STEP_ARGS[step].from_argv(argv[1:])
    except ArgumentError as exc:  # as the real step: InvalidInput, exit 2
        results.failure(step, "InvalidInput", str(exc)).write()
        print(f"{step}: InvalidInput: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"stand-in {step}: {args}", flush=True)
    if step in os.environ.get("STANDIN_CRASH_STEP", "").split(","):
        raise RuntimeError(f"stand-in crash requested for {step}")
    _sleep(step, args)
    if step in os.environ.get("STANDIN_FAIL_STEP", "").split(","):
        result = results.failure(step, "StandinFailure", f"stand-in failure requested for {step}")
    else:
        result = result_of(step, args, out)
    result.write()
    if not result.ok:
        print(result.message, file=sys.stderr)
    return 0 if result.ok else 1


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
