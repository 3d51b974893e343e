"""Result documents saved from real runs of every step (scripts/result_fixtures.py wrote them
into tests/fixtures/results/) decode into the step's typed result, with every figure the
operator reads, and encode back to the very same document: a key a step renames, or one the
contract drops, fails here without the ML stack."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgetune_contract import names, results

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "results"
DOCS = sorted(FIXTURES.glob("*.json"))


def load(name: str) -> tuple[dict, results.StepResult]:
    text = (FIXTURES / f"{name}.json").read_text()
    return json.loads(text), results.decode(text)


def test_there_is_a_real_document_of_every_step():
    steps = {json.loads(p.read_text())["step"] for p in DOCS}
    assert steps == set(names.STEPS)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.stem)
def test_documents_decode_and_encode_back_unchanged(path):
    doc = json.loads(path.read_text())
    typed = results.decode(path.read_text())
    assert type(typed) is results.RESULT_TYPES[doc["step"]] and typed.ok
    assert typed.to_doc() == doc
    assert len(typed.encode().encode()) <= results.MAX_RESULT_BYTES
    assert set(typed.artifacts) <= set(type(typed).ARTIFACTS)


def test_finetune_figures():
    doc, r = load("finetune")
    assert set(r.base) == set(r.finetuned) == set(results.COCO_KEYS)
    assert all(v is None or 0 <= v <= 1 for v in list(r.base.values()) + list(r.finetuned.values()))
    assert r.provenance["init"] == "checkpoint" and r.artifacts["checkpoint"] == "best.pth"
    _, random_init = load("finetune-random-init")
    assert random_init.base is None and random_init.provenance["init"] == "random"


def test_conversion_figures():
    _, export = load("export")
    assert export.onnx_bytes > 0 and set(export.reference) == set(results.COCO_KEYS)
    _, build = load("build-engine")
    assert build.engine_bytes > 0 and build.build_seconds >= 0 and build.model_artifact() == "end2end.onnx"
    _, verify = load("verify")
    assert verify.map_drop == results.map_drop(verify.reference, verify.converted)
    assert results.accuracy_gate(verify.map_drop, 0.02)  # the run had --max-map-drop 0.02 and succeeded
    assert verify.reference == export.reference  # verify compares against the export's reference


def test_benchmark_figures():
    _, bench = load("benchmark")
    assert set(bench.latency) == set(results.STAGES)
    for stats in bench.latency.values():
        assert stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert bench.fps == pytest.approx(1000 / bench.latency["pipeline"]["mean_ms"], rel=1e-3)
    assert bench.provenance["iterations"] == 50 and bench.provenance["warmup"] == 5
