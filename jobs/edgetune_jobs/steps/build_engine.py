"""build-engine: the exported ONNX -> what the target device runs.

    python -m edgetune_jobs.steps.build_engine --out DIR --onnx PATH --meta PATH
        --backend tensorrt|onnxruntime --precision fp32|fp16|int8 [--calibration-images DIR]
        [--workspace-mib N]  [--calibration-max-images N]      (edgetune_contract.args.BuildEngineArgs)

- tensorrt (runs on the device itself: an engine only runs on the GPU and TensorRT version
  that built it): TensorRT's ONNX parser + builder through trt_compat (8.5 and 10.x);
  fp16 sets the FP16 flag; int8 sets INT8 (+FP16 fallback) with an IInt8EntropyCalibrator2
  fed by letterboxed images from --calibration-images (the cache is kept next to the engine).
  Writes end2end.engine.
- onnxruntime: the "build" is onnxruntime's offline graph optimisation (ORT_ENABLE_EXTENDED:
  constant folding, redundant-node elimination, Conv/BN/activation fusions; the layout
  transforms of ENABLE_ALL are hardware-specific and stay online) saved as end2end.onnx.
  fp32 only: onnxruntime's CPU provider has no fp16 kernels for most ops and int8 would be
  a separate QDQ quantisation flow, so other precisions are refused with that reason.

Both write build.json next to the model (precision, versions, device) for verify/benchmark.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Iterator

import numpy as np

from edgetune_contract.args import BuildEngineArgs
from edgetune_contract.results import BuildEngineResult

from ..cli import StepError, entry_point
from ..inference.device import device_info, versions
from .inputs import BUILD_INFO, IMAGE_EXTS, list_images, load_step_inputs

ENGINE_FILE = "end2end.engine"
ORT_FILE = "end2end.onnx"


def _check(args: BuildEngineArgs, meta: dict) -> None:
    if meta["backend"] != args.backend:
        raise StepError("InvalidInput", f"{args.onnx} was exported for {meta['backend']}, not "
                                        f"{args.backend}; export again with --backend {args.backend}")
    if args.backend == "onnxruntime" and args.precision != "fp32":
        raise StepError("InvalidInput", f"onnxruntime builds fp32 only (its CPU provider has no fp16 "
                                        f"kernels and int8 needs a QDQ quantisation flow); got "
                                        f"{args.precision} - use --backend tensorrt for fp16/int8")
    if args.precision == "int8":
        if not args.calibration_images:
            raise StepError("InvalidInput", "--precision int8 needs --calibration-images")
        if not os.path.isdir(args.calibration_images):
            raise StepError("DatasetNotFound", f"calibration folder {args.calibration_images} does not exist")
        if not list_images(args.calibration_images, 1):
            raise StepError("DatasetNotFound", f"no images ({', '.join(IMAGE_EXTS)}) under {args.calibration_images}")
    if args.workspace_mib < 16:
        raise StepError("InvalidInput", f"--workspace-mib must be >= 16, got {args.workspace_mib}")


def build_onnxruntime(onnx_path: str, out_dir: str) -> tuple[str, dict[str, Any]]:
    import onnxruntime as ort

    target = os.path.join(out_dir, ORT_FILE)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_model = os.path.join(tmp, ORT_FILE)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = tmp_model
        so.log_severity_level = 3
        ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        shutil.move(tmp_model, target)  # onnx_path may be target itself
    return target, {"seconds": round(time.monotonic() - t0, 3),
                    "optimization": "ORT_ENABLE_EXTENDED (offline); ORT_ENABLE_ALL online",
                    "onnxruntime": ort.__version__}


def calibration_batches(files: list[str], meta: dict) -> Iterator[np.ndarray]:
    from ..inference.preprocess import Letterbox, Preprocessor, load_image

    pre = Preprocessor(Letterbox.from_meta(meta["letterbox"]), meta["input"]["dtype"])
    for f in files:
        x, _ = pre(load_image(f))
        yield x.copy()


def build_tensorrt(args: BuildEngineArgs, meta: dict) -> tuple[str, dict[str, Any]]:
    from ..inference import trt_compat

    try:
        trt_compat.import_tensorrt()
    except trt_compat.TensorRTUnavailable as exc:
        raise StepError("BackendUnavailable", str(exc)) from None
    inp = meta["input"]
    profile = None
    if inp.get("dynamic"):
        profile = {inp["name"]: (inp["min_shape"], inp["opt_shape"], inp["max_shape"])}
    calibration = None
    files: list[str] = []
    if args.precision == "int8":
        files = list_images(args.calibration_images, args.calibration_max_images)
        calibration = lambda: calibration_batches(files, meta)  # noqa: E731
    target = os.path.join(args.out, ENGINE_FILE)
    try:
        plan, info = trt_compat.build_engine(
            args.onnx, precision=args.precision, workspace_bytes=args.workspace_mib << 20,
            profile=profile, calibration=calibration,
            calibration_cache=os.path.join(args.out, "calibration.cache") if calibration else "")
    except (RuntimeError, ValueError) as exc:
        raise StepError("BuildFailed", str(exc)) from None
    with open(target, "wb") as fh:
        fh.write(plan)
    device = None
    try:
        device = trt_compat.cuda_api().device_name()
    except trt_compat.TensorRTUnavailable:
        pass
    return target, {"seconds": info.seconds, "tensorrt": info.tensorrt, "gpu": device,
                    "fp16_native": info.fp16_native, "int8_native": info.int8_native,
                    "calibration_images": len(files), "calibration_batches": info.calibration_batches,
                    "workspace_mib": args.workspace_mib}


def run(args: BuildEngineArgs) -> BuildEngineResult:
    meta, _ = load_step_inputs(args.onnx, args.meta, what="ONNX file")
    _check(args, meta)
    os.makedirs(args.out, exist_ok=True)
    if args.backend == "onnxruntime":
        try:
            target, info = build_onnxruntime(args.onnx, args.out)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise StepError("BuildFailed", f"{type(exc).__name__}: {exc}") from None
        vers = versions("onnxruntime", "onnx", "numpy")
        artifacts = {"model": ORT_FILE}
        dev = device_info()
    else:
        target, info = build_tensorrt(args, meta)
        vers = versions("tensorrt", "numpy")
        artifacts = {"engine": ENGINE_FILE}
        dev = device_info(info.get("gpu"))
    size = os.path.getsize(target)
    build = {"backend": args.backend, "precision": args.precision, "model": os.path.basename(target),
             "source_onnx": os.path.abspath(args.onnx), "meta": os.path.abspath(args.meta),
             "engine_bytes": size, "build_seconds": info["seconds"], "device": dev,
             "versions": vers, "details": info}
    with open(os.path.join(args.out, BUILD_INFO), "w", encoding="utf-8") as fh:
        json.dump(build, fh, indent=2)
    artifacts["build_info"] = BUILD_INFO
    return BuildEngineResult(
        message=f"built {args.backend} {args.precision} model ({size / 1e6:.1f} MB) in {info['seconds']:.1f} s",
        build_seconds=info["seconds"], engine_bytes=size, artifacts=artifacts,
        provenance={"backend": args.backend, "precision": args.precision, "device": dev,
                    "versions": vers,
                    **({"calibration_images": info.get("calibration_images")} if args.precision == "int8" else {})})


main = entry_point(BuildEngineArgs, run)

if __name__ == "__main__":
    sys.exit(main())
