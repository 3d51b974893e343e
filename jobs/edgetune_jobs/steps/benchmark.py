"""benchmark: latency of the whole pipeline and of each stage, with percentiles.

    python -m edgetune_jobs.steps.benchmark --out DIR --model PATH --meta PATH
        --backend tensorrt|onnxruntime|openvino|torch --warmup N --iterations N [--duration SECONDS]
        [--images DIR] [--threads N] [--device cpu|cuda]   (edgetune_contract.args.BenchmarkArgs)

Per iteration, one image (decoded once, up front; cycled) goes through
    preprocess   letterbox into the preallocated input buffer (cv2.resize, once)
    inference    session.run / engine execution incl. host<->device copies / model.predict
    postprocess  valid rows, boxes back to original-image pixels
timed with time.perf_counter; pipeline = the sum as one interval. On a GPU the engine's own
execution is also timed with CUDA events (metrics.inference_gpu). --warmup iterations are
not recorded; --duration runs for that many seconds instead of --iterations.
--model is the engine / ONNX, or for --backend torch the .pth checkpoint (its config is the
one the export step copied next to the meta).
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from edgetune_contract.args import BenchmarkArgs
from edgetune_contract.names import ENV_NODE_NAME
from edgetune_contract.results import STAGES, BenchmarkResult

from ..cli import StepError, entry_point
from ..inference.device import MEMORY_PROVENANCE, device_info, peak_rss_mib, versions
from .inputs import check_backend, list_images, load_step_inputs, open_detector, read_build_info

REPORT = "benchmark.json"
MAX_IMAGES = 16


def synthetic_image(h: int = 720, w: int = 1280, seed: int = 0) -> np.ndarray:
    """A deterministic photo-sized BGR image (smooth gradients + noise + a few blobs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w * 200, yy / h * 200, (xx + yy) / (w + h) * 255], -1)
    img += rng.normal(0, 12, img.shape)
    for _ in range(5):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(30, 150)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def load_images(folder: str | None) -> tuple[list[np.ndarray], str]:
    from ..inference.preprocess import load_image

    if not folder:
        return [synthetic_image()], "synthetic 1280x720 (1 image)"
    if not os.path.isdir(folder):
        raise StepError("DatasetNotFound", f"image folder {folder} does not exist")
    files = list_images(folder, MAX_IMAGES)
    if not files:
        raise StepError("DatasetNotFound", f"no images under {folder}")
    return [load_image(f) for f in files], f"{folder} ({len(files)} images, cycled)"


def run_loop(det, images: list[np.ndarray], warmup: int, iterations: int,
             duration: float | None = None) -> dict[str, list[float]]:
    """The measurement loop: per-stage and pipeline milliseconds (+ GPU ms where measured)."""
    clock = time.perf_counter
    samples: dict[str, list[float]] = {s: [] for s in STAGES}
    gpu: list[float] = []
    n_img = len(images)
    for i in range(max(0, warmup)):
        det(images[i % n_img])
    end = clock() + duration if duration else None
    i = 0
    while (i < iterations) if end is None else (clock() < end or i == 0):
        img = images[i % n_img]
        t0 = clock()
        x, info = det.preprocess(img)
        t1 = clock()
        raw = det.infer(x)
        t2 = clock()
        det.postprocess(raw, info)
        t3 = clock()
        samples["preprocess"].append((t1 - t0) * 1e3)
        samples["inference"].append((t2 - t1) * 1e3)
        samples["postprocess"].append((t3 - t2) * 1e3)
        samples["pipeline"].append((t3 - t0) * 1e3)
        if det.gpu_ms is not None:
            gpu.append(det.gpu_ms)
        i += 1
    if gpu:
        samples["inference_gpu"] = gpu
    return samples


def run(args: BenchmarkArgs) -> BenchmarkResult:
    from ..inference.stats import fps, stage_stats

    meta, meta_dir = load_step_inputs(args.model, args.meta)
    if args.backend != "torch":
        check_backend(meta, args.backend)
    if args.backend == "torch" and not args.model.endswith((".pth", ".pt")):
        raise StepError("InvalidInput", "--backend torch benchmarks the PyTorch checkpoint: --model must be the .pth")
    if args.warmup < 0 or args.iterations < 1:
        raise StepError("InvalidInput", f"--warmup must be >= 0 and --iterations >= 1 "
                                        f"(got {args.warmup}, {args.iterations})")
    if args.duration is not None and args.duration <= 0:
        raise StepError("InvalidInput", f"--duration must be > 0, got {args.duration}")
    if args.threads is not None and args.threads < 1:
        raise StepError("InvalidInput", f"--threads must be >= 1, got {args.threads}")
    images, images_desc = load_images(args.images)

    if args.threads:
        import cv2
        cv2.setNumThreads(args.threads)
    build = read_build_info(args.model)
    precision = "fp32" if args.backend == "torch" else build.get(
        "precision", "fp32" if args.backend == "onnxruntime" else "unknown")
    det = open_detector(args.backend, args.model, meta, meta_dir, threads=args.threads, device=args.device,
                        precision=precision)

    t0 = time.monotonic()
    samples = run_loop(det, images, args.warmup, args.iterations, args.duration)
    wall = time.monotonic() - t0
    stats = stage_stats(samples)
    result_fps = fps(samples["pipeline"])

    peak_rss = peak_rss_mib()
    peak_device = None
    gpu = getattr(getattr(det, "runner", None), "cuda", None)
    gpu_name = gpu.device_name() if gpu else None
    if args.backend == "torch" and args.device == "cuda":
        import torch
        gpu_name = torch.cuda.get_device_name(0)
        peak_device = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    dev = device_info(gpu_name)
    vers = versions({"onnxruntime": "onnxruntime", "tensorrt": "tensorrt", "torch": "torch",
                     "openvino": "openvino"}[args.backend], "opencv-python", "numpy")
    threads = det.threads or (os.cpu_count() if args.backend == "onnxruntime" else None)
    provenance = {
        "backend": args.backend, "precision": precision, "device": dev,
        "warmup": args.warmup, "iterations": len(samples["pipeline"]),
        "duration_s": args.duration, "images": images_desc,
        "input_shape": det.input_shape(), "input_dtype": meta["input"]["dtype"],
        "input_padding": det.input_padding(),
        "threads": threads, "gpu_timing": "inference_gpu" in samples,
        "timer": "time.perf_counter" + (" + CUDA events" if "inference_gpu" in samples else ""),
        "versions": vers, **det.provenance(),
        "peak_rss_mib": peak_rss, "peak_device_mib": peak_device, "memory": MEMORY_PROVENANCE,
    }
    if os.environ.get(ENV_NODE_NAME):  # a fleet's Job, pinned to its node: which node measured it
        provenance["node"] = os.environ[ENV_NODE_NAME]
    if args.backend in ("onnxruntime", "openvino") and precision == "int8":
        details = build.get("details") or {}
        provenance.update({"calibration_images": details.get("calibration_images"),
                           "calibration_method": details.get("method")})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, REPORT), "w", encoding="utf-8") as fh:
        json.dump({"metrics": {**stats, "fps": result_fps, "peak_rss_mib": peak_rss,
                               "peak_device_mib": peak_device}, "provenance": provenance, "wall_seconds": round(wall, 3),
                   "samples_ms": {k: [round(v, 4) for v in vals] for k, vals in samples.items()}}, fh)
    p = stats["pipeline"]
    return BenchmarkResult(
        message=(f"{args.backend} {precision}: pipeline p50 {p['p50_ms']:.2f} ms (pre "
                 f"{stats['preprocess']['p50_ms']:.2f} + infer {stats['inference']['p50_ms']:.2f} + post "
                 f"{stats['postprocess']['p50_ms']:.2f}), {result_fps:.1f} fps over "
                 f"{len(samples['pipeline'])} iterations, peak RSS {peak_rss} MiB"),
        latency=stats, fps=result_fps, peak_rss_mib=peak_rss, peak_device_mib=peak_device, artifacts={"report": REPORT}, provenance=provenance)


main = entry_point(BenchmarkArgs, run)

if __name__ == "__main__":
    sys.exit(main())
