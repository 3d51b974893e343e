"""int8 post-training quantization of the exported detector for CPU backends.

onnxruntime: static QDQ quantization (onnxruntime.quantization) --
    1. the opset is raised to 13 where it is lower (DequantizeLinear with a per-channel `axis`
       needs 13), then quant_pre_process (symbolic shape inference + graph optimisation);
    2. weights int8 per channel (symmetric), activations int8 (S8S8, the QDQ form onnxruntime's
       CPU kernels fuse into QLinearConv on AVX512-VNNI / AMX), ranges from the calibration
       images with MinMax, Entropy or Percentile;
    3. the detection *tail* stays float: every node downstream of the last convolutions --
       the sigmoid of the class scores, the box decoding against the priors, the concatenations
       of boxes and scores and mmdeploy's NMS. Quantizing it is the known failure of
       YOLO-style heads (one int8 scale for pixel coordinates and [0, 1] scores rounds the
       scores to zero). The tail is found structurally, not by node names: a node is in the
       tail when no Conv is reachable from it.

OpenVINO int8: NNCF's post-training quantization (nncf.quantize, mixed preset) on the OpenVINO
model, with the same calibration images and the same tail excluded (`ignored_scope`), in
openvino_runtime.build_openvino.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Callable, Iterable, Iterator

import numpy as np

QDQ_OPSET = 13
ANCHOR_OPS = ("Conv", "ConvTranspose")


def float_tail(model) -> list[str]:
    """Names of the nodes from which no Conv is reachable (the decode/NMS tail), in graph
    order. Unnamed nodes are given names first (quantizers exclude nodes by name)."""
    graph = model.graph
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(graph.node):
        for t in node.input:
            if t:
                consumers.setdefault(t, []).append(i)
    reaches = [False] * len(graph.node)  # a Conv is reachable from this node (or it is one)
    # nodes are topologically sorted in a valid ONNX graph: walk backwards
    for i in range(len(graph.node) - 1, -1, -1):
        node = graph.node[i]
        if node.op_type in ANCHOR_OPS:
            reaches[i] = True
            continue
        reaches[i] = any(reaches[j] for t in node.output for j in consumers.get(t, ()))
    if not any(node.op_type in ANCHOR_OPS for node in graph.node):
        raise ValueError("the model has no convolution: nothing to quantize")
    return [node.name for i, node in enumerate(graph.node) if not reaches[i]]


class ImageReader:
    """onnxruntime's CalibrationDataReader over preprocessed calibration images."""

    def __init__(self, input_name: str, batches: Callable[[], Iterable[np.ndarray]]):
        self.input_name = input_name
        self._make = batches
        self._it: Iterator[np.ndarray] | None = None
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self._make())
        x = next(self._it, None)
        if x is None:
            return None
        self.count += 1
        return {self.input_name: x}

    def rewind(self) -> None:
        self._it = None


def _upgrade_opset(model, opset: int):
    import onnx
    from onnx import version_converter

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current >= opset:
        return model, current
    upgraded = version_converter.convert_version(model, opset)
    onnx.checker.check_model(upgraded)
    return upgraded, opset


def quantize_onnxruntime(onnx_path: str, target: str, batches: Callable[[], Iterable[np.ndarray]],
                         method: str = "minmax") -> dict[str, Any]:
    """Static QDQ int8 of onnx_path into target (see the module doc). Returns what was done."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(methods)}")
    t0 = time.monotonic()
    model = onnx.load(onnx_path)
    input_name = model.graph.input[0].name
    model, opset = _upgrade_opset(model, QDQ_OPSET)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(target))) as tmp:
        raw = os.path.join(tmp, "opset.onnx")
        onnx.save(model, raw)
        pre = os.path.join(tmp, "pre.onnx")
        preprocess = "quant_pre_process (symbolic shape inference + optimisation)"
        try:
            quant_pre_process(raw, pre, skip_symbolic_shape=False)
        except Exception:  # noqa: BLE001 - symbolic shape inference cannot type every NMS graph
            quant_pre_process(raw, pre, skip_symbolic_shape=True)
            preprocess = "quant_pre_process (onnx shape inference + optimisation)"
        pre_model = onnx.load(pre)
        tail = float_tail(pre_model)
        onnx.save(pre_model, pre)  # with the names float_tail gave unnamed nodes
        reader = ImageReader(input_name, batches)
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        quantize_static(pre, target, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=tail, calibrate_method=methods[method], extra_options=extra)
    if reader.count == 0:
        raise ValueError("no calibration image could be read")
    quantized = onnx.load(target, load_external_data=False)
    ops = [n.op_type for n in quantized.graph.node]
    return {"seconds": round(time.monotonic() - t0, 3), "method": method, "format": "QDQ",
            "weights": "int8 per-channel symmetric", "activations": "int8 asymmetric",
            "opset": opset, "preprocess": preprocess, "calibration_batches": reader.count,
            "float_tail_nodes": len(tail), "dequantize_nodes": ops.count("DequantizeLinear"),
            "onnxruntime": onnxruntime.__version__}
