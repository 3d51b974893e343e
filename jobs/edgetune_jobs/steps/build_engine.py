"""build-engine: the exported ONNX -> what the target device runs.

    python -m edgetune_jobs.steps.build_engine --out DIR --onnx PATH --meta PATH
        --backend tensorrt|onnxruntime|openvino --precision fp32|fp16|bf16|int8
        [--calibration-images DIR] [--calibration-max-images N] [--calibration-method M] [--workspace-mib N]      (edgetune_contract.args.BuildEngineArgs)

- tensorrt (runs on the device itself: an engine only runs on the GPU and TensorRT version
  that built it): TensorRT's ONNX parser + builder through trt_compat (8.5 and 10.x);
  fp16 sets the FP16 flag; int8 sets INT8 (+FP16 fallback) with an IInt8EntropyCalibrator2
  fed by letterboxed images from --calibration-images (the cache is kept next to the engine).
  Writes end2end.engine.
- onnxruntime fp32: the "build" is onnxruntime's offline graph optimisation
  (ORT_ENABLE_EXTENDED: constant folding, redundant-node elimination, Conv/BN/activation
  fusions; the layout transforms of ENABLE_ALL are hardware-specific and stay online) saved
  as end2end.onnx. onnxruntime int8: static QDQ quantization with the calibration images
  (inference.quantize: per-channel weights, --calibration-method minmax|entropy|percentile,
  the decode/NMS tail in float, opset raised to 13). No fp16: the CPU provider has no fp16
  kernels for most ops.
- openvino: the IR (end2end.xml/.bin) for fp32, fp16, bf16 (the CPU plugin's inference
  precision; what this CPU really runs is recorded as precision_run) or int8 (NNCF
  post-training quantization), inference.openvino_runtime.

int8 needs --calibration-images: a folder without a readable image is InvalidInput naming it.
All write build.json next to the model (precision, precision_run, versions, device,
calibration) for verify/benchmark.
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

from edgetune_contract.args import BACKEND_PRECISIONS, BuildEngineArgs
from edgetune_contract.results import BuildEngineResult

from ..cli import StepError, entry_point
from ..inference.device import device_info, versions
from .inputs import BUILD_INFO, check_backend, check_onnx, load_step_inputs, readable_images

ENGINE_FILE = "end2end.engine"
ORT_FILE = "end2end.onnx"


def _check(args: BuildEngineArgs, meta: dict) -> list[str]:
    """Refuse what cannot be built; the calibration images (int8), each one readable."""
    check_backend(meta, args.backend, what=args.onnx)
    allowed = BACKEND_PRECISIONS[args.backend]
    if args.precision not in allowed:
        raise StepError("InvalidInput", f"{args.backend} builds {', '.join(allowed)}; got {args.precision}")
    if args.workspace_mib < 16:
        raise StepError("InvalidInput", f"--workspace-mib must be >= 16, got {args.workspace_mib}")
    if args.precision != "int8":
        return []
    if not args.calibration_images:
        raise StepError("InvalidInput", "--precision int8 needs --calibration-images")
    if args.calibration_max_images < 1:
        raise StepError("InvalidInput", f"--calibration-max-images must be >= 1, got {args.calibration_max_images}")
    return readable_images(args.calibration_images, args.calibration_max_images)


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


def build_tensorrt(args: BuildEngineArgs, meta: dict, files: list[str]) -> tuple[str, dict[str, Any]]:
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
    if args.precision == "int8":
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


def build_cpu(args: BuildEngineArgs, meta: dict, files: list[str]) -> tuple[str, dict[str, Any]]:
    """onnxruntime (fp32: offline optimisation; int8: static QDQ) or OpenVINO (IR)."""
    batches = lambda: calibration_batches(files, meta)  # noqa: E731
    try:
        if args.backend == "openvino":
            from ..inference.openvino_runtime import OpenVinoUnavailable, build_openvino

            try:
                return build_openvino(args.onnx, args.out, args.precision, batches, args.calibration_method,
                                      len(files))
            except OpenVinoUnavailable as exc:
                raise StepError("BackendUnavailable", str(exc)) from None
        if args.precision == "int8":
            from ..inference.quantize import quantize_onnxruntime

            target = os.path.join(args.out, ORT_FILE)
            info = quantize_onnxruntime(args.onnx, target, batches, args.calibration_method)
            return target, {**info, "calibration_images": len(files)}
        return build_onnxruntime(args.onnx, args.out)
    except StepError:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtimes raise their own exception types
        raise StepError("BuildFailed", f"{type(exc).__name__}: {exc}") from None


def run(args: BuildEngineArgs) -> BuildEngineResult:
    meta, _ = load_step_inputs(args.onnx, args.meta, what="ONNX file")
    check_onnx(args.onnx)
    files = _check(args, meta)
    os.makedirs(args.out, exist_ok=True)
    if args.backend in ("onnxruntime", "openvino"):
        target, info = build_cpu(args, meta, files)
        vers = versions(*(("openvino", "nncf") if args.backend == "openvino" else ("onnxruntime", "onnx")), "numpy")
        artifacts = {"model": os.path.basename(target)}
        dev = device_info()
    else:
        target, info = build_tensorrt(args, meta, files)
        vers = versions("tensorrt", "numpy")
        artifacts = {"engine": ENGINE_FILE}
        dev = device_info(info.get("gpu"))
    size = model_bytes(target)
    build = {"backend": args.backend, "precision": args.precision, "model": os.path.basename(target),
             "source_onnx": os.path.abspath(args.onnx), "meta": os.path.abspath(args.meta),
             "engine_bytes": size, "build_seconds": info["seconds"], "device": dev,
             "versions": vers, "details": info}
    if info.get("precision_run"):
        build["precision_run"] = info["precision_run"]
    with open(os.path.join(args.out, BUILD_INFO), "w", encoding="utf-8") as fh:
        json.dump(build, fh, indent=2)
    artifacts["build_info"] = BUILD_INFO
    calibration = {}
    if args.precision == "int8":
        calibration = {"calibration_images": len(files),
                       "calibration_method": "entropy (TensorRT IInt8EntropyCalibrator2)"
                       if args.backend == "tensorrt" else info.get("method", args.calibration_method)}
    run_as = f", runs as {info['precision_run']}" if info.get("precision_run") not in (None, args.precision) else ""
    return BuildEngineResult(
        message=f"built {args.backend} {args.precision} model ({size / 1e6:.1f} MB) in {info['seconds']:.1f} s{run_as}",
        build_seconds=info["seconds"], engine_bytes=size, artifacts=artifacts,
        provenance={"backend": args.backend, "precision": args.precision, "device": dev,
                    "versions": vers, **calibration,
                    **({"precision_run": info["precision_run"]} if info.get("precision_run") else {})})


def model_bytes(path: str) -> int:
    """The model's size on disk (an OpenVINO IR is the .xml and its .bin)."""
    weights = os.path.splitext(path)[0] + ".bin"
    return os.path.getsize(path) + (os.path.getsize(weights) if path.endswith(".xml") and
                                    os.path.isfile(weights) else 0)


main = entry_point(BuildEngineArgs, run)

if __name__ == "__main__":
    sys.exit(main())
