"""One module per kind, each holding its plan (which Jobs, from which typed step arguments),
how its step results become status, and its metrics; :mod:`.common` holds what they share.

    plan(body, jobs, pods, settings, now, related=..., progress=...) -> Plan
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
         progress: Progress | None = None) -> Plan:
    """Everything the operator should do for one resource, given what it sees."""
    module = MODULES.get(body.get("kind"))
    if module is None:
        raise ValueError(f"unknown kind {body.get('kind')!r}")
    return module.plan(Context(body, jobs, pods, settings, now), related, progress)


def related_key(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The (kind, namespace, name) of the resource this one depends on, if any."""
    module = MODULES.get(body.get("kind"))
    return module.related_key(body) if module else None


def samples(body: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """The metric samples of one resource's status."""
    module = MODULES.get(body.get("kind"))
    return module.samples(body) if module else []


GAUGES = {name: spec for m in MODULES.values() for name, spec in m.GAUGES.items()}
