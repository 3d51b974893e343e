"""The OpenVINO backend (CPU edge devices): build the IR from the exported ONNX, run it.

Build (on the target device, like the other backends):
- fp32 / bf16: the ONNX graph converted to OpenVINO IR (end2end.xml + end2end.bin, fp32
  weights). `precision` is what the CPU plugin is asked to compute in: its inference
  precision hint, set when the model is compiled. bf16 runs on CPUs with AVX512-BF16 or AMX;
  elsewhere the plugin computes in fp32 -- the build and every later step record the
  precision the plugin reports after compiling (`precision_run`).
- fp16: the IR with fp16-compressed weights and the f16 hint (computed in fp16 on CPUs with
  AVX512-FP16 / AMX-FP16, else the plugin decompresses to fp32 or bf16 and says so).
- int8: NNCF post-training quantization (mixed preset: symmetric weights, asymmetric
  activations) on the IR with the calibration images; the detection decode/NMS tail (every
  op from which no convolution is reachable) is left in float through NNCF's ignored scope.
  The int8 model is then run with the plugin's default hint for the remaining float ops.

The detector is the onnxruntime one's pipeline (mmdeploy's dets/labels layout) on an
ov.CompiledModel; the Jetson image has no openvino: BackendUnavailable names the image.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from edgetune_contract.meta import LAYOUT_MMDEPLOY

from .detectors import Detector, _postprocess_mmdeploy
from .preprocess import Preprocessor

XML_FILE = "end2end.xml"
HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}
RUN_NAMES = {"f32": "fp32", "f16": "fp16", "bf16": "bf16"}
RANGE_ESTIMATORS = {"minmax": "MINMAX", "percentile": "MEAN_QUANTILE", "entropy": "HISTOGRAM"}
ANCHOR_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")


class OpenVinoUnavailable(ImportError):
    """openvino is not installed where the step runs."""


def import_openvino():
    try:
        import openvino as ov
    except ImportError as exc:
        from edgetune_contract.names import ENV_IMAGE

        image = f"image {os.environ[ENV_IMAGE]}" if os.environ.get(ENV_IMAGE) else "this image"
        raise OpenVinoUnavailable(
            f"backend openvino is not available in {image} ({exc}; the Jetson image has no OpenVINO): run it "
            "on a CPU edge node with the cpu-edge image (images/cpu-edge), or use onnxruntime/tensorrt") from None
    return ov


def float_tail(model) -> list[str]:
    """Friendly names of the ops from which no convolution is reachable (decode + NMS)."""
    ops = list(model.get_ordered_ops())  # topologically sorted
    index = {op.get_friendly_name(): i for i, op in enumerate(ops)}
    reaches = [False] * len(ops)
    for i in range(len(ops) - 1, -1, -1):
        op = ops[i]
        reaches[i] = op.get_type_name() in ANCHOR_TYPES or any(
            reaches[index.get(t.get_node().get_friendly_name(), i)]
            for out in op.outputs() for t in out.get_target_inputs())
    skip = ("Parameter", "Result", "Constant")
    return [op.get_friendly_name() for i, op in enumerate(ops) if not reaches[i] and op.get_type_name() not in skip]


def compile_model(core, model, precision: str, threads: int | None = None):
    """ov.CompiledModel on CPU with the precision hint; (compiled, precision actually run)."""
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if precision in HINTS:
        config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(model, "CPU", config)
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    name = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
    ran = RUN_NAMES.get(name, name)
    if precision == "int8":
        ran = f"int8 (float ops {ran})"
    return compiled, ran


def build_openvino(onnx_path: str, out_dir: str, precision: str,
                   batches: Callable[[], Iterable[np.ndarray]] | None = None,
                   method: str = "minmax", calibration_images: int = 0) -> tuple[str, dict[str, Any]]:
    """The IR for `precision` in out_dir/end2end.xml (+ .bin); (path, build details)."""
    ov = import_openvino()
    t0 = time.monotonic()
    model = ov.convert_model(onnx_path)
    details: dict[str, Any] = {"openvino": ov.__version__, "device": "CPU"}
    if precision == "int8":
        import logging

        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        nncf.set_log_level(logging.WARNING)
        tail = float_tail(model)
        data = list(batches()) if batches else []
        if not data:
            raise ValueError("no calibration image could be read")
        estimator = RANGE_ESTIMATORS[method]
        model = nncf.quantize(
            model, nncf.Dataset(data), preset=nncf.QuantizationPreset.MIXED, subset_size=len(data),
            ignored_scope=nncf.IgnoredScope(names=tail, validate=False),
            advanced_parameters=AdvancedQuantizationParameters(
                activations_range_estimator_params=getattr(RangeEstimatorParametersSet, estimator)))
        details.update({"quantizer": f"nncf {nncf.__version__} post-training (preset mixed)",
                        "method": method, "range_estimator": estimator, "calibration_images": len(data),
                        "float_tail_ops": len(tail)})
    target = os.path.join(out_dir, XML_FILE)
    ov.save_model(model, target, compress_to_fp16=precision == "fp16")
    _, ran = compile_model(ov.Core(), target, precision)  # what this CPU runs: into the build info
    details.update({"seconds": round(time.monotonic() - t0, 3), "precision_run": ran,
                    "weights": "fp16" if precision == "fp16" else ("int8" if precision == "int8" else "fp32")})
    return target, details


class OpenVinoDetector(Detector):
    backend = "openvino"

    def __init__(self, model_path: str, meta: Mapping[str, Any], threads: int | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(meta)
        ov = import_openvino()
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"model file {model_path} does not exist")
        if meta["outputs"]["layout"] != LAYOUT_MMDEPLOY:
            raise ValueError("this model was exported for TensorRT (EfficientNMS_TRT); export with "
                             "--backend openvino or onnxruntime to run it on OpenVINO")
        self.core = ov.Core()
        self.precision = precision
        self.compiled, self.precision_run = compile_model(self.core, model_path, precision, threads)
        self.request = self.compiled.create_infer_request()
        self.threads = int(threads) if threads else None
        inp = self.compiled.inputs[0]
        dtype = "uint8" if inp.get_element_type().get_type_name() == "u8" else "float32"
        self.pre = Preprocessor(self.letterbox, dtype, pad_to_stride=self.rect_stride())
        self.outputs = [self.compiled.output(i) for i in range(len(self.compiled.outputs))]
        self.version = ov.__version__

    def infer(self, x: np.ndarray):
        res = self.request.infer({0: x})
        return [res[o] for o in self.outputs]

    def postprocess(self, raw, info):
        return _postprocess_mmdeploy(raw[0], raw[1], info)

    def provenance(self) -> dict[str, Any]:
        return {"openvino_device": "CPU", "precision_run": self.precision_run,
                "inference_threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")) or "default"}
