"""An EdgeBenchmark over several ModelConversions (a sweep): which conversions it takes (names,
labels), waiting for them, the one `sweep` Job and its arguments, the table, the best row, the
picture's link, the metrics, and the store's reverse index for selectors."""
from __future__ import annotations

import json

from test_operator_plan import S, advance, at, cond, job, parsed, pod, res, result

from edgetune_contract.args import SweepArgs
from edgetune_operator import kinds, metrics
from edgetune_operator.controller.store import Store

CLAIM = "pvc://edgetune-artifacts/demo/modelconversion"


def conv(name, backend, precision, *, phase="Succeeded", drop=0.001, labels=None, built=True, message=""):
    st = {"phase": phase, "message": message, "model": "rtmdet",
          "source": {"valDataset": "pvc://edgetune-artifacts/demo/finetunejob/balloon/finetune/data"},
          "metrics": {"engineBytes": 5e6, "converted": {"mAP": 0.5 - drop}, "reference": {"mAP": 0.5},
                      "mapDrop": drop}}
    if built:
        st["artifacts"] = {"model": f"{CLAIM}/{name}/build-engine/end2end.onnx",
                           "meta": f"{CLAIM}/{name}/export/pipeline.json"}
    body = res("ModelConversion", {"source": {"finetuneJob": "balloon"}, "backend": backend, "precision": precision},
               name, status=st)
    body["metadata"]["labels"] = labels or {"sweep": "balloon"}
    return body


CONVS = [conv("c-ort-fp32", "onnxruntime", "fp32", drop=0.0),
         conv("c-ort-int8", "onnxruntime", "int8", drop=0.009),
         conv("c-ov-int8", "openvino", "int8", drop=0.2, phase="Failed",
              message="verify: openvino int8 mAP 0.3 vs PyTorch 0.5, drop +0.2 > allowed 0.01 (budget)"),
         conv("c-trt", "tensorrt", "fp16", labels={"sweep": "other"})]

ROWS = [{"name": "c-ort-fp32", "p50_ms": 40.0, "p99_ms": 60.0, "mean_ms": 42.0, "fps": 23.8, "peak_rss_mib": 150.0,
         "inference_p50_ms": 39.0, "precision_run": "fp32", "within_budget": True},
        {"name": "c-ort-int8", "p50_ms": 24.0, "p99_ms": 30.0, "mean_ms": 25.0, "fps": 40.0, "peak_rss_mib": 120.0,
         "inference_p50_ms": 23.0, "precision_run": "int8", "within_budget": True},
        {"name": "c-ov-int8", "p50_ms": 12.0, "p99_ms": 20.0, "mean_ms": 13.0, "fps": 77.0, "peak_rss_mib": 190.0,
         "inference_p50_ms": 11.0, "precision_run": "int8 (float ops bf16)", "within_budget": False}]
SWEEP = result("sweep", metrics={"rows": ROWS, "best": "c-ort-int8"},
               artifacts={"report": "sweep.json", "plot": "sweep.svg", "plot_png": "sweep.png"},
               provenance={"device": {"cpu": "Intel Xeon", "cpus": 2, "arch": "x86_64", "kind": "cpu"}})


def sweep_body(**spec):
    return res("EdgeBenchmark", {"selector": {"matchLabels": {"sweep": "balloon"}}, "maxMapDrop": 0.01, **spec},
               "sweep")


def test_a_sweep_selects_by_label_or_name_in_its_namespace():
    body = sweep_body()
    assert [b["metadata"]["name"] for b in CONVS if kinds.selects(body, b)] == ["c-ort-fp32", "c-ort-int8", "c-ov-int8"]
    named = res("EdgeBenchmark", {"modelConversions": ["c-trt", "c-ort-fp32"]}, "s2")
    assert [b["metadata"]["name"] for b in CONVS if kinds.selects(named, b)] == ["c-ort-fp32", "c-trt"]
    elsewhere = conv("c-ort-fp32", "onnxruntime", "fp32")
    elsewhere["metadata"]["namespace"] = "other"
    assert not kinds.selects(body, elsewhere)
    assert kinds.is_selector(body) and not kinds.is_selector(res("EdgeBenchmark", {"modelConversion": "x"}, "b"))


def test_a_sweep_waits_for_every_selected_conversion():
    body = sweep_body()
    p = kinds.plan(body, [], [], S, at(0), related=[])
    assert p.status["phase"] == "Waiting" and cond(p.status, "ModelReady")["reason"] == "SourceNotFound"
    assert "sweep=balloon" in p.status["message"] and not p.create
    running = conv("c-ov-fp32", "openvino", "fp32", phase="Running")
    p = kinds.plan(body, [], [], S, at(0), related=CONVS + [running])
    assert cond(p.status, "ModelReady")["reason"] == "WaitingForModel" and "c-ov-fp32 (Running)" in p.status["message"]
    named = res("EdgeBenchmark", {"modelConversions": ["c-ort-fp32", "missing"]}, "s2")
    p = kinds.plan(named, [], [], S, at(0), related=CONVS)
    assert cond(p.status, "ModelReady")["reason"] == "SourceNotFound" and "missing" in p.status["message"]


def test_sweep_job_table_best_row_and_metrics():
    body = sweep_body(threads=2, iterations=100)
    p = kinds.plan(body, [], [], S, at(0), related=CONVS)
    (manifest,) = p.create
    assert manifest["metadata"]["name"] == "sweep-sweep"
    args = parsed(manifest, SweepArgs)
    models = json.loads(args.models)
    assert [m["name"] for m in models] == ["c-ort-fp32", "c-ort-int8", "c-ov-int8"]
    # the failed conversion is measured (its model was built) but marked: not within its own gate
    assert [m["accuracyOk"] for m in models] == [True, True, False]
    assert models[2]["model"] == "/artifacts/demo/modelconversion/c-ov-int8/build-engine/end2end.onnx"
    assert (args.threads, args.iterations, args.max_map_drop) == (2, 100, 0.01)
    assert args.images == "/artifacts/demo/finetunejob/balloon/finetune/data/images"
    assert [r["conversion"] for r in p.status["rows"]] == ["c-ort-fp32", "c-ort-int8", "c-ov-int8"]
    assert "conversion failed" in p.status["rows"][2]["message"]

    body = advance(body, p)
    jobs = [job(manifest, complete=True, start=10, end=100)]
    pods = [pod(manifest, phase="Succeeded", node="cpu-edge", exit_code=0, message=SWEEP)]
    p = kinds.plan(body, jobs, pods, S, at(101), related=CONVS)
    st = p.status
    assert st["phase"] == "Succeeded", st["message"]
    rows = {r["conversion"]: r for r in st["rows"]}
    assert rows["c-ort-int8"] == {"conversion": "c-ort-int8", "backend": "onnxruntime", "precision": "int8",
                                  "accuracyOk": True, "modelBytes": 5e6, "mAP": 0.491, "mapDrop": 0.009,
                                  "p50Ms": 24.0, "p99Ms": 30.0, "meanMs": 25.0, "throughputFps": 40.0,
                                  "peakRssMiB": 120.0, "inferenceP50Ms": 23.0, "precisionRun": "int8",
                                  "withinBudget": True}
    assert rows["c-ov-int8"]["withinBudget"] is False and rows["c-ov-int8"]["accuracyOk"] is False
    # the fastest row is over the budget: the best is the step's verdict, the fastest within it
    assert st["best"] == {"conversion": "c-ort-int8", "backend": "onnxruntime", "precision": "int8",
                          "p50Ms": 24.0, "mapDrop": 0.009, "summary": "onnxruntime int8 24.0ms drop 0.009"}
    assert st["latency"] == {"pipeline": {"p50Ms": 24.0, "p99Ms": 30.0, "meanMs": 25.0}}
    assert (st["backend"], st["precision"], st["throughputFps"], st["peakRssMiB"]) == ("onnxruntime", "int8",
                                                                                        40.0, 120.0)
    assert st["artifacts"]["plot"] == "pvc://edgetune-artifacts/demo/edgebenchmark/sweep/sweep/sweep.svg"
    assert st["artifacts"]["plotPng"].endswith("/sweep/sweep.png")
    assert st["device"] == "Intel Xeon (2 CPUs, x86_64)"
    assert "best: onnxruntime int8" in st["message"]

    samples = metrics.derive([{**body, "status": st}])
    lat = {s[1]["conversion"]: s[2] for s in samples if s[0] == "edgetune_sweep_latency_seconds"
           and s[1]["quantile"] == "0.5"}
    assert lat == {"c-ort-fp32": 0.040, "c-ort-int8": 0.024, "c-ov-int8": 0.012}
    best = {s[1]["conversion"]: s[2] for s in samples if s[0] == "edgetune_sweep_best_info"}
    assert best == {"c-ort-fp32": 0.0, "c-ort-int8": 1.0, "c-ov-int8": 0.0}
    mem = [s for s in samples if s[0] == "edgetune_sweep_peak_memory_bytes" and s[1]["conversion"] == "c-ort-int8"]
    assert mem[0][2] == 120.0 * 2 ** 20 and mem[0][1]["backend"] == "onnxruntime"

    # a later change of the selection does not change a sweep that has started
    body = advance(body, p)
    p = kinds.plan(body, jobs, pods, S, at(200), related=CONVS[:1])
    assert p.status["phase"] == "Succeeded" and len(p.status["rows"]) == 3 and not p.create


def test_a_sweep_without_any_built_model_fails_with_the_reasons():
    unbuilt = [conv("c-a", "openvino", "fp32", phase="Failed", built=False,
                    message="build-engine: BackendUnavailable: backend openvino is not available in image j")]
    p = kinds.plan(sweep_body(), [], [], S, at(0), related=unbuilt)
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "NoModels"
    assert "BackendUnavailable" in p.status["message"] and not p.create


def test_the_store_enqueues_a_selecting_sweep_when_a_conversion_changes():
    store = Store(kinds.related_key, kinds.is_selector, kinds.selects)
    store.put(sweep_body())
    store.put(res("EdgeBenchmark", {"modelConversion": "c-ort-fp32"}, "single"))
    store.put(CONVS[0])
    store.put(CONVS[3])
    key = ("ModelConversion", "demo", "c-ort-fp32")
    assert sorted(store.dependents(key)) == [("EdgeBenchmark", "demo", "single"), ("EdgeBenchmark", "demo", "sweep")]
    assert store.dependents(("ModelConversion", "demo", "c-trt")) == []  # labelled for another sweep
    related = kinds.related(store.get(("EdgeBenchmark", "demo", "sweep")), store.get, store.in_namespace)
    assert [b["metadata"]["name"] for b in related] == ["c-ort-fp32"]
    store.forget(("EdgeBenchmark", "demo", "sweep"))
    assert store.dependents(key) == [("EdgeBenchmark", "demo", "single")]


def test_single_benchmark_records_peak_memory():
    from test_operator_plan import BENCH, conv_done, run_step

    bench = json.loads(BENCH)
    bench["metrics"]["peak_rss_mib"] = 321.5
    body = res("EdgeBenchmark", {"modelConversion": "conv"}, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=conv_done())
    (manifest,) = p.create
    body = advance(body, p)
    jobs, pods = run_step(body, manifest, json.dumps(bench), 100)
    st = kinds.plan(body, jobs, pods, S, at(101), related=conv_done()).status
    assert st["peakRssMiB"] == 321.5 and st["history"][0]["peakRssMiB"] == 321.5 and "peakDeviceMiB" not in st
    samples = metrics.derive([{**body, "status": st}])
    assert [s[2] for s in samples if s[0] == "edgetune_benchmark_peak_memory_bytes"] == [321.5 * 2 ** 20]
