"""ONNX graph edits for the exported detector (needs only `onnx` and `numpy`).

Two edits, both plain `onnx.helper` rewrites so they run on the x86 export node and are
unit-testable without torch or TensorRT:

- `fold_preprocess`: puts the CPU preprocessing the mmdeploy SDK does per image (cast to
  float, HWC->CHW, optional BGR->RGB, (x - mean) / std) into the graph, so the caller only
  letterboxes into a preallocated uint8 (or float) NHWC buffer.
- `append_efficient_nms`: appends TensorRT's built-in `EfficientNMS_TRT` plugin (shipped in
  libnvinfer_plugin since TensorRT 8.0; no custom plugin library to compile on the device)
  after a graph that ends in decoded boxes [B, N, 4] (x1, y1, x2, y2) and per-class scores
  [B, N, C].

`strip_efficient_nms` undoes the second edit (the pre-NMS graph, runnable by onnxruntime),
and `efficient_nms_reference` is a numpy model of the plugin's semantics, used to check the
TensorRT-target graph end to end on a CPU.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NMS_OP = "EfficientNMS_TRT"
# The domain the TensorRT ONNX parser accepts for plugin nodes (it looks plugins up by
# op_type and ignores the domain); a non-default domain keeps onnx.checker happy, since
# the checker only validates ops of the domains it has schemas for.
NMS_DOMAIN = "TRT"
NMS_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")

_DTYPES = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}


# --- small helpers -----------------------------------------------------------------------

def _value_info(model: onnx.ModelProto, name: str) -> onnx.ValueInfoProto | None:
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name:
            return vi
    return None


def tensor_shape(model: onnx.ModelProto, name: str) -> list[int | str | None]:
    """Dims of a graph input/output/value_info: ints, symbolic names, or None (unknown)."""
    vi = _value_info(model, name)
    if vi is None:
        raise KeyError(f"no tensor named {name!r} in the graph's inputs/outputs/value_info")
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return dims


def _unique(model: onnx.ModelProto, base: str) -> str:
    taken = {n for node in model.graph.node for n in list(node.input) + list(node.output)}
    taken |= {i.name for i in model.graph.initializer}
    taken |= {i.name for i in model.graph.input}
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _rename_consumers(model: onnx.ModelProto, old: str, new: str) -> int:
    count = 0
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
                count += 1
    for out in model.graph.output:
        if out.name == old:
            out.name = new
    return count


# --- preprocessing folded into the graph --------------------------------------------------

def fold_preprocess(
    model: onnx.ModelProto,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    bgr_to_rgb: bool,
    input_dtype: str = "uint8",
    input_name: str | None = None,
) -> onnx.ModelProto:
    """Replace the graph's NCHW float (normalised) input by an NHWC image input.

    The new input keeps the old name (so the graph's interface stays `input`), has shape
    [B, H, W, 3] (same B/H/W dims, static or symbolic, as the old [B, 3, H, W]) and dtype
    `input_dtype` ("uint8": 0..255 pixels as cv2 decodes them; "float32": the same values as
    float). Added nodes: [Cast] -> Transpose(0,3,1,2) -> [Gather(2,1,0) on C] -> Sub(mean)
    -> Div(std). mean/std are in the channel order the *model* sees (mmdet's convention:
    after the optional BGR->RGB swap).
    """
    if input_dtype not in _DTYPES:
        raise ValueError(f"input_dtype must be one of {sorted(_DTYPES)}, got {input_dtype!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("mean and std need 3 values (one per channel)")
    if any(float(s) == 0.0 for s in std):
        raise ValueError("std must not contain 0")
    model = _copy(model)
    graph = model.graph
    init_names = {i.name for i in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in init_names]
    if input_name is None:
        if len(real_inputs) != 1:
            raise ValueError(f"graph has {len(real_inputs)} inputs; name the image input")
        input_name = real_inputs[0].name
    old = next((i for i in real_inputs if i.name == input_name), None)
    if old is None:
        raise KeyError(f"graph has no input named {input_name!r}")
    if old.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ValueError(f"input {input_name!r} is not float32; already folded?")
    dims = list(old.type.tensor_type.shape.dim)
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise ValueError(f"input {input_name!r} is not [B, 3, H, W]")

    def _dim(d):
        return d.dim_value if d.HasField("dim_value") else (d.dim_param or None)

    b, _, h, w = (_dim(d) for d in dims)
    internal = _unique(model, f"{input_name}_normalized")
    _rename_consumers(model, input_name, internal)

    new_nodes: list[onnx.NodeProto] = []
    x = input_name
    if input_dtype != "float32":
        cast_out = _unique(model, f"{input_name}_f32")
        new_nodes.append(helper.make_node("Cast", [x], [cast_out], to=TensorProto.FLOAT,
                                          name="preprocess_cast"))
        x = cast_out
    nchw = _unique(model, f"{input_name}_nchw")
    new_nodes.append(helper.make_node("Transpose", [x], [nchw], perm=[0, 3, 1, 2],
                                      name="preprocess_hwc_to_chw"))
    x = nchw
    if bgr_to_rgb:
        idx = _unique(model, "preprocess_channel_order")
        graph.initializer.append(numpy_helper.from_array(np.array([2, 1, 0], np.int64), idx))
        rgb = _unique(model, f"{input_name}_rgb")
        new_nodes.append(helper.make_node("Gather", [x, idx], [rgb], axis=1,
                                          name="preprocess_bgr_to_rgb"))
        x = rgb
    mean_name = _unique(model, "preprocess_mean")
    std_name = _unique(model, "preprocess_std")
    graph.initializer.append(numpy_helper.from_array(
        np.asarray(mean, np.float32).reshape(1, 3, 1, 1), mean_name))
    graph.initializer.append(numpy_helper.from_array(
        np.asarray(std, np.float32).reshape(1, 3, 1, 1), std_name))
    centred = _unique(model, f"{input_name}_centred")
    new_nodes.append(helper.make_node("Sub", [x, mean_name], [centred], name="preprocess_sub_mean"))
    new_nodes.append(helper.make_node("Div", [centred, std_name], [internal], name="preprocess_div_std"))

    # the new nodes go first (the graph must stay topologically sorted)
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend(new_nodes + rest)

    new_input = helper.make_tensor_value_info(input_name, _DTYPES[input_dtype], [b, h, w, 3])
    for i, inp in enumerate(graph.input):
        if inp.name == input_name:
            graph.input.remove(inp)
            graph.input.insert(i, new_input)
            break
    return model


# --- EfficientNMS_TRT ---------------------------------------------------------------------

def efficient_nms_attributes(
    *,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    background_class: int = -1,
    score_activation: bool = False,
    box_coding: int = 0,
    class_agnostic: bool | None = None,
) -> dict:
    """The plugin's creator fields (TensorRT 8.x/10.x, plugin_version "1").

    box_coding 0 = BoxCorner (x1, y1, x2, y2); score_activation 0 = scores are already
    probabilities (mmdet applies the sigmoid in the head). class_agnostic is only emitted
    when set (older TensorRT 8.x builds do not know the field).
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    if int(max_output_boxes) < 1:
        raise ValueError(f"max_output_boxes must be >= 1, got {max_output_boxes}")
    if box_coding not in (0, 1):
        raise ValueError("box_coding must be 0 (corners) or 1 (center-size)")
    attrs = {
        "plugin_version": "1",
        "background_class": int(background_class),
        "max_output_boxes": int(max_output_boxes),
        "score_threshold": float(score_threshold),
        "iou_threshold": float(iou_threshold),
        "score_activation": int(bool(score_activation)),
        "box_coding": int(box_coding),
    }
    if class_agnostic is not None:
        attrs["class_agnostic"] = int(bool(class_agnostic))
    return attrs


def append_efficient_nms(
    model: onnx.ModelProto,
    *,
    boxes: str = "boxes",
    scores: str = "scores",
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    background_class: int = -1,
    score_activation: bool = False,
    class_agnostic: bool | None = None,
) -> onnx.ModelProto:
    """Append an EfficientNMS_TRT node; its four outputs become the graph's outputs.

    Outputs (TensorRT's layout): num_detections [B, 1] int32, detection_boxes [B, K, 4]
    float32 (input pixel coordinates, x1 y1 x2 y2), detection_scores [B, K] float32,
    detection_classes [B, K] int32, K = max_output_boxes; rows >= num_detections are padding.
    """
    model = _copy(model)
    graph = model.graph
    out_names = [o.name for o in graph.output]
    for name in (boxes, scores):
        if name not in out_names:
            raise KeyError(f"graph has no output {name!r} (outputs: {out_names})")
    bshape = tensor_shape(model, boxes)
    sshape = tensor_shape(model, scores)
    if len(bshape) != 3 or (isinstance(bshape[2], int) and bshape[2] != 4):
        raise ValueError(f"boxes must be [B, N, 4], got {bshape}")
    if len(sshape) != 3:
        raise ValueError(f"scores must be [B, N, C], got {sshape}")
    attrs = efficient_nms_attributes(
        score_threshold=score_threshold, iou_threshold=iou_threshold,
        max_output_boxes=max_output_boxes, background_class=background_class,
        score_activation=score_activation, class_agnostic=class_agnostic)
    node = helper.make_node(NMS_OP, [boxes, scores], list(NMS_OUTPUTS),
                            name="efficient_nms", domain=NMS_DOMAIN, **attrs)
    graph.node.append(node)
    batch = bshape[0] if bshape[0] is not None else "batch"
    k = int(max_output_boxes)
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info(NMS_OUTPUTS[0], TensorProto.INT32, [batch, 1]),
        helper.make_tensor_value_info(NMS_OUTPUTS[1], TensorProto.FLOAT, [batch, k, 4]),
        helper.make_tensor_value_info(NMS_OUTPUTS[2], TensorProto.FLOAT, [batch, k]),
        helper.make_tensor_value_info(NMS_OUTPUTS[3], TensorProto.INT32, [batch, k]),
    ])
    # boxes/scores are now intermediate: keep their shapes as value_info
    graph.value_info.extend([
        helper.make_tensor_value_info(boxes, TensorProto.FLOAT, bshape),
        helper.make_tensor_value_info(scores, TensorProto.FLOAT, sshape),
    ])
    if not any(op.domain == NMS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(NMS_DOMAIN, 1))
    return model


def find_nms_node(model: onnx.ModelProto) -> onnx.NodeProto | None:
    return next((n for n in model.graph.node if n.op_type == NMS_OP), None)


def nms_attributes(model: onnx.ModelProto) -> dict:
    """The attributes of the graph's EfficientNMS_TRT node, as Python values."""
    node = find_nms_node(model)
    if node is None:
        raise KeyError(f"graph has no {NMS_OP} node")
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def strip_efficient_nms(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph without its EfficientNMS_TRT node: outputs are its boxes/scores inputs."""
    model = _copy(model)
    node = find_nms_node(model)
    if node is None:
        raise KeyError(f"graph has no {NMS_OP} node")
    boxes, scores = node.input[0], node.input[1]
    graph = model.graph
    vis = {vi.name: vi for vi in graph.value_info}
    graph.node.remove(node)
    del graph.output[:]
    for name in (boxes, scores):
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(vis[name]) if name in vis else vi.CopyFrom(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        graph.output.append(vi)
    keep = [vi for vi in graph.value_info if vi.name not in (boxes, scores)]
    del graph.value_info[:]
    graph.value_info.extend(keep)
    keep_ops = [op for op in model.opset_import if op.domain != NMS_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(keep_ops)
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


# --- a numpy model of EfficientNMS_TRT (for CPU checks of the TensorRT-target graph) ------

def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def efficient_nms_reference(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    background_class: int = -1,
    class_agnostic: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class greedy NMS with EfficientNMS_TRT's output layout (one batch at a time).

    Candidates are (box, class) pairs with score > score_threshold; suppression is within
    a class (or across classes if class_agnostic); the survivors are sorted by score and
    the first max_output_boxes kept. (The plugin also caps candidates at 4096 per image
    before NMS; with a sensible score threshold that cap is not reached.)
    """
    bsz, n, c = scores.shape
    k = int(max_output_boxes)
    num = np.zeros((bsz, 1), np.int32)
    out_b = np.zeros((bsz, k, 4), np.float32)
    out_s = np.zeros((bsz, k), np.float32)
    out_c = np.zeros((bsz, k), np.int32)
    for bi in range(bsz):
        kept: list[tuple[float, int, int]] = []  # (score, box index, class)
        classes: Iterable[int | None] = [None] if class_agnostic else range(c)
        for cls in classes:
            if cls is not None and cls == background_class:
                continue
            if cls is None:
                sc = scores[bi].max(axis=1)
                lab = scores[bi].argmax(axis=1)
            else:
                sc = scores[bi, :, cls]
                lab = np.full(n, cls)
            cand = np.nonzero(sc > score_threshold)[0]
            cand = cand[np.argsort(-sc[cand], kind="stable")]
            alive = np.ones(len(cand), bool)
            for i in range(len(cand)):
                if not alive[i]:
                    continue
                kept.append((float(sc[cand[i]]), int(cand[i]), int(lab[cand[i]])))
                if i + 1 < len(cand):
                    ious = _iou_one_to_many(boxes[bi, cand[i]], boxes[bi, cand[i + 1:]])
                    alive[i + 1:] &= ious <= iou_threshold
        kept.sort(key=lambda t: -t[0])
        kept = kept[:k]
        num[bi, 0] = len(kept)
        for j, (s, idx, cls) in enumerate(kept):
            out_b[bi, j] = boxes[bi, idx]
            out_s[bi, j] = s
            out_c[bi, j] = cls
    return num, out_b, out_s, out_c
