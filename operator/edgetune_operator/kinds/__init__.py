"""One module per kind, each holding its plan (which Jobs, from which typed step arguments),
how its step results become status, and its metrics; :mod:`.common` holds what they share.

    plan(body, jobs, pods, settings, now, related=..., progress=..., nodes=...) -> Plan
is the operator's whole decision for one resource: pure, so the lifecycle tests drive it
directly.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from edgetune_contract.names import KINDS
from edgetune_contract.progress import Progress

from ..settings import Settings
from . import edgebenchmark, finetunejob, modelconversion
from .common import Context, Plan

MODULES = {m.KIND: m for m in (finetunejob, modelconversion, edgebenchmark)}
assert tuple(MODULES) == KINDS, "one module per kind"


def plan(body: Mapping[str, Any], jobs: list[dict], pods: list[dict], settings: Settings,
         now: dt.datetime, *, related: Mapping[str, Any] | None = None,
         progress: Progress | None = None, nodes: Mapping[str, dict] | None = None) -> Plan:
    """Everything the operator should do for one resource, given what it sees (nodes: the
    summaries of the nodes its Pods run on; of every node for a fleet benchmark)."""
    module = MODULES.get(body.get("kind"))
    if module is None:
        raise ValueError(f"unknown kind {body.get('kind')!r}")
    return module.plan(Context(body, jobs, pods, settings, now, nodes), related, progress)


def related_key(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The (kind, namespace, name) of the resource this one depends on, if any."""
    module = MODULES.get(body.get("kind"))
    return module.related_key(body) if module else None


def is_selector(body: Mapping[str, Any]) -> bool:
    """Whether the resource depends on a set of others chosen by selects() (a sweep)."""
    module = MODULES.get(body.get("kind"))
    return bool(getattr(module, "is_selector", None) and module.is_selector(body))


def selects(body: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    module = MODULES.get(body.get("kind"))
    return bool(getattr(module, "selects", None) and module.selects(body, other))


def related(body: Mapping[str, Any], get: Any, in_namespace: Any) -> Any:
    """What the planner needs of other resources: the body of the one this resource refers to
    (or None), or for a sweep the list of the resources in its namespace that it selects.
    get(key) -> body; in_namespace(kind, namespace) -> bodies."""
    if is_selector(body):
        ns = body["metadata"]["namespace"]
        return [b for b in in_namespace("ModelConversion", ns) if selects(body, b)]
    return get(related_key(body))


def wants_all_nodes(body: Mapping[str, Any]) -> bool:
    """Whether the planner needs every node (an unfinished fleet benchmark or per-device-group
    conversion: they select nodes by their labels), not only those its Pods run on."""
    return body.get("kind") in ("EdgeBenchmark", "ModelConversion") and (body.get("spec") or {}).get("fleet") \
        is not None and (body.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def samples(body: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """The metric samples of one resource's status."""
    module = MODULES.get(body.get("kind"))
    return module.samples(body) if module else []


GAUGES = {name: spec for m in MODULES.values() for name, spec in m.GAUGES.items()}
