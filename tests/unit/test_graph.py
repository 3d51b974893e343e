"""graph.py: preprocessing folded into the ONNX graph, EfficientNMS_TRT appended.

Checked with onnx.checker, onnx shape inference and onnxruntime on a tiny hand-made
detector-shaped graph (no torch needed)."""

import pytest

np = pytest.importorskip("numpy", reason="numpy comes with requirements/ml.txt (make install)")
onnx = pytest.importorskip("onnx", reason="onnx comes with requirements/ml.txt (make install)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime comes with requirements/ml.txt")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgetune_jobs.inference import graph  # noqa: E402

MEAN = [103.53, 116.28, 123.675]
STD = [57.375, 57.12, 58.395]


def _toy_detector(batch="batch", h=8, w=8, classes=2):
    """input [B,3,H,W] float -> boxes [B,H*W,4] = per-pixel |x| channels, scores [B,H*W,C]."""
    n = h * w
    nodes = [
        helper.make_node("Transpose", ["input"], ["hwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["hwc", "shape3"], ["flat"]),  # [B, N, 3]
        helper.make_node("Abs", ["flat"], ["absx"]),
        helper.make_node("Concat", ["absx", "absx"], ["six"], axis=2),  # [B, N, 6]
        helper.make_node("Slice", ["six", "s0", "s4", "ax2"], ["boxes"]),  # [B, N, 4]
        helper.make_node("Slice", ["flat", "s0", "sc", "ax2"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0, n, 3], np.int64), "shape3"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([4], np.int64), "s4"),
        numpy_helper.from_array(np.array([classes], np.int64), "sc"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
    ]
    g = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, n, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, n, classes])],
        inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 7
    onnx.checker.check_model(m)
    return m


def _run(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


@pytest.mark.parametrize("bgr_to_rgb", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_fold_preprocess_matches_numpy_preprocessing(bgr_to_rgb, dtype):
    model = _toy_detector()
    folded = graph.fold_preprocess(model, mean=MEAN, std=STD, bgr_to_rgb=bgr_to_rgb, input_dtype=dtype)
    onnx.checker.check_model(folded, full_check=True)
    inp = folded.graph.input[0]
    assert inp.name == "input"
    assert inp.type.tensor_type.elem_type == (TensorProto.UINT8 if dtype == "uint8" else TensorProto.FLOAT)
    assert graph.tensor_shape(folded, "input") == ["batch", 8, 8, 3]

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)  # NHWC, BGR as cv2 reads
    x = img.astype(np.float32).transpose(0, 3, 1, 2)
    if bgr_to_rgb:
        x = x[:, ::-1]
    x = (x - np.array(MEAN, np.float32).reshape(1, 3, 1, 1)) / np.array(STD, np.float32).reshape(1, 3, 1, 1)
    want = _run(model, {"input": np.ascontiguousarray(x)})
    got = _run(folded, {"input": img if dtype == "uint8" else img.astype(np.float32)})
    for a, b in zip(want, got):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_fold_preprocess_rejects_bad_input():
    model = _toy_detector()
    with pytest.raises(ValueError):
        graph.fold_preprocess(model, mean=MEAN, std=[1, 0, 1], bgr_to_rgb=False)
    with pytest.raises(ValueError):
        graph.fold_preprocess(model, mean=MEAN, std=STD, bgr_to_rgb=False, input_dtype="int16")
    folded = graph.fold_preprocess(model, mean=MEAN, std=STD, bgr_to_rgb=False)
    with pytest.raises(ValueError, match="already folded"):
        graph.fold_preprocess(folded, mean=MEAN, std=STD, bgr_to_rgb=False)


def test_append_efficient_nms_structure_and_attributes():
    model = _toy_detector(batch=1)
    nms = graph.append_efficient_nms(model, score_threshold=0.05, iou_threshold=0.6,
                                     max_output_boxes=30)
    onnx.checker.check_model(nms, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(nms, strict_mode=True)
    assert [o.name for o in nms.graph.output] == list(graph.NMS_OUTPUTS)
    assert graph.tensor_shape(inferred, "num_detections") == [1, 1]
    assert graph.tensor_shape(inferred, "detection_boxes") == [1, 30, 4]
    assert graph.tensor_shape(inferred, "detection_scores") == [1, 30]
    assert graph.tensor_shape(inferred, "detection_classes") == [1, 30]
    assert graph.tensor_shape(inferred, "boxes") == [1, 64, 4]
    types = {o.name: o.type.tensor_type.elem_type for o in nms.graph.output}
    assert types == {"num_detections": TensorProto.INT32, "detection_boxes": TensorProto.FLOAT,
                     "detection_scores": TensorProto.FLOAT, "detection_classes": TensorProto.INT32}
    node = graph.find_nms_node(nms)
    assert node.op_type == "EfficientNMS_TRT" and node.domain == graph.NMS_DOMAIN
    assert list(node.input) == ["boxes", "scores"]
    attrs = graph.nms_attributes(nms)
    assert attrs == {"plugin_version": "1", "background_class": -1, "max_output_boxes": 30,
                     "score_threshold": pytest.approx(0.05), "iou_threshold": pytest.approx(0.6),
                     "score_activation": 0, "box_coding": 0}
    assert any(op.domain == graph.NMS_DOMAIN for op in nms.opset_import)


def test_strip_efficient_nms_gives_back_a_runnable_prenms_graph():
    model = _toy_detector()
    folded = graph.fold_preprocess(model, mean=MEAN, std=STD, bgr_to_rgb=False)
    nms = graph.append_efficient_nms(folded, score_threshold=0.1, iou_threshold=0.5,
                                     max_output_boxes=10)
    pre = graph.strip_efficient_nms(nms)
    onnx.checker.check_model(pre, full_check=True)
    assert [o.name for o in pre.graph.output] == ["boxes", "scores"]
    img = np.random.default_rng(1).integers(0, 256, (1, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_allclose(_run(pre, {"input": img})[0], _run(folded, {"input": img})[0])


def test_append_efficient_nms_rejects_bad_arguments():
    model = _toy_detector()
    with pytest.raises(KeyError):
        graph.append_efficient_nms(model, boxes="nope", score_threshold=0.1, iou_threshold=0.5,
                                   max_output_boxes=10)
    with pytest.raises(ValueError):
        graph.append_efficient_nms(model, score_threshold=1.5, iou_threshold=0.5, max_output_boxes=10)
    with pytest.raises(ValueError):
        graph.append_efficient_nms(model, score_threshold=0.1, iou_threshold=0.5, max_output_boxes=0)


def test_efficient_nms_reference_semantics():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.8, 0.7], [0.3, 0.0], [0.01, 0.6]]], np.float32)
    num, b, s, c = graph.efficient_nms_reference(boxes, scores, score_threshold=0.05,
                                                 iou_threshold=0.5, max_output_boxes=5)
    # class 0: box0 keeps, box1 suppressed (IoU 0.81), box2 keeps; class 1: box1 keeps, box3 suppressed
    assert num[0, 0] == 3
    np.testing.assert_allclose(s[0, :3], [0.9, 0.7, 0.3])
    assert c[0, :3].tolist() == [0, 1, 0]
    assert (s[0, 3:] == 0).all()
    num1, *_ = graph.efficient_nms_reference(boxes, scores, score_threshold=0.05,
                                             iou_threshold=0.5, max_output_boxes=1)
    assert num1[0, 0] == 1
