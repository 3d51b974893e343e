"""Metrics are derived from status: same status, same figures (a restarted operator included)."""
from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edgetune_operator.metrics import GAUGES, Metrics, derive

FT = {"kind": "FinetuneJob", "metadata": {"namespace": "demo", "name": "balloon"},
      "spec": {"model": {"config": "rtmdet_tiny_8xb32-300e_coco"}},
      "status": {"phase": "Succeeded", "model": "rtmdet_tiny_8xb32-300e_coco", "progress": {"percent": 100.0},
                 "metrics": {"base": {"mAP": 0.185, "mAP50": 0.229, "mAP75": 0.215},
                             "finetuned": {"mAP": 0.7, "mAP50": 0.818, "mAP75": 0.776, "mAP_s": 0.02}},
                 "steps": [{"name": "finetune", "durationSeconds": 812.5}]}}
MC = {"kind": "ModelConversion", "metadata": {"namespace": "demo", "name": "conv"},
      "spec": {"backend": "tensorrt", "precision": "fp16"},
      "status": {"phase": "Succeeded", "model": "rtmdet_tiny_8xb32-300e_coco",
                 "metrics": {"converted": {"mAP": 0.696}, "reference": {"mAP": 0.7}, "mapDrop": 0.004}}}
EB = {"kind": "EdgeBenchmark", "metadata": {"namespace": "demo", "name": "bench"}, "spec": {},
      "status": {"phase": "Running", "model": "rtmdet_tiny_8xb32-300e_coco", "device": "jetson-orin",
                 "backend": "tensorrt", "precision": "fp16", "throughputFps": 60.2,
                 "lastRunTime": "2025-07-26T20:00:00Z",
                 "latency": {"pipeline": {"meanMs": 16.6, "p50Ms": 16.5, "p90Ms": 17.1, "p99Ms": 18.6},
                             "inference": {"p50Ms": 10.9}}}}


def samples():
    return {(n, tuple(sorted(lbl.items()))): v for n, lbl, v in derive([FT, MC, EB])}


def get(metric, **labels):
    for (n, lbl), v in samples().items():
        if n == metric and all(dict(lbl).get(k) == w for k, w in labels.items()):
            return v
    raise KeyError((metric, labels))


def test_finetune():
    assert get("edgetune_finetune_map_ratio", which="finetuned", iou="0.50:0.95", model="rtmdet_tiny_8xb32-300e_coco") == 0.7
    assert get("edgetune_finetune_map_ratio", which="base", iou="0.50") == 0.229
    assert get("edgetune_finetune_map_ratio", which="finetuned", iou="0.75") == 0.776
    assert get("edgetune_finetune_progress_ratio", name="balloon") == 1.0
    assert get("edgetune_job_duration_seconds", kind="FinetuneJob", step="finetune") == 812.5


def test_conversion_and_benchmark():
    assert get("edgetune_conversion_map_ratio", which="converted", backend="tensorrt", precision="fp16") == 0.696
    assert get("edgetune_conversion_map_drop_ratio", name="conv") == 0.004
    assert abs(get("edgetune_benchmark_latency_seconds", stage="pipeline", quantile="0.99") - 0.0186) < 1e-12
    assert abs(get("edgetune_benchmark_latency_seconds", stage="pipeline", quantile="mean") - 0.0166) < 1e-12
    assert get("edgetune_benchmark_latency_seconds", stage="inference", quantile="0.5", device="jetson-orin") == 0.0109
    assert get("edgetune_benchmark_throughput_fps", name="bench") == 60.2
    assert get("edgetune_benchmark_last_run_timestamp_seconds", name="bench") == 1753560000.0


def test_phase_counts_cover_every_kind_and_phase():
    assert get("edgetune_resources", kind="FinetuneJob", phase="Succeeded") == 1
    assert get("edgetune_resources", kind="EdgeBenchmark", phase="Running") == 1
    assert get("edgetune_resources", kind="EdgeBenchmark", phase="Failed") == 0


def test_same_status_same_figures():
    assert derive([FT, MC, EB]) == derive([dict(FT), dict(MC), dict(EB)])


def test_exposition():
    m = Metrics(lambda: [FT, MC, EB])
    m.reconcile_errors.labels("FinetuneJob", "Conflict").inc()
    m.job_failures.labels("ModelConversion", "verify").inc()
    text = generate_latest(m.registry).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    for name in GAUGES:
        assert name in names, name
    assert "edgetune_reconcile_errors_total{kind=\"FinetuneJob\",reason=\"Conflict\"} 1.0" in text
    assert "edgetune_job_failures_total{kind=\"ModelConversion\",step=\"verify\"} 1.0" in text
    assert "process_resident_memory_bytes" in text
