"""examples/ and operator/rbac/: valid against the CRD schemas (structurally; the CEL rules are
checked by the API server in tests/cluster/test_crd_validation.py), RBAC without wildcards."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from edgetune_operator import schema

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml"))


def validate(node, value, path="spec"):
    """A small structural validator: types, required, enums, bounds, patterns, unknown fields."""
    errors = []
    if node.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, (int, str)) and not isinstance(value, bool)
        if not ok or (isinstance(value, str) and "pattern" in node and not re.search(node["pattern"], value)):
            errors.append(f"{path}: not a quantity: {value!r}")
        return errors
    t = node.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if t and not isinstance(value, types[t]) or (t in ("integer", "number") and isinstance(value, bool)):
        return [f"{path}: expected {t}, got {type(value).__name__}"]
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} not in {node['enum']}")
    if t in ("integer", "number"):
        if "minimum" in node and (value <= node["minimum"] if node.get("exclusiveMinimum") else value < node["minimum"]):
            errors.append(f"{path}: below minimum")
        if "maximum" in node and value > node["maximum"]:
            errors.append(f"{path}: above maximum")
    if t == "string":
        if "pattern" in node and not re.search(node["pattern"], value):
            errors.append(f"{path}: does not match {node['pattern']}")
        if len(value) > node.get("maxLength", 10**9) or len(value) < node.get("minLength", 0):
            errors.append(f"{path}: bad length")
    if t == "object":
        props = node.get("properties")
        for req in node.get("required") or []:
            if req not in value:
                errors.append(f"{path}.{req}: required")
        for k, v in value.items():
            if props is not None and k in props:
                errors += validate(props[k], v, f"{path}.{k}")
            elif isinstance(node.get("additionalProperties"), dict):
                errors += validate(node["additionalProperties"], v, f"{path}.{k}")
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{k}: unknown field")
    if t == "array":
        if len(value) > node.get("maxItems", 10**9):
            errors.append(f"{path}: too many items")
        for i, v in enumerate(value):
            errors += validate(node["items"], v, f"{path}[{i}]")
    return errors


def docs(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_there_are_examples_of_every_kind_locally_and_for_a_real_cluster():
    for folder in ("local", "cluster"):
        kinds = {d["kind"] for p in (ROOT / "examples" / folder).glob("*.yaml") for d in docs(p)}
        assert set(schema.KINDS) <= kinds, folder


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_are_valid(path):
    for d in docs(path):
        if d.get("apiVersion") != "edgetune.io/v1alpha1":
            continue
        assert d["kind"] in schema.KINDS
        assert len(d["metadata"]["name"]) <= 63 and d["metadata"].get("namespace")
        spec = schema.apply_defaults(d["kind"], d["spec"])
        assert validate(schema.spec_schema(d["kind"]), spec) == []


def test_the_validator_catches_mistakes():
    bad = {"dataset": {"generate": {"images": 2}}, "training": {"epochs": "3", "bogus": 1}}
    errs = validate(schema.spec_schema("FinetuneJob"), schema.apply_defaults("FinetuneJob", bad))
    assert any("images: below minimum" in e for e in errs)
    assert any("epochs: expected integer" in e for e in errs)
    assert any("bogus: unknown field" in e for e in errs)


RBAC = ROOT / "operator" / "rbac" / "rbac.yaml"
EXPECTED = {
    ("edgetune.io", "finetunejobs"): {"get", "list", "watch"},
    ("edgetune.io", "modelconversions"): {"get", "list", "watch"},
    ("edgetune.io", "edgebenchmarks"): {"get", "list", "watch"},
    ("edgetune.io", "finetunejobs/status"): {"patch"},
    ("edgetune.io", "modelconversions/status"): {"patch"},
    ("edgetune.io", "edgebenchmarks/status"): {"patch"},
    ("batch", "jobs"): {"list", "watch", "create", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "services"): {"create"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"create"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("", "nodes"): {"get", "list", "watch"},  # read-only: is the node a step runs on Ready?
}


def test_rbac_lists_exactly_the_verbs_used():
    got: dict = {}
    for d in docs(RBAC):
        for rule in d.get("rules") or []:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    assert "*" not in (g, r) and "*" not in rule["verbs"]
                    got.setdefault((g, r), set()).update(rule["verbs"])
    assert got == EXPECTED
    lease_role = next(d for d in docs(RBAC) if d["kind"] == "Role")
    assert lease_role["rules"][0]["resources"] == ["leases"]  # namespaced, not cluster-wide
