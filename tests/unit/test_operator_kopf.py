"""kopf is wired so that it keeps no state in our objects: only watching and indexing handlers
(no progress/diff-base annotations, no finalizers, nothing in status)."""
from __future__ import annotations

import kopf
from kopf._core.intents import handlers as kh

from edgetune_operator.controller import handlers  # noqa: F401  (registers the handlers)


def registry_handlers():
    from kopf._core.intents.registries import get_default_registry
    return get_default_registry()


def test_only_watching_and_indexing_handlers():
    reg = registry_handlers()
    assert not reg._changing.get_all_handlers(), "change-detecting handlers would store progress annotations"
    assert not reg._spawning.get_all_handlers(), "timers/daemons would add a finalizer"
    assert not reg._webhooks.get_all_handlers()
    watching = reg._watching.get_all_handlers()
    indexing = reg._indexing.get_all_handlers()
    assert {h.id for h in indexing} == {"edgetune_jobs", "edgetune_pods", "edgetune_nodes"}
    ids = {h.id for h in watching}
    assert {"edgetune-finetunejobs", "edgetune-modelconversions", "edgetune-edgebenchmarks"} <= ids
    for h in watching + indexing:
        assert isinstance(h, (kh.WatchingHandler, kh.IndexingHandler))


def test_configure_kopf():
    s = kopf.OperatorSettings()
    handlers.configure_kopf(s, "me")
    # an API server restart (403 until its RBAC caches are warm, 5xx while etcd is away) is
    # waited out for minutes, not kopf's default 54 s
    assert sum(s.networking.error_backoffs) >= 240 > sum(kopf.OperatorSettings().networking.error_backoffs)
    ps = s.persistence.progress_storage
    assert isinstance(ps, kopf.AnnotationsProgressStorage) and ps.prefix == "kopf.edgetune.io"
    assert not isinstance(ps, kopf.StatusProgressStorage)
    assert isinstance(s.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert s.persistence.diffbase_storage.prefix == "kopf.edgetune.io"
    assert s.peering.standalone is True and s.scanning.disabled is True
    assert s.posting.reporting_component == "edgetune-operator"
