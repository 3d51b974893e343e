"""The kopf handlers: watches and indices feed the executor (kopf's `memo.executor`, set by
:mod:`..main`), which runs the planner for one resource at a time.

kopf is used for what it is good at — list+watch with reconnects, per-object event
serialisation, in-memory indices populated before any handler runs, the liveness endpoint —
and only through ``@kopf.on.event`` and ``@kopf.index`` handlers. Those keep no state in the
resources: kopf writes no progress annotations, no last-handled-configuration, no finalizers
and nothing into our status (see :func:`configure_kopf`).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import kopf

from edgetune_contract import names

from .. import observe
from .executor import Executor

log = logging.getLogger("edgetune_operator")

KOPF_PREFIX = f"kopf.{names.GROUP}"
ERROR_BACKOFFS = (1, 1, 2, 3, 5, 8, 13, 21, 30, 30, 30, 30, 30, 30, 30)
MANAGED = {names.LABEL_MANAGED_BY: names.MANAGED_BY}


class _NoEssenceDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf deep-copies every body on every event into an "essence" to diff for change handlers.
    There are none here (only event and index handlers), so the essence is left empty: that
    copy was a quarter of the operator's CPU with hundreds of resources."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}


def configure_kopf(settings: kopf.OperatorSettings, identity: str) -> None:
    """kopf's own persistence, peering and posting, set so that it leaves no trace in our objects.

    - Progress and diff-base storage: annotations under our own bounded prefix
      ``kopf.edgetune.io/`` (never ``status``: StatusProgressStorage is not used). Only
      ``@kopf.on.event`` and ``@kopf.index`` handlers are registered, and those never store
      progress or a diff-base, so in practice no annotation is written at all; the prefix just
      fences them off should a change-detecting handler ever be added.
    - No finalizers: no deletion handlers, timers or daemons (which would add one); Jobs are
      garbage-collected through their owner references.
    - Peering off (standalone): one active replica is guaranteed by our Lease (leader.py).
    - No CRD/namespace scanning: the served resources must exist at start (fewer RBAC rights).
    - kopf's own k8s Events only from WARNING up; ours are posted by the executor.
    - API requests retried for about 4 minutes (ERROR_BACKOFFS) before a watch gives up.
    """
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=KOPF_PREFIX, touch_key="touch", v1=False)
    settings.persistence.diffbase_storage = _NoEssenceDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration", v1=False)
    settings.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
    settings.peering.standalone = True
    settings.peering.mandatory = False
    settings.scanning.disabled = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = names.MANAGED_BY
    settings.posting.reporting_instance = identity[:128]
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    # Retries of a failed API request (connection refused, 5xx, and 403: an API server that has
    # just restarted answers Forbidden until its RBAC caches are warm) before kopf gives up a
    # watch: about 4 minutes instead of kopf's 54 s, so that an API server or etcd restart, a
    # k3s upgrade, is waited out rather than ending the operator.
    settings.networking.error_backoffs = ERROR_BACKOFFS


def _executor(memo: Any) -> Executor:
    ex = getattr(memo, "executor", None)
    if ex is None:
        raise RuntimeError("the edgetune executor is not set up (kopf memo.executor)")
    return ex


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ex = _executor(memo)
    configure_kopf(settings, ex.settings.identity)
    ex.start()
    log.info("edgetune operator started (%s, %d workers)",
             "cluster-wide" if ex.settings.clusterwide else ",".join(ex.settings.namespaces), ex.settings.workers)


@kopf.on.login()
def _login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    return _executor(memo).kube.connection_info()


@kopf.on.cleanup()
async def _cleanup(memo: Any, **_: Any) -> None:
    await _executor(memo).stop()


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def edgetune_jobs(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any):
    key = observe.owner_key_from_labels(namespace, labels)
    return {key: observe.summarize_job(body)} if key else None


@kopf.index("v1", "pods", labels=MANAGED)
def edgetune_pods(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any):
    key = observe.owner_key_from_labels(namespace, labels)
    return {key: observe.summarize_pod(body)} if key else None


@kopf.index("v1", "nodes")
def edgetune_nodes(name: str, body: Mapping[str, Any], **_: Any):
    # every node (a few hundred bytes each): whether the node a step runs on is Ready
    return {name: observe.summarize_node(body)}


def _capture(memo: Any, kwargs: Mapping[str, Any]) -> Executor:
    ex = _executor(memo)
    if ex.jobs_index is None and "edgetune_jobs" in kwargs:
        ex.jobs_index = kwargs["edgetune_jobs"]
        ex.pods_index = kwargs["edgetune_pods"]
        ex.nodes_index = kwargs.get("edgetune_nodes")
    return ex


async def _on_resource(event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **kwargs: Any) -> None:
    raw = event.get("object")  # the watch's own dict: no deep copy of kopf's view needed
    _capture(memo, kwargs).observed(raw if isinstance(raw, dict) else body, deleted=event.get("type") == "DELETED")


for _plural in names.PLURALS.values():
    kopf.on.event(names.GROUP, names.VERSION, _plural, id=f"edgetune-{_plural}")(_on_resource)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def _on_job(namespace: str, labels: Mapping[str, str], memo: Any, **kwargs: Any) -> None:
    key = observe.owner_key_from_labels(namespace, labels)
    if key:
        _capture(memo, kwargs).queue.enqueue(key)


@kopf.on.event("v1", "pods", labels=MANAGED)
async def _on_pod(namespace: str, labels: Mapping[str, str], memo: Any, **kwargs: Any) -> None:
    key = observe.owner_key_from_labels(namespace, labels)
    if key:
        _capture(memo, kwargs).queue.enqueue(key)


@kopf.on.event("v1", "nodes")
async def _on_node(event: Mapping[str, Any], body: Mapping[str, Any], memo: Any, **kwargs: Any) -> None:
    _capture(memo, kwargs).node_observed(body, deleted=event.get("type") == "DELETED")


@kopf.on.probe(id="reconciles")
def _probe(memo: Any, **_: Any) -> int:
    return _executor(memo).reconciles
