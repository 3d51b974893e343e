"""Latency statistics of the benchmark step (numpy only)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from edgetune_contract.results import LATENCY_STATS


def latency_stats(samples_ms: Sequence[float] | np.ndarray) -> dict[str, float]:
    """mean/p50/p90/p99/min/max (edgetune_contract.results.LATENCY_STATS) of latencies in milliseconds.

    Percentiles are numpy's default (linear interpolation between closest ranks), which is
    monotone in q: min <= p50 <= p90 <= p99 <= max always holds.
    """
    a = np.asarray(samples_ms, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError("no latency samples")
    if not np.all(np.isfinite(a)):
        raise ValueError("latency samples must be finite")
    if np.any(a < 0):
        raise ValueError("latency samples must be >= 0")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    values = (a.mean(), p50, p90, p99, a.min(), a.max())
    return {k: round(float(v), 4) for k, v in zip(LATENCY_STATS, values)}


def stage_stats(samples: Mapping[str, Sequence[float]]) -> dict[str, dict[str, float]]:
    """latency_stats for each stage that has samples."""
    return {stage: latency_stats(v) for stage, v in samples.items() if len(v)}


def fps(pipeline_ms: Sequence[float]) -> float:
    """Throughput of a sequential pipeline: images per second from the mean latency."""
    a = np.asarray(pipeline_ms, dtype=np.float64)
    mean = float(a.mean()) if a.size else 0.0
    return round(1000.0 / mean, 3) if mean > 0 else 0.0
