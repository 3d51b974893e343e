"""Prometheus metrics, derived from the resources' status at scrape time.

Every gauge is computed from the status the operator has written (and re-reads on a
restart), so a restarted operator serves the same figures. Only the two counters
(reconcile errors, job failures) are process-local, as counters are.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from edgetune_jobs import contract

from . import schema

IOU = {"mAP": "0.50:0.95", "mAP50": "0.50", "mAP75": "0.75"}
QUANTILES = {"p50Ms": "0.5", "p90Ms": "0.9", "p99Ms": "0.99", "meanMs": "mean"}

# name -> (help, label names)
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgetune_finetune_map_ratio": ("COCO bbox mAP of a FinetuneJob's base or fine-tuned model (0-1).",
                                    ("namespace", "name", "model", "which", "iou")),
    "edgetune_finetune_progress_ratio": ("Training progress of a FinetuneJob (0-1).", ("namespace", "name")),
    "edgetune_conversion_map_ratio": ("COCO bbox mAP of a converted model or its PyTorch reference (0-1).",
                                      ("namespace", "name", "model", "backend", "precision", "which")),
    "edgetune_conversion_map_drop_ratio": ("mAP(PyTorch) - mAP(converted) of a ModelConversion.",
                                           ("namespace", "name", "model", "backend", "precision")),
    "edgetune_benchmark_latency_seconds": ("Latency of an EdgeBenchmark's last successful run per stage and "
                                           "quantile (quantile=mean is the mean).",
                                           ("namespace", "name", "model", "device", "backend", "precision",
                                            "stage", "quantile")),
    "edgetune_benchmark_throughput_fps": ("Frames per second of an EdgeBenchmark's last successful run.",
                                          ("namespace", "name", "model", "device", "backend", "precision")),
    "edgetune_benchmark_last_run_timestamp_seconds": ("Unix time of an EdgeBenchmark's last successful run.",
                                                      ("namespace", "name")),
    "edgetune_resources": ("Number of edgetune resources per kind and phase.", ("kind", "phase")),
    "edgetune_job_duration_seconds": ("Run time of each step's Job (completion - start).",
                                      ("namespace", "name", "kind", "step")),
}


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _ts(text: Any) -> float | None:
    from .observe import parse_time
    t = parse_time(text)
    return t.timestamp() if t else None


def derive(resources: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, str], float]]:
    """(metric, labels, value) samples from resource bodies. Pure."""
    out: list[tuple[str, dict[str, str], float]] = []
    counts = {(k, p): 0 for k in schema.KINDS for p in schema.PHASES}
    for body in resources:
        kind = body.get("kind")
        meta = body.get("metadata") or {}
        ns, name = meta.get("namespace", ""), meta.get("name", "")
        st = body.get("status") or {}
        spec = body.get("spec") or {}
        phase = st.get("phase") or "Pending"
        if kind in schema.KINDS:
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for step in st.get("steps") or []:
            d = _num(step.get("durationSeconds"))
            if d is not None:
                out.append(("edgetune_job_duration_seconds",
                            {"namespace": ns, "name": name, "kind": kind or "", "step": step.get("name", "")}, d))
        model = str(st.get("model") or "")
        if kind == "FinetuneJob":
            model = model or ((spec.get("model") or {}).get("config") or "")
            for which in ("base", "finetuned"):
                m = (st.get("metrics") or {}).get(which) or {}
                for key, iou in IOU.items():
                    v = _num(m.get(key))
                    if v is not None:
                        out.append(("edgetune_finetune_map_ratio", {"namespace": ns, "name": name, "model": model,
                                                                    "which": which, "iou": iou}, v))
            pct = _num((st.get("progress") or {}).get("percent"))
            if pct is not None:
                out.append(("edgetune_finetune_progress_ratio", {"namespace": ns, "name": name}, pct / 100.0))
        elif kind == "ModelConversion":
            base = {"namespace": ns, "name": name, "model": model, "backend": str(spec.get("backend") or ""),
                    "precision": str(spec.get("precision") or "")}
            m = st.get("metrics") or {}
            for which in ("converted", "reference"):
                v = _num((m.get(which) or {}).get("mAP"))
                if v is not None:
                    out.append(("edgetune_conversion_map_ratio", {**base, "which": which}, v))
            v = _num(m.get("mapDrop"))
            if v is not None:
                out.append(("edgetune_conversion_map_drop_ratio", base, v))
        elif kind == "EdgeBenchmark":
            base = {"namespace": ns, "name": name, "model": model, "device": str(st.get("device") or ""),
                    "backend": str(st.get("backend") or ""), "precision": str(st.get("precision") or "")}
            for stage, stats in (st.get("latency") or {}).items():
                for key, q in QUANTILES.items():
                    v = _num((stats or {}).get(key))
                    if v is not None:
                        out.append(("edgetune_benchmark_latency_seconds", {**base, "stage": stage, "quantile": q},
                                    v / 1000.0))
            v = _num(st.get("throughputFps"))
            if v is not None:
                out.append(("edgetune_benchmark_throughput_fps", base, v))
            t = _ts(st.get("lastRunTime"))
            if t is not None:
                out.append(("edgetune_benchmark_last_run_timestamp_seconds", {"namespace": ns, "name": name}, t))
    for (kind, phase), n in sorted(counts.items()):
        out.append(("edgetune_resources", {"kind": kind, "phase": phase}, float(n)))
    return out


class StatusCollector:
    """A prometheus_client collector reading the operator's in-memory resource bodies."""

    def __init__(self, source: Callable[[], Iterable[Mapping[str, Any]]]):
        self.source = source

    def describe(self):
        return [GaugeMetricFamily(n, h, labels=list(lbl)) for n, (h, lbl) in GAUGES.items()]

    def collect(self):
        families = {n: GaugeMetricFamily(n, h, labels=list(lbl)) for n, (h, lbl) in GAUGES.items()}
        for name, labels, value in derive(list(self.source())):
            fam = families[name]
            fam.add_metric([labels[k] for k in GAUGES[name][1]], value)
        yield from families.values()


class Metrics:
    """The operator's registry: status-derived gauges, two counters, process metrics."""

    def __init__(self, source: Callable[[], Iterable[Mapping[str, Any]]]):
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(StatusCollector(source))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.reconcile_errors = Counter("edgetune_reconcile_errors", "Reconciles that raised, by kind and reason.",
                                        ("kind", "reason"), registry=self.registry)
        self.job_failures = Counter("edgetune_job_failures", "Step Jobs seen failing, by kind and step.",
                                    ("kind", "step"), registry=self.registry)
        for kind, steps in (("FinetuneJob", ("finetune",)), ("ModelConversion", ("export", "build-engine", "verify")),
                            ("EdgeBenchmark", ("benchmark",))):
            for step in steps:
                self.job_failures.labels(kind, step)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        from prometheus_client import start_http_server
        return start_http_server(port, addr=addr, registry=self.registry)


__all__ = ["derive", "Metrics", "StatusCollector", "GAUGES", "contract"]
