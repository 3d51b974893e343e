import math

import pytest

np = pytest.importorskip("numpy", reason="numpy comes with requirements/ml.txt (make install)")

from edgetune_contract.results import LATENCY_STATS, STAGES  # noqa: E402
from edgetune_jobs.inference.stats import fps, latency_stats, stage_stats  # noqa: E402


def test_keys_and_known_values():
    s = latency_stats([float(v) for v in range(1, 101)])  # 1..100 ms
    assert tuple(s) == LATENCY_STATS
    assert s["mean_ms"] == 50.5
    assert s["min_ms"] == 1.0 and s["max_ms"] == 100.0
    assert s["p50_ms"] == pytest.approx(50.5)
    assert s["p90_ms"] == pytest.approx(90.1)
    assert s["p99_ms"] == pytest.approx(99.01)


def test_single_sample():
    s = latency_stats([3.25])
    assert set(s.values()) == {3.25}


@pytest.mark.parametrize("seed", range(5))
def test_monotone_percentiles_on_skewed_samples(seed):
    rng = np.random.default_rng(seed)
    a = np.concatenate([rng.gamma(2.0, 3.0, 997), [250.0, 400.0, 0.1]])  # heavy tail
    s = latency_stats(a)
    assert s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] <= s["p99_ms"] <= s["max_ms"]
    assert s["min_ms"] <= s["mean_ms"] <= s["max_ms"]
    assert s["p50_ms"] == pytest.approx(float(np.median(a)), abs=1e-4)


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [1.0, float("inf")], [-1.0]])
def test_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        latency_stats(bad)


def test_stage_stats_and_fps():
    samples = {st: [1.0, 2.0, 3.0] for st in STAGES}
    samples["postprocess"] = []
    out = stage_stats(samples)
    assert set(out) == set(STAGES) - {"postprocess"}
    assert fps([10.0, 10.0]) == 100.0
    assert fps([]) == 0.0
    assert math.isfinite(fps([0.5]))
