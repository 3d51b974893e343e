"""The one source of truth for the three CRDs.

The OpenAPI schemas (with descriptions, defaults, enums, bounds, patterns and CEL rules),
printer columns and names are defined here as Python data: the building blocks in
:mod:`.common`, each kind's spec, status and columns in its own module. ``crds/*.yaml`` is
*generated* from this package (``python -m edgetune_operator.crdgen``; a unit test fails when
the files drift), and the operator applies the very same defaults (:func:`apply_defaults`)
when it builds Jobs, so the operator's defaults and the API server's cannot differ.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from edgetune_contract.names import GROUP, KINDS, PLURALS, VERSION

from . import edgebenchmark, finetunejob, modelconversion
from .common import NAME_RULE, PHASES, STEP_PHASES, string

CATEGORIES = ["edgetune", "all-edgetune"]
KIND_SCHEMAS = {"FinetuneJob": finetunejob, "ModelConversion": modelconversion, "EdgeBenchmark": edgebenchmark}
assert tuple(KIND_SCHEMAS) == KINDS
__all__ = ["GROUP", "VERSION", "KINDS", "PHASES", "STEP_PHASES", "crd", "all_crds", "apply_defaults",
           "defaults", "spec_schema", "openapi_schema"]


def openapi_schema(kind: str) -> dict:
    mod = KIND_SCHEMAS[kind]
    return {
        "type": "object",
        "description": mod.DESCRIPTION,
        "properties": {
            "apiVersion": string("APIVersion defines the versioned schema of this representation of an object."),
            "kind": string("Kind is a string value representing the REST resource this object represents."),
            "metadata": {"type": "object"},  # the API server allows nothing else here
            "spec": mod.spec(),
            "status": mod.status(),
        },
        "required": ["spec"],
        "x-kubernetes-validations": [NAME_RULE],
    }


def crd(kind: str) -> dict:
    plural = PLURALS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "edgetune", "app.kubernetes.io/part-of": "edgetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": KIND_SCHEMAS[kind].SHORT_NAMES, "categories": CATEGORIES},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": KIND_SCHEMAS[kind].COLUMNS,
                "schema": {"openAPIV3Schema": openapi_schema(kind)},
            }],
        },
    }


def all_crds() -> list[dict]:
    return [crd(k) for k in KINDS]


# --- defaults ---------------------------------------------------------------------------------


def _default_into(schema: dict, value: Any) -> Any:
    """Structural defaulting as the API server does it: absent properties with a default get it,
    then defaulting recurses into objects (including defaulted ones) and array items."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _default_into(sub, value[key])
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key in list(value):
                if key not in props:
                    value[key] = _default_into(addl, value[key])
    elif isinstance(value, list) and schema.get("type") == "array":
        return [_default_into(schema["items"], v) for v in value]
    return value


@functools.lru_cache(maxsize=None)
def _spec_schema_cached(kind: str) -> dict:
    return KIND_SCHEMAS[kind].spec()


def spec_schema(kind: str) -> dict:
    """The spec's OpenAPI schema (built once; callers must not modify it)."""
    return _spec_schema_cached(kind)


def apply_defaults(kind: str, spec: dict | None) -> dict:
    """The spec with the CRD's defaults filled in (a deep copy)."""
    return _default_into(spec_schema(kind), copy.deepcopy(spec or {}))


def defaults(kind: str) -> dict:
    """The defaults of an empty spec (for documentation and tests)."""
    return apply_defaults(kind, {})
