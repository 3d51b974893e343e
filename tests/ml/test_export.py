"""export: mmdeploy -> ONNX for onnxruntime and for TensorRT (EfficientNMS_TRT), checked
against the PyTorch model on CPU.

Tolerances: detections are matched by IoU (>= 0.5, same label) from the PyTorch model's 30
best per image to all of the converted model's; matched boxes must agree within 1 px (in
original-image pixels) and scores within 1e-3. The pre-NMS TensorRT graph is compared
tensor-wise: scores within 1e-4, boxes within 1e-2 px.
"""

import json

import pytest

pytest.importorskip("mmdeploy", reason="mmdeploy is not installed (run `make install`)")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (run `make install`)")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (run `make install`)")
np = pytest.importorskip("numpy")

from test_export_support import (export_model, exports_root, match, run_cli,  # noqa: E402
                                 run_inprocess, val_images)

from edgetune_contract.meta import load_meta  # noqa: E402
from edgetune_contract.results import COCO_KEYS  # noqa: E402
from edgetune_jobs.inference import graph  # noqa: E402
from support import decoded  # noqa: E402

PX_TOL = 1.0
SCORE_TOL = 1e-3


@pytest.fixture(scope="module")
def trt_export(trained_model, tmp_path_factory):
    return export_model(exports_root(tmp_path_factory), "tensorrt", str(trained_model.checkpoint),
                        str(trained_model.config), trained_model.image_size)


@pytest.fixture(scope="module")
def torch_detector(trained_model, ort_export):
    from edgetune_jobs.inference.detectors import TorchDetector

    meta, meta_dir = load_meta(str(ort_export[0] / "pipeline.json"))
    return TorchDetector(str(trained_model.checkpoint), meta, meta_dir)


def _model_test_cfg(config_path):
    from mmengine.config import Config

    tc = Config.fromfile(str(config_path)).model.test_cfg
    return tc.score_thr, tc.nms.iou_threshold, tc.max_per_img


def test_onnxruntime_export_result_and_meta(ort_export, trained_model):
    out, doc = ort_export
    assert doc["ok"] and doc["reason"] == "Succeeded"
    decoded(doc)
    assert doc["artifacts"] == {"onnx": "end2end.onnx", "meta": "pipeline.json"}
    assert doc["metrics"]["onnx_bytes"] == (out / "end2end.onnx").stat().st_size
    prov = doc["provenance"]
    s = trained_model.image_size
    assert prov["backend"] == "onnxruntime" and prov["dynamic"] is False and prov["opset"] == 11
    assert prov["input_shape"] == [1, s, s, 3]
    assert set(prov["versions"]) >= {"torch", "mmdeploy", "mmdet", "onnx"}

    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["input"] == {"name": "input", "shape": [1, s, s, 3], "dtype": "uint8", "layout": "NHWC",
                             "channel_order": "BGR", "value_range": "0..255", "dynamic": False}
    assert meta["folded"] == ["cast_to_float", "hwc_to_chw", "normalize"]  # RTMDet: BGR, no swap
    assert meta["letterbox"]["size"] == [s, s] and meta["letterbox"]["keep_ratio"] is True
    assert meta["letterbox"]["pad_value"] == 114
    # the model's test_cfg wins (no CLI overrides given) and is what the graph baked in
    score, iou, maxdet = _model_test_cfg(trained_model.config)
    pp = meta["postprocess"]
    assert (pp["score_threshold"], pp["iou_threshold"], pp["max_detections"]) == (score, iou, maxdet)
    assert meta["outputs"]["names"] == ["dets", "labels"]
    assert meta["classes"] == ["balloon"]
    ref = meta["reference"]
    assert ref["images"] == 3 and ref["input_size"] == s and ref["backend"] == "torch"
    assert set(ref["metrics"]) == set(COCO_KEYS)
    assert doc["metrics"]["reference"] == ref["metrics"]

    model = onnx.load(str(out / "end2end.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ["dets", "labels"]
    assert any(n.op_type == "NonMaxSuppression" for n in model.graph.node)


def test_onnxruntime_detections_match_pytorch(ort_export, torch_detector, trained_model):
    from edgetune_jobs.inference.detectors import OrtDetector
    from edgetune_jobs.inference.preprocess import load_image

    meta, _ = load_meta(str(ort_export[0] / "pipeline.json"))
    det = OrtDetector(str(ort_export[0] / "end2end.onnx"), meta)
    matched = total = 0
    for path in val_images(trained_model.data):
        img = load_image(str(path))
        ref, got = torch_detector(img), det(img)
        assert abs(len(ref[0]) - len(got[0])) <= max(2, len(ref[0]) // 50), (path, len(ref[0]), len(got[0]))
        for m in match(ref, got):
            total += 1
            assert m["matched"], (path, m)
            assert m["px"] <= PX_TOL and m["dscore"] <= SCORE_TOL, (path, m)
            matched += 1
        h, w = img.shape[:2]
        assert (got[0][:, 0::2] <= w).all() and (got[0][:, 1::2] <= h).all() and (got[0] >= 0).all()
    assert total > 0 and matched == total


def test_tensorrt_export_graph(trt_export, trained_model):
    out, doc = trt_export
    assert doc["ok"]
    s = trained_model.image_size
    meta = json.loads((out / "pipeline.json").read_text())
    assert meta["input"]["dtype"] == "float32" and meta["input"]["shape"] == [1, s, s, 3]
    assert meta["folded"] == ["hwc_to_chw", "normalize"]
    assert meta["outputs"]["layout"] == "efficient_nms"

    model = onnx.load(str(out / "end2end.onnx"))
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    pp = meta["postprocess"]
    k = pp["max_detections"]
    assert [o.name for o in model.graph.output] == list(graph.NMS_OUTPUTS)
    assert graph.tensor_shape(inferred, "num_detections") == [1, 1]
    assert graph.tensor_shape(inferred, "detection_boxes") == [1, k, 4]
    assert graph.tensor_shape(inferred, "detection_scores") == [1, k]
    assert graph.tensor_shape(inferred, "detection_classes") == [1, k]
    n_priors = pp["num_priors"]
    assert graph.tensor_shape(inferred, "boxes") == [1, n_priors, 4]
    assert graph.tensor_shape(inferred, "scores") == [1, n_priors, 1]
    nms = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == 1 and nms[0].domain == graph.NMS_DOMAIN
    attrs = graph.nms_attributes(model)
    assert attrs["plugin_version"] == "1" and attrs["background_class"] == -1
    assert attrs["box_coding"] == 0 and attrs["score_activation"] == 0  # sigmoid is in the graph
    assert attrs["max_output_boxes"] == k
    # the model's test_cfg, not mmdeploy's deploy defaults (0.05 / 0.5 / 100)
    score, iou, maxdet = _model_test_cfg(trained_model.config)
    assert attrs["score_threshold"] == pytest.approx(score) and attrs["iou_threshold"] == pytest.approx(iou)
    assert k == maxdet
    assert not any(n.op_type in ("NonMaxSuppression", "TRTBatchedNMS") for n in model.graph.node)


def _torch_raw(model, x, meta):
    """boxes/scores the way mmdet's RTMDetHead.predict_by_feat computes them before NMS
    (decode with clipping to the input, degenerate boxes dropped -> score 0)."""
    import torch
    from mmdet.structures.bbox import distance2bbox

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x, np.float32)).permute(0, 3, 1, 2)
        t = (t - torch.tensor(meta["normalize"]["mean"]).view(1, 3, 1, 1)) / \
            torch.tensor(meta["normalize"]["std"]).view(1, 3, 1, 1)
        cls, reg = model.bbox_head(model.extract_feat(t))
        head = model.bbox_head
        priors = torch.cat(head.prior_generator.grid_priors([c.shape[2:] for c in cls], device="cpu"))
        scores = torch.cat([c.permute(0, 2, 3, 1).reshape(1, -1, head.cls_out_channels) for c in cls], 1).sigmoid()
        dist = torch.cat([r.permute(0, 2, 3, 1).reshape(1, -1, 4) for r in reg], 1)
        boxes = distance2bbox(priors[None, :, :2], dist, max_shape=t.shape[2:])
        valid = ((boxes[..., 2] - boxes[..., 0]) > 0) & ((boxes[..., 3] - boxes[..., 1]) > 0)
        scores = scores * valid[..., None]
    return boxes.numpy(), scores.numpy()


def test_tensorrt_prenms_graph_matches_pytorch(trt_export, torch_detector, trained_model):
    from edgetune_jobs.inference.detectors import _postprocess_efficient_nms
    from edgetune_jobs.inference.preprocess import Letterbox, Preprocessor, load_image

    meta, _ = load_meta(str(trt_export[0] / "pipeline.json"))
    pre_nms = graph.strip_efficient_nms(onnx.load(str(trt_export[0] / "end2end.onnx")))
    sess = ort.InferenceSession(pre_nms.SerializeToString(), providers=["CPUExecutionProvider"])
    pre = Preprocessor(Letterbox.from_meta(meta["letterbox"]), meta["input"]["dtype"])
    pp = meta["postprocess"]
    for path in val_images(trained_model.data)[:4]:
        img = load_image(str(path))
        x, info = pre(img)
        boxes, scores = sess.run(None, {"input": x})
        tb, ts = _torch_raw(torch_detector.model, x, meta)
        np.testing.assert_allclose(scores, ts, atol=1e-4)
        np.testing.assert_allclose(boxes, tb, atol=1e-2)
        # and through a numpy model of EfficientNMS_TRT: the same detections as mmdet's predict
        nms = graph.efficient_nms_reference(boxes, scores, score_threshold=pp["score_threshold"],
                                            iou_threshold=pp["iou_threshold"],
                                            max_output_boxes=pp["max_detections"])
        got = _postprocess_efficient_nms(*nms, info)
        ref = torch_detector(img)
        for m in match(ref, got):
            assert m["matched"] and m["px"] <= PX_TOL and m["dscore"] <= SCORE_TOL, (path, m)


def test_dynamic_tensorrt_export_with_cli_thresholds(trained_model, tmp_path_factory):
    """--dynamic, and --score-threshold/--iou-threshold/--max-detections reaching the graph."""
    from edgetune_jobs.inference.preprocess import Letterbox, Preprocessor, load_image

    out, doc = export_model(exports_root(tmp_path_factory), "tensorrt", str(trained_model.checkpoint),
                            str(trained_model.config), trained_model.image_size, True, None,
                            ("--score-threshold", "0.25", "--iou-threshold", "0.5", "--max-detections", "50"))
    meta = json.loads((out / "pipeline.json").read_text())
    s = trained_model.image_size
    assert meta["input"]["shape"] == ["batch", "height", "width", 3] and meta["input"]["dynamic"]
    assert meta["input"]["opt_shape"] == [1, s, s, 3]
    assert meta["input"]["min_shape"][1] <= s <= meta["input"]["max_shape"][1]
    assert doc["provenance"]["dynamic"] is True
    model = onnx.load(str(out / "end2end.onnx"))
    onnx.checker.check_model(model)
    assert graph.tensor_shape(model, "input") == ["batch", "height", "width", 3]
    attrs = graph.nms_attributes(model)
    assert attrs["score_threshold"] == pytest.approx(0.25)
    assert attrs["iou_threshold"] == pytest.approx(0.5) and attrs["max_output_boxes"] == 50
    assert meta["postprocess"]["max_detections"] == 50
    assert graph.tensor_shape(model, "detection_boxes") == ["batch", 50, 4]
    sess = ort.InferenceSession(graph.strip_efficient_nms(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    img = load_image(str(val_images(trained_model.data)[0]))
    for size in (s, s + 32):
        lb = Letterbox.from_meta({**meta["letterbox"], "height": size, "width": size})
        x, _ = Preprocessor(lb, "float32")(img)
        batch = np.concatenate([x, x])
        boxes, scores = sess.run(None, {"input": batch})
        n = sum((size // st) ** 2 for st in (8, 16, 32))
        assert boxes.shape == (2, n, 4) and scores.shape == (2, n, 1)
        assert boxes.max() <= size + 1e-3  # clipped to the input inside the graph
        np.testing.assert_allclose(boxes[0], boxes[1])


def test_dynamic_onnxruntime_runs_rectangular_inputs(trained_model, tmp_path_factory):
    """A dynamic onnxruntime export is fed a wide image padded to the next multiple of 32, not
    to the square, and its detections still match mmdet's predict on that same input."""
    from edgetune_jobs.inference.detectors import OrtDetector, TorchDetector
    from edgetune_jobs.inference.preprocess import load_image

    out, _ = export_model(exports_root(tmp_path_factory), "onnxruntime", str(trained_model.checkpoint),
                          str(trained_model.config), trained_model.image_size, True, str(trained_model.data))
    meta, meta_dir = load_meta(str(out / "pipeline.json"))
    s = trained_model.image_size
    assert meta["input"]["dynamic"] and meta["reference"]["input_padding"].startswith("to a multiple of 32")
    det = OrtDetector(str(out / "end2end.onnx"), meta)
    ref = TorchDetector(str(trained_model.checkpoint), meta, meta_dir)
    square = TorchDetector(str(trained_model.checkpoint), meta, meta_dir, model=ref.model, rect=False)
    assert det.input_padding() == ref.input_padding() != square.input_padding()
    matched = 0
    for path in val_images(trained_model.data)[:3]:
        img = load_image(str(path))
        wide = np.ascontiguousarray(np.concatenate([img, img, img], axis=1))  # 3:1
        x, info = det.preprocess(wide)
        assert x.shape[2] == s and x.shape[1] == -(-info.new_h // 32) * 32 < s, (x.shape, info)
        assert square.preprocess(wide)[0].shape[1:3] == (s, s)
        got, want = det(wide), ref(wide)
        assert want[0].shape[0] > 0
        for m in match(want, got):
            assert m["matched"] and m["px"] <= PX_TOL and m["dscore"] <= SCORE_TOL, (path, m)
            matched += 1
        h, w = wide.shape[:2]
        assert (got[0][:, 0::2] <= w).all() and (got[0][:, 1::2] <= h).all()
    assert matched > 0


@pytest.mark.parametrize("case", ["missing-checkpoint", "bad-backend", "bad-size", "missing-dataset",
                                  "missing-config"])
def test_bad_inputs_fail_clearly(case, trained_model, tmp_path):
    from edgetune_jobs.steps import export

    argv = {"--out": str(tmp_path / "e"), "--checkpoint": str(trained_model.checkpoint),
            "--config": str(trained_model.config), "--backend": "onnxruntime", "--image-size": "128"}
    want = {"missing-checkpoint": ("--checkpoint", str(tmp_path / "nope.pth"), "CheckpointNotFound", 1),
            "bad-backend": ("--backend", "tflite", "InvalidInput", 2),
            "bad-size": ("--image-size", "100", "InvalidInput", 1),
            "missing-dataset": ("--val-dataset", str(tmp_path / "nodata"), "DatasetNotFound", 1),
            "missing-config": ("--config", str(tmp_path / "nope.py"), "InvalidInput", 1)}[case]
    argv[want[0]] = want[1]
    code, doc = run_inprocess(export, [a for kv in argv.items() for a in kv], tmp_path / "r.json")
    assert code == want[3]
    assert doc["ok"] is False and doc["reason"] == want[2], doc
    assert doc["message"] and "\n" not in doc["message"]


def test_command_line_failure_is_one_line(tmp_path):
    code, doc, stderr = run_cli("export", ["--out", str(tmp_path / "e"), "--checkpoint", str(tmp_path / "x.pth"),
                                           "--config", str(tmp_path / "x.py"), "--backend", "tensorrt",
                                           "--image-size", "640"], tmp_path / "r.json")
    assert code == 1
    assert doc["reason"] == "CheckpointNotFound" and not doc["ok"]
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("export: CheckpointNotFound:") and len(lines) == 1
