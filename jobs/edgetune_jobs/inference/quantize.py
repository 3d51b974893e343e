"""int8 post-training quantization of the exported detector for CPU backends.

onnxruntime: static QDQ quantization (onnxruntime.quantization) --
    1. the opset is raised to 13 where it is lower (DequantizeLinear with a per-channel `axis`
       needs 13), then quant_pre_process (symbolic shape inference + graph optimisation);
    2. weights int8 per channel (symmetric); activations uint8 on x86-64 (U8S8: onnxruntime's
       x86 CPU provider fuses DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv only
       for uint8 activations -- with int8 ones it ran 76 of 86 convolutions as dequantize + fp32
       Conv, 1.8x slower than fp32 on an AVX512-VNNI Xeon; without VNNI the weights use
       reduce_range, 7 bits, against VPMADDUBSW saturation), int8 elsewhere (S8S8, ARM);
       ranges from the calibration images with MinMax, Entropy or Percentile;
    3. the detection *tail* stays float: every node downstream of the last convolutions --
       the sigmoid of the class scores, the box decoding against the priors, the concatenations
       of boxes and scores and mmdeploy's NMS. Quantizing it is the known failure of
       YOLO-style heads (one int8 scale for pixel coordinates and [0, 1] scores rounds the
       scores to zero). The tail is found structurally, not by node names: a node is in the
       tail when no Conv is reachable from it. The tail is cut off, the body alone calibrated and
       quantized (so no calibration statistics of NMS outputs, whose length differs per image),
       and the tail re-attached unchanged.

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


def split_tail(model, tail: list[str]):
    """(the model without its tail -- whose outputs are the tensors the tail reads --, the tail's
    nodes, the initializers they read). The body alone is calibrated and quantized: the tail's
    tensors (NMS outputs of a different length per image) are never calibrated."""
    import onnx
    from onnx import helper

    names = set(tail)
    graph = model.graph
    body_nodes = [n for n in graph.node if n.name not in names]
    tail_nodes = [n for n in graph.node if n.name in names]
    produced = {o for n in body_nodes for o in n.output}
    boundary = list(dict.fromkeys(t for n in tail_nodes for t in n.input if t in produced))
    graph_outputs = {o.name for o in graph.output}
    boundary += [o for o in graph_outputs if o in produced and o not in boundary]
    types = {v.name: v for v in list(graph.value_info) + list(graph.output)}
    outputs = [types[t] if t in types else helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None)
               for t in boundary]
    used_by_body = {t for n in body_nodes for t in n.input}
    used_by_tail = {t for n in tail_nodes for t in n.input}
    body_graph = helper.make_graph(body_nodes, graph.name + "-body", list(graph.input), outputs,
                                   [i for i in graph.initializer if i.name in used_by_body],
                                   value_info=[v for v in graph.value_info if v.name not in boundary])
    body = helper.make_model(body_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    tail_inits = [i for i in graph.initializer if i.name in used_by_tail]
    return body, tail_nodes, tail_inits


def attach_tail(qbody, tail_nodes, tail_inits, outputs):
    """The quantized body with the float tail re-attached and the original graph outputs."""
    graph = qbody.graph
    have = {i.name for i in graph.initializer}
    graph.initializer.extend(i for i in tail_inits if i.name not in have)
    graph.node.extend(tail_nodes)
    del graph.output[:]
    graph.output.extend(outputs)
    return qbody


def activation_scheme(machine: str | None = None, cpu_flags: str | None = None) -> tuple[str, bool]:
    """(activation type, reduce_range) for this CPU: ("uint8", not VNNI) on x86-64, ("int8", False)
    elsewhere."""
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return "int8", False
    if cpu_flags is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                cpu_flags = fh.read()
        except OSError:
            cpu_flags = ""
    vnni = any(f in cpu_flags.split() for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    return "uint8", not vnni


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
        body, tail_nodes, tail_inits = split_tail(pre_model, tail)
        body_path = os.path.join(tmp, "body.onnx")
        onnx.save(body, body_path)
        reader = ImageReader(input_name, batches)
        act, reduce_range = activation_scheme()
        extra = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if method == "percentile":
            extra["CalibPercentile"] = 99.999
        qbody = os.path.join(tmp, "qbody.onnx")
        used = method

        def quantize(calibration: str) -> None:
            reader.rewind()
            quantize_static(body_path, qbody, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, reduce_range=reduce_range,
                            calibrate_method=methods[calibration], extra_options=extra)
        try:
            quantize(method)
        except ValueError as exc:
            # onnxruntime's histogram (entropy, percentile) cannot bin a tensor whose range is
            # (almost) zero -- a dead channel of an undertrained model: MinMax, said so
            if method == "minmax" or "bins" not in str(exc):
                raise
            used = f"minmax (asked {method}; onnxruntime's histogram failed: {exc})"
            reader.count = 0
            quantize("minmax")
        quantized = attach_tail(onnx.load(qbody), tail_nodes, tail_inits, pre_model.graph.output)
        onnx.checker.check_model(quantized)
        onnx.save(quantized, target)
    if reader.count == 0:
        raise ValueError("no calibration image could be read")
    ops = [n.op_type for n in quantized.graph.node]
    return {"seconds": round(time.monotonic() - t0, 3), "method": used, "format": "QDQ",
            "weights": "int8 per-channel symmetric" + (" (7-bit reduce_range)" if reduce_range else ""),
            "activations": f"{act} asymmetric",
            "opset": opset, "preprocess": preprocess, "calibration_batches": reader.count,
            "float_tail_nodes": len(tail), "dequantize_nodes": ops.count("DequantizeLinear"),
            "onnxruntime": onnxruntime.__version__}
