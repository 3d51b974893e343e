"""int8 on CPU backends, for real: onnxruntime static QDQ (per-channel, decode/NMS tail in
float, opset 13) and OpenVINO (fp32, bf16, int8 through NNCF), built, verified and benchmarked
with the steps; bad input (no calibration images, unreadable ones, a collapsed model, openvino
missing from the image)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("mmdeploy", reason="mmdeploy is not installed (run `make install`)")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (run `make install`)")

from test_export_support import ROOT, run_inprocess  # noqa: E402

from edgetune_jobs.steps import benchmark, build_engine, verify  # noqa: E402
from edgetune_jobs.steps.inputs import list_images  # noqa: E402


def build(export, out, backend, precision, *extra):
    code, doc = run_inprocess(build_engine, [
        "--out", str(out), "--onnx", str(export / "end2end.onnx"), "--meta", str(export / "pipeline.json"),
        "--backend", backend, "--precision", precision, *extra], out.parent / f"{out.name}.result.json")
    return code, doc


def scores(model, meta_path, images, backend="onnxruntime", precision="fp32"):
    from edgetune_contract.meta import load_meta
    from edgetune_jobs.inference.detectors import make_detector
    from edgetune_jobs.inference.preprocess import load_image

    meta, meta_dir = load_meta(str(meta_path))
    det = make_detector(backend, str(model), meta, meta_dir, threads=2, precision=precision)
    return [det(load_image(str(f)))[1] for f in images]


def test_float_tail_is_the_decode_and_nms(ort_export):
    import onnx

    from edgetune_jobs.inference.quantize import float_tail

    model = onnx.load(str(ort_export[0] / "end2end.onnx"))
    tail = set(float_tail(model))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert {ops[n] for n in tail} >= {"NonMaxSuppression", "TopK", "Sigmoid", "Concat"}
    assert "Conv" not in {ops[n] for n in tail}
    # every output of the graph is produced in the tail; every Conv is outside it
    producers = {o: n.name for n in model.graph.node for o in n.output}
    assert all(producers[o.name] in tail for o in model.graph.output)
    # the backbone's activations (SiLU = x * sigmoid(x) feeding the next conv) are not in the tail
    assert sum(1 for n, t in ops.items() if t == "Sigmoid" and n not in tail) > 20


def test_onnxruntime_int8_is_per_channel_qdq_with_a_float_tail(ort_int8, ort_export, trained_model):
    import onnx

    out, doc = ort_int8
    assert doc["ok"] and doc["artifacts"]["model"] == "end2end.onnx"
    prov = doc["provenance"]
    assert (prov["precision"], prov["calibration_method"], prov["calibration_images"]) == ("int8", "minmax", 3 + 9)
    model = onnx.load(str(out / "end2end.onnx"))
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    producer = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:  # input and weights come through DequantizeLinear; weights per output channel
        x, w = (producer.get(t) for t in conv.input[:2])
        assert x.op_type == "DequantizeLinear" and w.op_type == "DequantizeLinear", conv.name
        scale = next(i for i in model.graph.initializer if i.name == w.input[1])
        weight = next(i for i in model.graph.initializer if i.name == w.input[0])
        assert list(scale.dims) == [weight.dims[0]], conv.name  # one scale per output channel
    nms = next(n for n in model.graph.node if n.op_type == "NonMaxSuppression")
    assert all(producer[t].op_type not in ("DequantizeLinear", "QuantizeLinear") for t in nms.input[:2] if t)
    assert (out / "end2end.onnx").stat().st_size < 0.5 * (ort_export[0] / "end2end.onnx").stat().st_size
    # no score collapse: the int8 model's best detection per image scores like the fp32 model's
    images = list_images(str(trained_model.data))[:4]
    fp32 = scores(ort_export[0] / "end2end.onnx", ort_export[0] / "pipeline.json", images)
    int8 = scores(out / "end2end.onnx", ort_export[0] / "pipeline.json", images)
    for a, b in zip(fp32, int8):
        assert (a.max() if a.size else 0.0) == pytest.approx(b.max() if b.size else 0.0, abs=0.1)


def test_verify_measures_the_int8_drop_and_gates_it(ort_int8, ort_export, trained_model, tmp_path):
    out, _ = ort_int8
    argv = ["--out", str(tmp_path / "v"), "--model", str(out / "end2end.onnx"), "--meta",
            str(ort_export[0] / "pipeline.json"), "--backend", "onnxruntime", "--val-dataset", str(trained_model.data)]
    code, doc = run_inprocess(verify, argv, tmp_path / "r.json")
    assert code == 0 and doc["provenance"]["precision"] == "int8"
    m = doc["metrics"]
    assert m["map_drop"] == pytest.approx(m["reference"]["mAP"] - m["converted"]["mAP"], abs=1e-4)
    assert doc["provenance"]["calibration_method"] == "minmax"
    # a collapsed model: the budget is below the measured drop (the reference made better than it is)
    meta = json.loads((ort_export[0] / "pipeline.json").read_text())
    meta["reference"]["metrics"]["mAP"] = m["converted"]["mAP"] + 0.3
    (tmp_path / "pipeline.json").write_text(json.dumps(meta))
    argv[argv.index("--meta") + 1] = str(tmp_path / "pipeline.json")
    code, doc = run_inprocess(verify, argv + ["--max-map-drop", "0.01"], tmp_path / "r.json")
    assert code == 1 and doc["reason"] == "AccuracyDropTooLarge"
    assert "drop +0.3000 > allowed 0.01" in doc["message"] and str(out / "end2end.onnx") in doc["message"]
    assert (out / "end2end.onnx").is_file()  # kept for inspection


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_runs_or_says_it_fell_back(method, ort_export, trained_model, tmp_path):
    """onnxruntime's histogram methods cannot bin a tensor of (near) zero range, which an
    undertrained model has: the build then uses MinMax and the provenance says so and why."""
    code, doc = build(ort_export[0], tmp_path / "b", "onnxruntime", "int8", "--calibration-images",
                      str(trained_model.data), "--calibration-method", method)
    assert code == 0, doc
    used = doc["provenance"]["calibration_method"]
    assert used == method or (used.startswith(f"minmax (asked {method};") and "histogram failed" in used)


def test_int8_bad_calibration_input_names_the_folder(ort_export, tmp_path):
    code, doc = build(ort_export[0], tmp_path / "b", "onnxruntime", "int8")
    assert code == 1 and doc["reason"] == "InvalidInput" and "--calibration-images" in doc["message"]
    code, doc = build(ort_export[0], tmp_path / "b", "onnxruntime", "int8", "--calibration-images",
                      str(tmp_path / "nowhere"))
    assert code == 1 and doc["reason"] == "InvalidInput" and str(tmp_path / "nowhere") in doc["message"]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"not a jpeg")
    (junk / "notes.txt").write_text("no image here")
    code, doc = build(ort_export[0], tmp_path / "b", "onnxruntime", "int8", "--calibration-images", str(junk))
    assert code == 1 and doc["reason"] == "InvalidInput"
    assert str(junk) in doc["message"] and "no readable image" in doc["message"]
    code, doc = build(ort_export[0], tmp_path / "b", "onnxruntime", "fp16")
    assert code == 1 and doc["reason"] == "InvalidInput" and "onnxruntime builds fp32, int8" in doc["message"]


# --- OpenVINO ----------------------------------------------------------------------------------

ov = pytest.importorskip("openvino", reason="openvino is not installed (requirements/ml.txt; run `make install`)")


@pytest.fixture(scope="module")
def ov_builds(ort_export, trained_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("openvino")
    out = {}
    for precision in ("fp32", "bf16", "int8"):
        code, doc = build(ort_export[0], root / precision, "openvino", precision,
                          "--calibration-images", str(trained_model.data))
        assert code == 0, doc
        out[precision] = (root / precision, doc)
    return out


def test_openvino_builds_say_what_the_cpu_runs(ov_builds, ort_export):
    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    for precision, (out, doc) in ov_builds.items():
        build_info = json.loads((out / "build.json").read_text())
        assert doc["artifacts"]["model"] == "end2end.xml" and (out / "end2end.bin").is_file()
        assert doc["metrics"]["engine_bytes"] == (out / "end2end.xml").stat().st_size + (out / "end2end.bin").stat().st_size
        assert build_info["precision"] == precision and ov.__version__.startswith(doc["provenance"]["versions"]["openvino"])
        ran = build_info["precision_run"]
        if precision == "fp32":
            assert ran == "fp32"
        elif precision == "bf16":  # bf16 where the CPU has it, else the plugin falls back and says so
            assert ran == ("bf16" if "BF16" in caps else "fp32")
        else:
            assert ran.startswith("int8") and build_info["details"]["quantizer"].startswith("nncf")
    int8 = ov_builds["int8"][0]
    assert (int8 / "end2end.bin").stat().st_size < 0.5 * (ov_builds["fp32"][0] / "end2end.bin").stat().st_size
    # NNCF left the decode/NMS tail in float: no FakeQuantize feeds the NMS
    model = core.read_model(str(int8 / "end2end.xml"))
    nms = [op for op in model.get_ordered_ops() if "NonMaxSuppression" in op.get_type_name()]
    assert nms and all(i.get_source_output().get_node().get_type_name() != "FakeQuantize" for i in nms[0].inputs())
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())


def test_openvino_verify_and_benchmark(ov_builds, ort_export, trained_model, tmp_path):
    out, _ = ov_builds["fp32"]
    common = ["--model", str(out / "end2end.xml"), "--meta", str(ort_export[0] / "pipeline.json"),
              "--backend", "openvino"]
    code, doc = run_inprocess(verify, ["--out", str(tmp_path / "v"), *common, "--val-dataset", str(trained_model.data),
                                       "--max-map-drop", "0.02"], tmp_path / "r.json")
    assert code == 0, doc
    assert abs(doc["metrics"]["map_drop"]) <= 0.02  # the same fp32 graph as onnxruntime
    assert doc["provenance"]["precision_run"] == "fp32"
    code, doc = run_inprocess(benchmark, ["--out", str(tmp_path / "b"), *common, "--warmup", "2", "--iterations", "5",
                                          "--threads", "2"], tmp_path / "r.json")
    assert code == 0, doc
    prov = doc["provenance"]
    assert prov["backend"] == "openvino" and prov["precision_run"] == "fp32" and prov["inference_threads"] == 2
    assert doc["metrics"]["peak_rss_mib"] == prov["peak_rss_mib"] > 50  # the runtime and model are resident
    # the same detections as onnxruntime on the same graph
    images = list_images(str(trained_model.data))[:3]
    a = scores(ort_export[0] / "end2end.onnx", ort_export[0] / "pipeline.json", images)
    b = scores(out / "end2end.xml", ort_export[0] / "pipeline.json", images, backend="openvino")
    for x, y in zip(a, b):
        assert x[:5] == pytest.approx(y[:5], abs=1e-3)


def test_openvino_missing_is_backend_unavailable_naming_the_image(ort_export, tmp_path):
    blocker = tmp_path / "blocker" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named openvino (blocked for this test)')\n")
    env = dict(os.environ, EDGETUNE_RESULT_PATH=str(tmp_path / "r.json"), EDGETUNE_IMAGE="ghcr.io/edgetune/jetson:0.1.0",
               PYTHONPATH=os.pathsep.join([str(tmp_path / "blocker"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "edgetune_jobs.steps.build_engine", "--out", str(tmp_path / "b"),
                           "--onnx", str(ort_export[0] / "end2end.onnx"), "--meta", str(ort_export[0] / "pipeline.json"),
                           "--backend", "openvino", "--precision", "fp32"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert proc.returncode == 1 and doc["reason"] == "BackendUnavailable", proc.stderr
    assert "openvino" in doc["message"] and "ghcr.io/edgetune/jetson:0.1.0" in doc["message"]


def test_peak_rss_is_the_process_high_water_mark():
    code = ("import numpy as np; from edgetune_jobs.inference.device import peak_rss_mib; a = peak_rss_mib(); "
            "b = np.ones(256 * 2 ** 20, np.uint8); c = peak_rss_mib(); del b; print(a, c, peak_rss_mib())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    before, during, after = map(float, out.stdout.split())
    # 256 MiB touched; the high-water mark stays after the free (the kernel updates it lazily: +-1 MiB)
    assert during - before >= 250 and after >= during - 1
