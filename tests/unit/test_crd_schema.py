"""The CRDs: generated from edgetune_operator.schema (no drift), structural, documented."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edgetune_operator import crdgen, schema

ROOT = Path(__file__).resolve().parents[2]


def walk(node, path="$"):
    """Yield (path, schema node) for every node of an OpenAPI schema."""
    yield path, node
    for k, v in (node.get("properties") or {}).items():
        yield from walk(v, f"{path}.{k}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def test_files_match_the_code():
    assert crdgen.main(["--check", "--out", str(ROOT / "crds")]) == 0, \
        "crds/ is stale: run `python -m edgetune_operator.crdgen`"


@pytest.mark.parametrize("kind", schema.KINDS)
def test_crd_shape(kind):
    crd = yaml.safe_load((ROOT / "crds" / crdgen.filename(kind)).read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    spec = crd["spec"]
    assert spec["group"] == "edgetune.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"]
    (ver,) = spec["versions"]
    assert ver["name"] == "v1alpha1" and ver["served"] and ver["storage"]
    assert ver["subresources"] == {"status": {}}
    conds = ver["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conds["items"]["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime",
                                                 "observedGeneration"}


@pytest.mark.parametrize("kind", schema.KINDS)
def test_every_field_is_documented_and_structural(kind):
    root = schema.openapi_schema(kind)
    for path, node in walk(root):
        if path == "$.metadata":
            assert node == {"type": "object"}  # the API server forbids anything else
            continue
        assert node.get("description"), f"{kind} {path} has no description"
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{kind} {path} has no type"
        if node.get("type") == "object":
            assert ("properties" in node or "additionalProperties" in node
                    or node.get("x-kubernetes-preserve-unknown-fields")), f"{kind} {path}: unstructured object"
            assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "array":
            assert "items" in node, path
        for r in node.get("x-kubernetes-validations") or []:
            assert r["rule"] and r["message"], path


def _check_default(node, value, path):
    t = node.get("type")
    if t == "object":
        assert isinstance(value, dict), path
        for k, v in value.items():
            _check_default(node["properties"][k], v, f"{path}.{k}")
    elif t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), path
    elif t == "number":
        assert isinstance(value, (int, float)), path
    elif t == "boolean":
        assert isinstance(value, bool), path
    elif t == "string":
        assert isinstance(value, str), path
        if "pattern" in node:
            assert re.search(node["pattern"], value), path
    if "enum" in node:
        assert value in node["enum"], path
    if "minimum" in node:
        assert value > node["minimum"] if node.get("exclusiveMinimum") else value >= node["minimum"], path
    if "maximum" in node:
        assert value <= node["maximum"], path


@pytest.mark.parametrize("kind", schema.KINDS)
def test_defaults_are_valid(kind):
    for path, node in walk(schema.openapi_schema(kind)):
        if "default" in node:
            _check_default(node, node["default"], path)


def test_image_sizes_default_to_a_multiple_of_32():
    assert schema.defaults("FinetuneJob")["training"]["imageSize"] % 32 == 0
    assert schema.defaults("ModelConversion")["imageSize"] % 32 == 0


def test_operator_defaults_are_the_crd_defaults():
    d = schema.defaults("FinetuneJob")
    assert d["training"] == {"epochs": 40, "batchSize": 12, "imageSize": 640, "learningRate": 0.004, "seed": 0,
                             "workers": 2, "valInterval": 10, "evalBase": True, "device": "auto",
                             "replicas": 1, "processesPerReplica": 1, "startTimeoutSeconds": 600}
    assert d["model"]["config"] == "rtmdet_tiny_8xb32-300e_coco"
    m = schema.defaults("ModelConversion")
    assert (m["backend"], m["precision"], m["verify"]) == ("tensorrt", "fp16", {"enabled": True, "maxMapDrop": 0.02})
    e = schema.defaults("EdgeBenchmark")
    assert (e["warmup"], e["iterations"], e["historyLimit"]) == (20, 200, 5)


def test_apply_defaults_keeps_given_values_and_fills_nested():
    spec = schema.apply_defaults("FinetuneJob", {"dataset": {"generate": {"images": 8}},
                                                 "training": {"epochs": 3}})
    assert spec["dataset"]["generate"] == {"images": 8, "seed": 0}
    assert spec["dataset"]["format"] == "via"
    assert spec["training"]["epochs"] == 3 and spec["training"]["batchSize"] == 12
    spec = schema.apply_defaults("ModelConversion", {"source": {"finetuneJob": "x"},
                                                     "target": {"tolerations": [{"key": "k"}]}})
    assert spec["target"]["tolerations"] == [{"key": "k", "operator": "Equal"}]


def _rules(kind):
    return [r["rule"] for _, n in walk(schema.openapi_schema(kind)) for r in n.get("x-kubernetes-validations") or []]


@pytest.mark.parametrize("kind", schema.KINDS)
def test_spec_is_immutable(kind):
    spec = schema.openapi_schema(kind)["properties"]["spec"]
    assert {"rule": "self == oldSelf", "message": "spec is immutable: create a new resource for a new run"} in \
        spec["x-kubernetes-validations"]


def test_cel_rules_present():
    ft, mc = _rules("FinetuneJob"), _rules("ModelConversion")
    assert "self % 32 == 0" in ft and "self % 32 == 0" in mc
    assert any("has(self.url), has(self.path), has(self.generate)" in r for r in ft)
    assert any("has(self.finetuneJob), has(self.model)" in r for r in mc)
    assert any("int8" in r and "calibration" in r for r in mc)


PRINTER = {
    "FinetuneJob": ["Phase", "Progress", "mAP", "mAP50", "Age"],
    "ModelConversion": ["Phase", "Stage", "Backend", "Precision", "AP-drop", "Age"],
    "EdgeBenchmark": ["Phase", "Device", "P50(ms)", "P99(ms)", "FPS", "Best", "Fleet", "Age"],
}


@pytest.mark.parametrize("kind", schema.KINDS)
def test_printer_columns(kind):
    cols = schema.crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [c["name"] for c in cols if not c.get("priority")]
    assert shown == PRINTER[kind]
    root = schema.openapi_schema(kind)
    for c in cols:
        if c["jsonPath"].startswith(".metadata"):
            continue
        node = root
        for part in c["jsonPath"].lstrip(".").split("."):
            node = (node.get("properties") or {}).get(part)
            assert node is not None, f"{kind} column {c['name']}: {c['jsonPath']} not in the schema"
        assert node["type"] == c["type"] or (c["type"] == "number" and node["type"] == "integer")
