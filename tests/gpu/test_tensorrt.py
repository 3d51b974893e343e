"""TensorRT engine build and execution (marked gpu: needs an NVIDIA GPU, TensorRT and a CUDA
binding; skipped with the reason elsewhere).

Self-contained: the network is a small detector-shaped ONNX built with graph.py (folded
preprocessing + EfficientNMS_TRT), so these run on a device that has TensorRT but not the
training stack. With the ML stack present, the real RTMDet export of the trained-model fixture
(tests/ml_fixtures.py) is built and checked against onnxruntime's pre-NMS graph as well.
"""

import os
import shutil

import pytest

pytestmark = pytest.mark.gpu

np = pytest.importorskip("numpy", reason="numpy is not installed")
onnx = pytest.importorskip("onnx", reason="onnx is not installed")


def _cuda_binding():
    for mod in ("pycuda.driver", "cuda.bindings.runtime", "cuda.cudart"):
        try:
            __import__(mod)
            return mod
        except Exception:  # noqa: BLE001 - any failure means "not usable"
            continue
    return None


def _need_cuda():
    if shutil.which("nvidia-smi") is None and not os.path.exists("/dev/nvidia0") \
            and not os.path.exists("/etc/nv_tegra_release"):
        pytest.skip("no NVIDIA GPU on this machine (no nvidia-smi, /dev/nvidia0 or Jetson)")
    if _cuda_binding() is None:
        pytest.skip("no CUDA Python binding (pycuda or cuda-python) is installed")


def _need_trt():
    _need_cuda()
    return pytest.importorskip(
        "tensorrt", reason="TensorRT's Python package is not installed (it comes with the Jetson "
                           "image / JetPack, or the tensorrt wheels on an x86 GPU node)")


from edgetune_jobs.inference import graph  # noqa: E402

MEAN = [103.53, 116.28, 123.675]
STD = [57.375, 57.12, 58.395]


def _toy_model(path, n_side=16, classes=3, dynamic=False):
    """input [B,3,S,S] -> boxes from a Conv (deterministic weights), scores = sigmoid(conv)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    s = n_side
    b = "batch" if dynamic else 1
    n = s * s
    wb = rng.normal(0, 0.3, (4, 3, 1, 1)).astype(np.float32)
    ws = rng.normal(0, 1.0, (classes, 3, 1, 1)).astype(np.float32)
    # anchor grid: box = (cx - 2 - |d0|, cy - 2 - |d1|, cx + 2 + |d2|, cy + 2 + |d3|)
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32)
    centers = np.stack([xs, ys, xs, ys], -1).reshape(1, n, 4)
    sign = np.array([-1, -1, 1, 1], np.float32).reshape(1, 1, 4)
    nodes = [
        helper.make_node("Conv", ["input", "wb"], ["d"]),
        helper.make_node("Conv", ["input", "ws"], ["logit"]),
        helper.make_node("Transpose", ["d"], ["dt"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["dt", "shape_b"], ["df"]),
        helper.make_node("Abs", ["df"], ["da"]),
        helper.make_node("Add", ["da", "two"], ["dd"]),
        helper.make_node("Mul", ["dd", "sign"], ["off"]),
        helper.make_node("Add", ["centers", "off"], ["boxes"]),
        helper.make_node("Transpose", ["logit"], ["lt"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["lt", "shape_s"], ["lf"]),
        helper.make_node("Sigmoid", ["lf"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(a, name) for a, name in [
        (wb, "wb"), (ws, "ws"), (centers, "centers"), (sign, "sign"),
        (np.array([2.0], np.float32), "two"),
        (np.array([-1 if dynamic else 1, n, 4], np.int64), "shape_b"),
        (np.array([-1 if dynamic else 1, n, classes], np.int64), "shape_s")]]
    g = helper.make_graph(nodes, "toy",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [b, 3, s, s])],
                          [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [b, n, 4]),
                           helper.make_tensor_value_info("scores", TensorProto.FLOAT, [b, n, classes])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    m.ir_version = 7
    m = graph.fold_preprocess(m, mean=MEAN, std=STD, bgr_to_rgb=False, input_dtype="float32")
    m = graph.append_efficient_nms(m, score_threshold=0.3, iou_threshold=0.5, max_output_boxes=20)
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return m


def _reference(model, x):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    pre = graph.strip_efficient_nms(model)
    sess = ort.InferenceSession(pre.SerializeToString(), providers=["CPUExecutionProvider"])
    boxes, scores = sess.run(None, {"input": x})
    return graph.efficient_nms_reference(boxes, scores, score_threshold=0.3, iou_threshold=0.5,
                                         max_output_boxes=20)


def test_cuda_binding_roundtrip_and_events():
    """The CUDA layer trt_compat uses (pycuda, else cuda-python): copies and event timing."""
    _need_cuda()
    from edgetune_jobs.inference import trt_compat

    cuda = trt_compat.cuda_api()
    host = cuda.host((4, 1024), np.float32)
    host[...] = np.arange(host.size, dtype=np.float32).reshape(host.shape)
    back = cuda.host((4, 1024), np.float32)
    back[...] = 0
    dev = cuda.alloc(host.nbytes)
    start, end = cuda.event(), cuda.event()
    cuda.record(start)
    cuda.htod(dev, host)
    cuda.dtoh(back, dev)
    cuda.record(end)
    cuda.sync()
    assert np.array_equal(host, back)
    assert cuda.elapsed_ms(start, end) >= 0.0
    assert cuda.device_name()


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("api", ["tensors", "bindings"])
def test_build_and_run_toy_engine(tmp_path, monkeypatch, precision, api):
    trt = _need_trt()
    from edgetune_jobs.inference import trt_compat

    if api == "bindings" and trt_compat.version_tuple(trt.__version__)[0] >= 10:
        pytest.skip(f"TensorRT {trt.__version__} has no bindings API (removed in 10.0)")
    model = _toy_model(str(tmp_path / "toy.onnx"))
    plan, info = trt_compat.build_engine(str(tmp_path / "toy.onnx"), precision=precision,
                                         workspace_bytes=256 << 20)
    assert info.engine_bytes == len(plan) > 0 and info.tensorrt == trt.__version__
    (tmp_path / "toy.engine").write_bytes(plan)
    monkeypatch.setenv("EDGETUNE_TRT_API", api)
    runner = trt_compat.TrtRunner(str(tmp_path / "toy.engine"))
    assert runner.api == ("execute_async_v3" if api == "tensors" else "execute_async_v2")
    x = np.random.default_rng(1).integers(0, 256, (1, 16, 16, 3)).astype(np.float32)
    outs, gpu_ms = runner.run(x)
    assert gpu_ms >= 0
    num, boxes, scores, classes = _reference(model, x)
    n = int(outs["num_detections"][0, 0])
    assert n == int(num[0, 0])
    atol = 1e-3 if precision == "fp32" else 5e-2
    np.testing.assert_allclose(np.sort(outs["detection_scores"][0, :n]), np.sort(scores[0, :n]), atol=atol)
    if precision == "fp32":
        np.testing.assert_allclose(outs["detection_boxes"][0, :n], boxes[0, :n], atol=1e-2)
        assert outs["detection_classes"][0, :n].tolist() == classes[0, :n].tolist()


def test_int8_calibration_builds(tmp_path):
    _need_trt()
    from edgetune_jobs.inference import trt_compat

    _toy_model(str(tmp_path / "toy.onnx"))
    rng = np.random.default_rng(2)
    batches = lambda: (rng.integers(0, 256, (1, 16, 16, 3)).astype(np.float32) for _ in range(8))  # noqa: E731
    plan, info = trt_compat.build_engine(str(tmp_path / "toy.onnx"), precision="int8",
                                         workspace_bytes=256 << 20, calibration=batches,
                                         calibration_cache=str(tmp_path / "calib.cache"))
    assert len(plan) > 0 and info.calibration_batches == 8
    assert (tmp_path / "calib.cache").stat().st_size > 0


def test_dynamic_toy_engine(tmp_path):
    _need_trt()
    from edgetune_jobs.inference import trt_compat

    model = _toy_model(str(tmp_path / "toy.onnx"), dynamic=True)
    plan, _ = trt_compat.build_engine(str(tmp_path / "toy.onnx"), precision="fp32", workspace_bytes=256 << 20,
                                      profile={"input": ((1, 16, 16, 3), (2, 16, 16, 3), (4, 16, 16, 3))})
    (tmp_path / "toy.engine").write_bytes(plan)
    runner = trt_compat.TrtRunner(str(tmp_path / "toy.engine"), (2, 16, 16, 3))
    x = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
    outs, _ = runner.run(x)
    num, *_ = _reference(model, x)
    assert outs["num_detections"].reshape(-1).tolist() == num.reshape(-1).tolist()


def test_real_export_builds_and_matches(tmp_path, request):
    """RTMDet export (tensorrt target) -> engine -> detections vs the pre-NMS graph on onnxruntime."""
    _need_trt()
    for mod in ("torch", "mmdet", "mmdeploy", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (the ML stack exports the model)")
    trained = request.getfixturevalue("trained_model")  # tests/ml_fixtures.py, after the skips above
    from edgetune_contract.meta import load_meta
    from edgetune_jobs.inference.detectors import TrtDetector
    from edgetune_jobs.inference.preprocess import load_image
    from edgetune_jobs.steps import build_engine, export

    ex, bd = tmp_path / "export", tmp_path / "build"
    assert export.main([
        "--out", str(ex), "--checkpoint", str(trained.checkpoint), "--config", str(trained.config),
        "--backend", "tensorrt", "--image-size", str(trained.image_size)], result_path=str(tmp_path / "e.json")) == 0
    assert build_engine.main([
        "--out", str(bd), "--onnx", str(ex / "end2end.onnx"), "--meta", str(ex / "pipeline.json"),
        "--backend", "tensorrt", "--precision", "fp32"], result_path=str(tmp_path / "b.json")) == 0
    meta, _ = load_meta(str(ex / "pipeline.json"))
    det = TrtDetector(str(bd / "end2end.engine"), meta)
    img = load_image(next((trained.data / "images").rglob("*.jpg")))
    boxes, scores, labels = det(img)
    assert det.gpu_ms is not None and det.gpu_ms > 0
    model = onnx.load(str(ex / "end2end.onnx"))
    x, info = det.preprocess(img)
    pp = meta["postprocess"]
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(graph.strip_efficient_nms(model).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    b, s = sess.run(None, {"input": x})
    num, *_ = graph.efficient_nms_reference(b, s, score_threshold=pp["score_threshold"],
                                            iou_threshold=pp["iou_threshold"],
                                            max_output_boxes=pp["max_detections"])
    assert abs(len(boxes) - int(num[0, 0])) <= max(2, int(0.02 * int(num[0, 0])))
