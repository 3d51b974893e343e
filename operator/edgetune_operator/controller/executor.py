"""The executor: for one resource, run its kind's pure planner (:mod:`..kinds`) on what the
store and kopf's Job/Pod indices show, and carry the plan out — create and delete Jobs, patch
status with optimistic concurrency, post Events, requeue — through the work queue."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

from edgetune_contract import names
from edgetune_contract.progress import Progress, parse_progress

from .. import jobspec, kinds, observe
from ..kube import ApiError, Kube
from ..metrics import Metrics
from ..settings import Settings
from .queue import WorkQueue
from .store import JobExpectations, Key, Store

log = logging.getLogger("edgetune_operator")


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 JSON merge patch turning `old` into `new` (None: nothing to change)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for k in old:
        if k not in new:
            patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = merge_patch(old[k], v)
            if sub is not None:
                patch[k] = sub
        elif old[k] != v:
            patch[k] = v
    return patch or None


class Executor:
    def __init__(self, settings: Settings, kube: Kube, metrics: Metrics | None = None):
        self.settings = settings
        self.kube = kube
        self.store = Store(kinds.related_key, kinds.is_selector, kinds.selects)
        self.metrics = metrics or Metrics(self.store.bodies)
        self.expectations = JobExpectations()
        self.queue = WorkQueue(self.reconcile, self._on_error)
        self.jobs_index: Any = None  # kopf's indices, captured from the first handler call
        self.pods_index: Any = None
        self.nodes_index: Any = None
        self.node_ready: dict[str, str] = {}  # node name -> its Ready status last seen
        self.node_seen: dict[str, tuple] = {}  # node name -> what a fleet selects by (readiness, labels, taints)
        self.progress: dict[Key, tuple[float, Progress | None]] = {}
        self.rejected: dict[tuple[Key, str], str] = {}
        self.posting: set[asyncio.Task] = set()
        self.post_limit = asyncio.Semaphore(8)
        self.reconciles = 0

    # --- wiring ---

    def start(self) -> None:
        self.queue.start(self.settings.workers)

    async def stop(self) -> None:
        if self.posting:
            await asyncio.wait(list(self.posting), timeout=5)
        await self.queue.stop()

    def observed(self, body: Mapping[str, Any], deleted: bool = False) -> None:
        """A watch event of one of our resources: store it, reconcile it and its dependents."""
        meta = body["metadata"]
        key = (body["kind"], meta["namespace"], meta["name"])
        if deleted:
            self.forget(key)
        else:
            self.store.put(body)
            self.queue.enqueue(key, priority=0 if not (body.get("status") or {}).get("startTime") else 1)
        for dep in self.store.dependents(key):
            self.queue.enqueue(dep)

    def node_observed(self, node: Mapping[str, Any], deleted: bool = False) -> None:
        """A watch event of a Node: when its readiness changed, reconcile the resources whose
        step Pods are on it; when it appeared, went, or changed readiness, labels, taints or
        cordon, the unfinished fleet benchmarks (a heartbeat that changes nothing wakes nobody)."""
        summary = observe.summarize_node(node)
        name = summary["name"]
        ready = "Deleted" if deleted else summary["ready"]
        seen = None if deleted else (ready, tuple(sorted(summary["labels"].items())),
                                     tuple(tuple(sorted(t.items())) for t in summary["taints"]),
                                     summary["unschedulable"])
        if self.node_seen.get(name) != seen:
            if seen is None:
                self.node_seen.pop(name, None)
            else:
                self.node_seen[name] = seen
            for body in self.store.bodies():
                if kinds.wants_all_nodes(body):
                    meta = body["metadata"]
                    self.queue.enqueue((body["kind"], meta["namespace"], meta["name"]))
        if self.node_ready.get(name, "True") == ready:
            self.node_ready[name] = ready
            return
        self.node_ready[name] = ready
        for key in self._keys_with_pods_on(name):
            self.queue.enqueue(key)

    def _keys_with_pods_on(self, node: str) -> list[Key]:
        if self.pods_index is None:
            return []
        out = []
        for key in list(self.pods_index):
            if any(p.get("node") == node for p in self._owned(self.pods_index, key)):
                out.append(key)
        return out

    def _nodes_of(self, pods: list[dict]) -> dict[str, dict]:
        wanted = {p.get("node") for p in pods if p.get("node")}
        return {name: node for name, node in self._all_nodes().items() if name in wanted}

    def _all_nodes(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        if self.nodes_index is None:
            return out
        for name in list(self.nodes_index):
            try:
                found = list(self.nodes_index.get(name, []))
            except TypeError:
                found = []
            if found:
                out[name] = dict(found[-1])
        return out

    def forget(self, key: Key) -> None:
        self.store.forget(key)
        self.progress.pop(key, None)
        self.expectations.drop(key)
        self.queue.forget(key)

    def _on_error(self, key: Key, exc: Exception, failures: int) -> float:
        reason = type(exc).__name__
        if isinstance(exc, ApiError):
            reason = exc.reason or f"HTTP{exc.status}"
        self.metrics.reconcile_errors.labels(key[0], reason).inc()
        delay = min(60.0, 0.5 * 2 ** min(failures, 7))
        log.warning("reconcile %s/%s/%s failed (%s), retrying in %.1fs", *key, exc, delay,
                    exc_info=not isinstance(exc, ApiError))
        return delay

    # --- one reconcile ---

    def _owned(self, index: Any, key: Key) -> list[dict]:
        if index is None:
            return []
        try:
            return [dict(v) for v in index.get(key, [])]
        except TypeError:
            return []

    async def _progress(self, key: Key, pods: list[dict]) -> Progress | None:
        """The last progress line of a running finetune Pod (read at most every interval)."""
        running = [p for p in pods if p.get("step") == "finetune" and p.get("phase") == "Running"]
        running = [p for p in running if p.get("index") in (None, "0")] or running  # rank 0 reports progress
        last, rec = self.progress.get(key, (0.0, None))
        if not running or time.monotonic() - last < self.settings.progress_interval * 0.8:
            return rec
        pod = sorted(running, key=lambda p: p.get("created") or "")[-1]
        try:
            text = await self.kube.pod_log(key[1], pod["name"], jobspec.CONTAINER, tail_lines=200)
            rec = parse_progress(text.splitlines()) or rec
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.debug("cannot read the log of %s/%s: %s", key[1], pod["name"], exc)
        self.progress[key] = (time.monotonic(), rec)
        return rec

    def _rejected_as_failed(self, key: Key, jobs: list[dict], pods: list[dict]) -> None:
        """Jobs the API server rejected (an invalid manifest) count as failed steps."""
        for (k, jname), msg in list(self.rejected.items()):
            if k == key and not any(j["name"] == jname for j in jobs):
                jobs.append({"name": jname, "step": None, "run": 1, "conditions": {
                    "Failed": {"status": "True", "reason": "JobRejected", "message": msg}},
                    "completionTime": observe.fmt_time(observe.now_utc())})
                pods.append({"name": f"{jname}-rejected", "job": jname, "phase": "Failed",
                             "container": {"state": "terminated", "exitCode": 1, "message": f"Job rejected: {msg}"}})

    async def reconcile(self, key: Key) -> None:
        body = self.store.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        self.reconciles += 1
        kind, ns, name = key
        jobs = self.expectations.with_expected(key, self._owned(self.jobs_index, key))
        pods = self._owned(self.pods_index, key)
        related = kinds.related(body, self.store.get, self.store.in_namespace)
        progress = await self._progress(key, pods) if kind == "FinetuneJob" else None
        self._rejected_as_failed(key, jobs, pods)
        plan = kinds.plan(body, jobs, pods, self.settings, observe.now_utc(), related=related, progress=progress,
                          nodes=self._all_nodes() if kinds.wants_all_nodes(body) else self._nodes_of(pods))
        created = await self._create_jobs(key, plan.create)
        if created is None:
            return
        await self._delete_jobs(key, plan.delete)
        patch = merge_patch(body.get("status") or {}, plan.status)
        if patch and not await self._patch_status(key, body, patch):
            return
        for type_, reason, message in created + plan.events:  # in the background: they need not delay the next reconcile
            task = asyncio.create_task(self.post_event(body, type_, reason, message))
            self.posting.add(task)
            task.add_done_callback(self.posting.discard)
        for step in plan.failed_steps:
            self.metrics.job_failures.labels(kind, step).inc()
        if plan.requeue_after:
            self.queue.enqueue(key, plan.requeue_after)
        if patch and (plan.status.get("phase") != (body.get("status") or {}).get("phase")):
            for dep in self.store.dependents(key):
                self.queue.enqueue(dep)

    async def _create_jobs(self, key: Key, manifests: list[dict]) -> list[tuple[str, str, str]] | None:
        """Create the planned Jobs (and a distributed Job's headless Service first); the
        JobCreated Events to post, or None when a Job was rejected (the key is requeued and the
        next plan records it as a failed step)."""
        created = []
        for job in manifests:
            if job["kind"] == "Service":
                try:
                    await self.kube.create_service(job)
                except ApiError as exc:
                    if exc.status != 409:  # already there (a re-run, or a recreated Job)
                        raise
                continue
            jname = job["metadata"]["name"]
            try:
                self.expectations.expect(key, await self.kube.create_job(job) or job)
                log.info("created Job %s/%s", key[1], jname)
                created.append(("Normal", "JobCreated",
                                f"Created Job {jname} for step {job['metadata']['labels'][names.LABEL_STEP]}"))
            except ApiError as exc:
                if exc.status == 409:
                    self.expectations.expect(key, job)  # already there: the index has not caught up yet
                    continue
                if exc.status in (400, 422):
                    self.rejected[(key, jname)] = exc.message[:1000]
                    self.queue.enqueue(key)
                    return None
                raise
        return created

    async def _delete_jobs(self, key: Key, job_names: list[str]) -> None:
        for jname in job_names:
            self.expectations.drop(key, jname)
            try:
                await self.kube.delete_job(key[1], jname)
                log.info("deleted Job %s/%s (out of history)", key[1], jname)
            except ApiError as exc:
                if exc.status != 404:
                    raise

    async def _patch_status(self, key: Key, body: Mapping[str, Any], patch: dict) -> bool:
        """Patch status at the body's resourceVersion. False: not written (our copy was stale,
        re-read and requeued; or the resource is gone)."""
        kind, ns, name = key
        try:
            self.store.put(await self.kube.patch_status(kind, ns, name, patch, body["metadata"].get("resourceVersion")))
            return True
        except ApiError as exc:
            if exc.status == 404:
                self.forget(key)
                return False
            if exc.status != 409:
                raise
        try:  # 409: our copy was stale: re-read and plan again
            self.store.put(await self.kube.get_resource(kind, ns, name), force=True)
        except ApiError as exc:
            if exc.status == 404:
                self.forget(key)
                return False
            raise
        self.queue.enqueue(key)
        return False

    async def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        now = observe.fmt_time(observe.now_utc())
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"],
                         "labels": {names.LABEL_MANAGED_BY: names.MANAGED_BY}},
            "involvedObject": {"apiVersion": body.get("apiVersion", names.API_VERSION), "kind": body["kind"],
                               "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": type_, "reason": reason[:128], "message": (message or "")[:1024],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            "source": {"component": names.MANAGED_BY},
            "reportingComponent": f"{names.GROUP}/operator", "reportingInstance": self.settings.identity[:128],
        }
        try:
            async with self.post_limit:
                await self.kube.create_event(meta["namespace"], event)
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot post Event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], exc)
