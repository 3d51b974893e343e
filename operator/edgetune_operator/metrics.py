"""Prometheus metrics, derived from the resources' status at scrape time.

Every gauge is computed from the status the operator has written (and re-reads on a
restart), so a restarted operator serves the same figures. Only the two counters
(reconcile errors, job failures) are process-local, as counters are.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily

from edgetune_contract.names import KIND_STEPS, KINDS

from . import kinds
from .kinds.common import num
from .schema import PHASES

# name -> (help, label names): each kind's own, and those of every resource
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    **kinds.GAUGES,
    "edgetune_resources": ("Number of edgetune resources per kind and phase.", ("kind", "phase")),
    "edgetune_job_duration_seconds": ("Run time of each step's Job (completion - start).",
                                      ("namespace", "name", "kind", "step")),
}


def derive(resources: Iterable[Mapping[str, Any]]) -> list[tuple[str, dict[str, str], float]]:
    """(metric, labels, value) samples from resource bodies. Pure."""
    out: list[tuple[str, dict[str, str], float]] = []
    counts = {(k, p): 0 for k in KINDS for p in PHASES}
    for body in resources:
        kind = body.get("kind")
        meta = body.get("metadata") or {}
        st = body.get("status") or {}
        if kind in KINDS:
            phase = st.get("phase") or "Pending"
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for step in st.get("steps") or []:
            d = num(step.get("durationSeconds"))
            if d is not None:
                out.append(("edgetune_job_duration_seconds",
                            {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""),
                             "kind": kind or "", "step": step.get("name", "")}, d))
        out.extend(kinds.samples(body))
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
        for kind, steps in KIND_STEPS.items():
            for step in steps:
                self.job_failures.labels(kind, step)

    def serve(self, port: int, addr: str = "0.0.0.0"):
        from prometheus_client import start_http_server
        return start_http_server(port, addr=addr, registry=self.registry)


__all__ = ["derive", "Metrics", "StatusCollector", "GAUGES"]
