"""The operator's in-memory view: resource bodies as the watch delivers them (also the metrics'
source), a reverse index of which resources depend on which, and the Jobs it created that the
Job index does not show yet."""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from .. import observe

Key = tuple[str, str, str]  # (kind, namespace, name)
# How long a Job we created may stay missing from the index before we stop counting on it.
EXPECTATION_TTL = 30.0


def plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _rv(body: Mapping[str, Any] | None) -> int | None:
    try:
        return int(((body or {}).get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


class Store:
    """Resource bodies by key; `related` names the resource a body depends on (kinds.related_key);
    a body for which `is_selector` holds depends on every resource of its namespace that
    `selects(body, other)` accepts (a sweep over ModelConversions chosen by name or label)."""

    def __init__(self, related: Callable[[Mapping[str, Any]], Key | None],
                 is_selector: Callable[[Mapping[str, Any]], bool] | None = None,
                 selects: Callable[[Mapping[str, Any], Mapping[str, Any]], bool] | None = None):
        self.related = related
        self.is_selector = is_selector or (lambda body: False)
        self.selects = selects or (lambda body, other: False)
        self.selectors: dict[Key, None] = {}  # keys of the bodies that select their dependencies
        self.resources: dict[Key, dict] = {}
        # resource -> the resources that depend on it (FinetuneJob -> its ModelConversions, ...)
        self.dependent_keys: dict[Key, dict[Key, None]] = {}

    def bodies(self) -> list[dict]:
        return list(self.resources.values())

    def get(self, key: Key | None) -> dict | None:
        return self.resources.get(key) if key else None

    def put(self, body: Mapping[str, Any], force: bool = False) -> bool:
        """Store a resource body (a raw dict from the API is kept as it is, never mutated).
        False: an older version than the one already stored (e.g. our own patch's response)."""
        if not isinstance(body, dict):
            body = plain(body)
        meta = body["metadata"]
        key = (body["kind"], meta["namespace"], meta["name"])
        old = self.resources.get(key)
        if not force and old is not None and old["metadata"].get("uid") == meta.get("uid"):
            a, b = _rv(old), _rv(body)
            if a is not None and b is not None and b < a:
                return False
        self.resources[key] = body
        if self.is_selector(body):
            self.selectors[key] = None
        else:
            self.selectors.pop(key, None)
        self._relate(key, self.related(old) if old is not None else None, self.related(body))
        return True

    def _relate(self, key: Key, old: Key | None, new: Key | None) -> None:
        if old == new:
            return
        if old is not None:
            deps = self.dependent_keys.get(old, {})
            deps.pop(key, None)
            if not deps:
                self.dependent_keys.pop(old, None)
        if new is not None:
            self.dependent_keys.setdefault(new, {})[key] = None

    def forget(self, key: Key) -> None:
        self.selectors.pop(key, None)
        body = self.resources.pop(key, None)
        if body is not None:
            self._relate(key, self.related(body), None)

    def dependents(self, key: Key) -> list[Key]:
        deps = list(self.dependent_keys.get(key, ()))
        body = self.resources.get(key)
        for sel in self.selectors:
            if sel[1] == key[1] and sel not in deps and sel != key:
                # a deleted body is no longer stored: its selectors look again anyway
                if body is None or self.selects(self.resources[sel], body):
                    deps.append(sel)
        return deps

    def in_namespace(self, kind: str, namespace: str) -> list[dict]:
        return [b for (k, ns, _), b in self.resources.items() if k == kind and ns == namespace]


class JobExpectations:
    """Jobs created but not yet seen in the index (as controller-runtime keeps them): without
    them, the reconcile that our own status patch triggers would try each Job again."""

    def __init__(self, ttl: float = EXPECTATION_TTL):
        self.ttl = ttl
        self.expected: dict[Key, dict[str, tuple[float, dict]]] = {}

    def expect(self, key: Key, job: Mapping[str, Any]) -> None:
        summary = observe.summarize_job(job)
        self.expected.setdefault(key, {})[summary["name"]] = (time.monotonic(), summary)

    def drop(self, key: Key, job_name: str | None = None) -> None:
        if job_name is None:
            self.expected.pop(key, None)
        else:
            self.expected.get(key, {}).pop(job_name, None)

    def with_expected(self, key: Key, jobs: list[dict]) -> list[dict]:
        """The index's Jobs plus those we created that it does not show yet (for a while)."""
        expected = self.expected.get(key)
        if not expected:
            return jobs
        seen = {j["name"] for j in jobs}
        now = time.monotonic()
        for name, (t, _) in list(expected.items()):
            if name in seen or now - t > self.ttl:
                del expected[name]
        if not expected:
            del self.expected[key]
            return jobs
        return jobs + [summary for _, summary in expected.values()]
