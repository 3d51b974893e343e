"""The running operator: kopf watches and indices feed a work queue; workers run the pure
planner (:mod:`reconcile`) for one resource at a time and carry out its plan.

kopf is used for what it is good at — list+watch with reconnects, per-object event
serialisation, in-memory indices populated before any handler runs, the liveness endpoint —
and only through ``@kopf.on.event`` and ``@kopf.index`` handlers. Those keep no state in the
resources: kopf writes no progress annotations, no last-handled-configuration, no finalizers
and nothing into our status (see :func:`configure_kopf`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import time
from typing import Any, Mapping

import kopf

from edgetune_jobs import contract

from . import builders, observe, reconcile
from .kube import ApiError, Kube
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("edgetune_operator")

Key = tuple[str, str, str]  # (kind, namespace, name)
KOPF_PREFIX = f"kopf.{contract.GROUP}"
MANAGED = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}
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


class Runtime:
    def __init__(self, settings: Settings, kube: Kube, metrics: Metrics | None = None):
        self.settings = settings
        self.kube = kube
        self.metrics = metrics or Metrics(self.bodies)
        self.resources: dict[Key, dict] = {}
        # resource -> the resources that depend on it (ModelConversion -> its FinetuneJob, ...)
        self.dependent_keys: dict[Key, dict[Key, None]] = {}
        # Jobs created but not yet seen in the index: resource -> Job name -> (created at, summary).
        # Without them, the reconcile that our own status patch triggers would try each Job again.
        self.expected_jobs: dict[Key, dict[str, tuple[float, dict]]] = {}
        self.jobs_index: Any = None
        self.pods_index: Any = None
        # (priority, sequence, key): new resources (priority 0) go before status refreshes (1)
        self.queue: asyncio.PriorityQueue[tuple[int, int, Key]] = asyncio.PriorityQueue()
        self.queued: dict[Key, int] = {}
        self.seq = itertools.count()
        self.posting: set[asyncio.Task] = set()
        self.post_limit = asyncio.Semaphore(8)
        self.active: set[Key] = set()
        self.dirty: set[Key] = set()
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.failures: dict[Key, int] = {}
        self.progress: dict[Key, tuple[float, dict | None]] = {}
        self.rejected: dict[tuple[Key, str], str] = {}
        self.tasks: list[asyncio.Task] = []
        self.reconciles = 0

    # --- the store of resource bodies (also the metrics' source) ---

    def bodies(self) -> list[dict]:
        return list(self.resources.values())

    def put(self, body: Mapping[str, Any], force: bool = False) -> bool:
        """Store a resource body (a raw dict from the API is kept as it is, never mutated)."""
        if not isinstance(body, dict):
            body = plain(body)
        meta = body["metadata"]
        key = (body["kind"], meta["namespace"], meta["name"])
        old = self.resources.get(key)
        if not force and old is not None and old["metadata"].get("uid") == meta.get("uid"):
            a, b = _rv(old), _rv(body)
            if a is not None and b is not None and b < a:
                return False  # an older event than what we already know (e.g. our own patch's response)
        self.resources[key] = body
        self._relate(key, reconcile.related_key(old) if old is not None else None, reconcile.related_key(body))
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
        body = self.resources.pop(key, None)
        if body is not None:
            self._relate(key, reconcile.related_key(body), None)
        self.progress.pop(key, None)
        self.failures.pop(key, None)
        self.expected_jobs.pop(key, None)
        h = self.timers.pop(key, None)
        if h:
            h.cancel()

    def dependents(self, key: Key) -> list[Key]:
        return list(self.dependent_keys.get(key, ()))

    # --- the queue ---

    def enqueue(self, key: Key, delay: float = 0.0, priority: int = 1) -> None:
        if delay > 0:
            old = self.timers.get(key)
            loop = asyncio.get_running_loop()
            when = loop.time() + delay
            if old is not None and not old.cancelled() and old.when() <= when:
                return
            if old is not None:
                old.cancel()
            self.timers[key] = loop.call_at(when, self._fire, key)
            return
        if key in self.active:
            self.dirty.add(key)
            return
        if key not in self.queued or priority < self.queued[key]:
            self.queued[key] = priority
            self.queue.put_nowait((priority, next(self.seq), key))

    def _fire(self, key: Key) -> None:
        self.timers.pop(key, None)
        self.enqueue(key)

    def start(self) -> None:
        for i in range(max(1, self.settings.workers)):
            self.tasks.append(asyncio.create_task(self._worker(), name=f"edgetune-worker-{i}"))

    async def stop(self) -> None:
        if self.posting:
            await asyncio.wait(list(self.posting), timeout=5)
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self.tasks.clear()
        for h in self.timers.values():
            h.cancel()
        self.timers.clear()

    async def _worker(self) -> None:
        while True:
            prio, _, key = await self.queue.get()
            if self.queued.get(key) != prio:
                continue  # a stale entry: the key was queued again with a higher priority
            del self.queued[key]
            self.active.add(key)
            try:
                await self.reconcile(key)
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a reconcile error must not kill the worker
                reason = type(exc).__name__
                if isinstance(exc, ApiError):
                    reason = exc.reason or f"HTTP{exc.status}"
                self.metrics.reconcile_errors.labels(key[0], reason).inc()
                n = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(60.0, 0.5 * 2 ** min(n, 7))
                log.warning("reconcile %s/%s/%s failed (%s), retrying in %.1fs", *key, exc, delay,
                            exc_info=not isinstance(exc, ApiError))
                self.enqueue(key, delay)
            finally:
                self.active.discard(key)
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.enqueue(key)

    # --- one reconcile ---

    def _owned(self, index: Any, key: Key) -> list[dict]:
        if index is None:
            return []
        try:
            return [dict(v) for v in index.get(key, [])]
        except TypeError:
            return []

    async def _progress(self, key: Key, body: Mapping[str, Any], pods: list[dict]) -> dict | None:
        running = [p for p in pods if p.get("step") == "finetune" and p.get("phase") == "Running"]
        last, rec = self.progress.get(key, (0.0, None))
        if not running:
            return rec
        if time.monotonic() - last < self.settings.progress_interval * 0.8:
            return rec
        pod = sorted(running, key=lambda p: p.get("created") or "")[-1]
        try:
            text = await self.kube.pod_log(key[1], pod["name"], builders.CONTAINER, tail_lines=200)
            rec = contract.parse_progress(text.splitlines()) or rec
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.debug("cannot read the log of %s/%s: %s", key[1], pod["name"], exc)
        self.progress[key] = (time.monotonic(), rec)
        return rec

    def _expect(self, key: Key, job: Mapping[str, Any]) -> None:
        summary = observe.summarize_job(job)
        self.expected_jobs.setdefault(key, {})[summary["name"]] = (time.monotonic(), summary)

    def _with_expected(self, key: Key, jobs: list[dict]) -> list[dict]:
        """The index's Jobs plus those we created that it does not show yet (for a while)."""
        expected = self.expected_jobs.get(key)
        if not expected:
            return jobs
        seen = {j["name"] for j in jobs}
        now = time.monotonic()
        for name, (t, _) in list(expected.items()):
            if name in seen or now - t > EXPECTATION_TTL:
                del expected[name]
        if not expected:
            del self.expected_jobs[key]
            return jobs
        return jobs + [summary for _, summary in expected.values()]

    async def reconcile(self, key: Key) -> None:
        body = self.resources.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        self.reconciles += 1
        kind, ns, name = key
        jobs = self._with_expected(key, self._owned(self.jobs_index, key))
        pods = self._owned(self.pods_index, key)
        rkey = reconcile.related_key(body)
        related = self.resources.get(rkey) if rkey else None
        progress = await self._progress(key, body, pods) if kind == "FinetuneJob" else None
        # Jobs the API server rejected (invalid manifest) count as failed steps.
        for (k, jname), msg in list(self.rejected.items()):
            if k == key and not any(j["name"] == jname for j in jobs):
                jobs.append({"name": jname, "step": None, "run": 1, "conditions": {
                    "Failed": {"status": "True", "reason": "JobRejected", "message": msg}},
                    "completionTime": observe.fmt_time(observe.now_utc())})
                pods.append({"name": f"{jname}-rejected", "job": jname, "phase": "Failed",
                             "container": {"state": "terminated", "exitCode": 1, "message": f"Job rejected: {msg}"}})
        plan = reconcile.plan(body, jobs, pods, self.settings, observe.now_utc(), related=related, progress=progress)
        created = []
        for job in plan.create:
            jname = job["metadata"]["name"]
            try:
                self._expect(key, await self.kube.create_job(job) or job)
                log.info("created Job %s/%s", ns, jname)
                created.append(("Normal", "JobCreated",
                                f"Created Job {jname} for step {job['metadata']['labels'][contract.LABEL_STEP]}"))
            except ApiError as exc:
                if exc.status == 409:
                    self._expect(key, job)  # already there: the index has not caught up yet
                    continue
                if exc.status in (400, 422):
                    self.rejected[(key, jname)] = exc.message[:1000]
                    self.enqueue(key)
                    return
                raise
        for jname in plan.delete:
            self.expected_jobs.get(key, {}).pop(jname, None)
            try:
                await self.kube.delete_job(ns, jname)
                log.info("deleted Job %s/%s (out of history)", ns, jname)
            except ApiError as exc:
                if exc.status != 404:
                    raise
        patch = reconcile.merge_patch(body.get("status") or {}, plan.status)
        if patch:
            try:
                new = await self.kube.patch_status(kind, ns, name, patch, body["metadata"].get("resourceVersion"))
                self.put(new)
            except ApiError as exc:
                if exc.status == 409:  # our copy was stale: re-read and plan again
                    try:
                        self.put(await self.kube.get_resource(kind, ns, name), force=True)
                    except ApiError as exc2:
                        if exc2.status == 404:
                            self.forget(key)
                            return
                        raise
                    self.enqueue(key)
                    return
                if exc.status == 404:
                    self.forget(key)
                    return
                raise
        for type_, reason, message in created + plan.events:  # in the background: they need not delay the next reconcile
            task = asyncio.create_task(self.post_event(body, type_, reason, message))
            self.posting.add(task)
            task.add_done_callback(self.posting.discard)
        for step in plan.failed_steps:
            self.metrics.job_failures.labels(kind, step).inc()
        if plan.requeue_after:
            self.enqueue(key, plan.requeue_after)
        if patch and (plan.status.get("phase") != (body.get("status") or {}).get("phase")):
            for dep in self.dependents(key):
                self.enqueue(dep)

    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = observe.fmt_time(observe.now_utc())
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"],
                         "labels": {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}},
            "involvedObject": {"apiVersion": body.get("apiVersion", contract.API_VERSION), "kind": body["kind"],
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason[:128], "message": (message or "")[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": contract.MANAGED_BY},
            "reportingComponent": f"{contract.GROUP}/operator", "reportingInstance": self.settings.identity[:128],
        }
        try:
            async with self.post_limit:
                await self.kube.create_event(meta["namespace"], event)
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot post Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)


RUNTIME: Runtime | None = None


def _rt() -> Runtime:
    if RUNTIME is None:
        raise RuntimeError("the edgetune runtime is not set up")
    return RUNTIME


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
    - kopf's own k8s Events only from WARNING up; ours are posted by the runtime.
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
    settings.posting.reporting_component = contract.MANAGED_BY
    settings.posting.reporting_instance = identity[:128]
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30


# --- kopf handlers ----------------------------------------------------------------------------


@kopf.on.startup()
async def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    rt = _rt()
    configure_kopf(settings, rt.settings.identity)
    rt.start()
    log.info("edgetune operator started (%s, %d workers)",
             "cluster-wide" if rt.settings.clusterwide else ",".join(rt.settings.namespaces), rt.settings.workers)


@kopf.on.login()
def _login(**_: Any) -> kopf.ConnectionInfo:
    return _rt().kube.connection_info()


@kopf.on.cleanup()
async def _cleanup(**_: Any) -> None:
    if RUNTIME is not None:
        await RUNTIME.stop()


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
def edgetune_jobs(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any):
    key = observe.owner_key_from_labels(namespace, labels)
    return {key: observe.summarize_job(body)} if key else None


@kopf.index("v1", "pods", labels=MANAGED)
def edgetune_pods(namespace: str, labels: Mapping[str, str], body: Mapping[str, Any], **_: Any):
    key = observe.owner_key_from_labels(namespace, labels)
    return {key: observe.summarize_pod(body)} if key else None


def _capture(kwargs: Mapping[str, Any]) -> Runtime:
    rt = _rt()
    if rt.jobs_index is None and "edgetune_jobs" in kwargs:
        rt.jobs_index = kwargs["edgetune_jobs"]
        rt.pods_index = kwargs["edgetune_pods"]
    return rt


async def _on_resource(event: Mapping[str, Any], body: Mapping[str, Any], **kwargs: Any) -> None:
    rt = _capture(kwargs)
    meta = body["metadata"]
    key = (body["kind"], meta["namespace"], meta["name"])
    if event.get("type") == "DELETED":
        rt.forget(key)
    else:
        raw = event.get("object")  # the watch's own dict: no deep copy of kopf's view needed
        rt.put(raw if isinstance(raw, dict) else body)
        rt.enqueue(key, priority=0 if not (body.get("status") or {}).get("startTime") else 1)
    for dep in rt.dependents(key):
        rt.enqueue(dep)


for _plural in contract.PLURALS.values():
    kopf.on.event(contract.GROUP, contract.VERSION, _plural, id=f"edgetune-{_plural}")(_on_resource)


@kopf.on.event("batch", "v1", "jobs", labels=MANAGED)
async def _on_job(namespace: str, labels: Mapping[str, str], **kwargs: Any) -> None:
    rt = _capture(kwargs)
    key = observe.owner_key_from_labels(namespace, labels)
    if key:
        rt.enqueue(key)


@kopf.on.event("v1", "pods", labels=MANAGED)
async def _on_pod(namespace: str, labels: Mapping[str, str], **kwargs: Any) -> None:
    rt = _capture(kwargs)
    key = observe.owner_key_from_labels(namespace, labels)
    if key:
        rt.enqueue(key)


@kopf.on.probe(id="reconciles")
def _probe(**_: Any) -> int:
    return RUNTIME.reconciles if RUNTIME else 0


__all__ = ["Runtime", "configure_kopf", "plain", "dt"]
