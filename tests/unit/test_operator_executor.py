"""The executor's execution of plans against a fake API: idempotent Job creation, optimistic
concurrency on status, rejected Jobs, Events, dependents (the store), the work queue."""
from __future__ import annotations

import asyncio
import copy

import pytest

from edgetune_operator import observe
from edgetune_operator.kube import ApiError
from edgetune_operator.controller.executor import Executor
from edgetune_operator.settings import from_env


class FakeKube:
    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.objects: dict[tuple, dict] = {}
        self.events: list[dict] = []
        self.patches: list[dict] = []
        self.conflict_next_patch = False
        self.reject: str | None = None
        self.rv = 100
        self.create_calls = 0

    async def create_job(self, job):
        self.create_calls += 1
        name = job["metadata"]["name"]
        if self.reject:
            raise ApiError(422, "Invalid", self.reject)
        if name in self.jobs:
            raise ApiError(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
        self.jobs[name] = job
        return job

    async def delete_job(self, ns, name):
        self.jobs.pop(name, None)

    async def patch_status(self, kind, ns, name, patch, rv=None):
        obj = self.objects[(kind, ns, name)]
        if self.conflict_next_patch or rv != obj["metadata"]["resourceVersion"]:
            self.conflict_next_patch = False
            raise ApiError(409, "Conflict", "the object has been modified")
        self.patches.append(patch)
        st = obj.setdefault("status", {})
        for k, v in patch.items():
            if v is None:
                st.pop(k, None)
            else:
                st[k] = v
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    async def get_resource(self, kind, ns, name):
        return copy.deepcopy(self.objects[(kind, ns, name)])

    async def create_event(self, ns, event):
        self.events.append(event)

    async def pod_log(self, ns, name, container, tail_lines=100):
        return ""


class Index(dict):
    pass


def make(kind="FinetuneJob", name="b", spec=None):
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "demo", "uid": "u-" + name, "generation": 1,
                         "resourceVersion": "1"},
            "spec": spec or {"dataset": {"generate": {}}}}


def setup(body):
    kube = FakeKube()
    rt = Executor(from_env({}), kube)
    rt.jobs_index, rt.pods_index = Index(), Index()
    kube.objects[(body["kind"], "demo", body["metadata"]["name"])] = copy.deepcopy(body)
    rt.store.put(body)
    return rt, kube


def key(body):
    return (body["kind"], "demo", body["metadata"]["name"])


def test_reconcile_creates_one_job_and_writes_status():
    async def go():
        body = make()
        rt, kube = setup(body)
        await rt.reconcile(key(body))
        await asyncio.sleep(0)
        assert list(kube.jobs) == ["b-finetune"]
        assert rt.store.resources[key(body)]["status"]["phase"] == "Pending"
        # the Job is not in the index yet: a second reconcile counts on the one it created,
        # asks the API server for nothing and changes nothing
        n = len(kube.patches)
        await rt.reconcile(key(body))
        assert list(kube.jobs) == ["b-finetune"] and len(kube.patches) == n and kube.create_calls == 1
        await asyncio.sleep(0)
        assert [e["reason"] for e in kube.events] == ["JobCreated"]
        assert kube.events[0]["involvedObject"]["uid"] == "u-b"
        # once the index shows it, the expectation is dropped
        rt.jobs_index[key(body)] = [observe.summarize_job(kube.jobs["b-finetune"])]
        await rt.reconcile(key(body))
        assert key(body) not in rt.expectations.expected and kube.create_calls == 1
    asyncio.run(go())


def test_an_expected_job_that_never_shows_up_is_created_again(monkeypatch):
    async def go():
        body = make()
        rt, kube = setup(body)
        await rt.reconcile(key(body))
        del kube.jobs["b-finetune"]  # deleted before the index ever saw it
        monkeypatch.setattr(rt.expectations, "ttl", 0.0)
        await rt.reconcile(key(body))
        assert kube.create_calls == 2 and list(kube.jobs) == ["b-finetune"]
    asyncio.run(go())


def test_already_existing_job_is_expected_too():
    async def go():
        body = make()
        rt, kube = setup(body)
        kube.jobs["b-finetune"] = {"metadata": {"name": "b-finetune"}}  # created by an earlier run
        await rt.reconcile(key(body))
        await rt.reconcile(key(body))
        assert kube.create_calls == 1 and "b-finetune" in rt.expectations.expected[key(body)]
    asyncio.run(go())


def test_conflict_rereads_and_requeues():
    async def go():
        body = make()
        rt, kube = setup(body)
        kube.conflict_next_patch = True
        await rt.reconcile(key(body))
        assert not kube.patches and key(body) in rt.queue.queued  # re-read, queued again
        assert not kube.events  # nothing announced for a plan that was not written
        await rt.reconcile(key(body))
        assert rt.store.resources[key(body)]["status"]["phase"] == "Pending"
    asyncio.run(go())


def test_rejected_job_fails_the_resource():
    async def go():
        body = make(spec={"dataset": {"generate": {}}, "placement": {"nodeSelector": {"edgetune.io/device": "a b"}}})
        rt, kube = setup(body)
        kube.reject = 'Job.batch "b-finetune" is invalid: spec.template.spec.nodeSelector: Invalid value: "a b"'
        await rt.reconcile(key(body))
        await rt.reconcile(key(body))
        st = rt.store.resources[key(body)]["status"]
        assert st["phase"] == "Failed" and "Invalid value" in st["message"]
        assert observe.get_condition(st, "Failed")["reason"] == "JobRejected"
        await rt.reconcile(key(body))  # sticky: no new attempt
        assert rt.store.resources[key(body)]["status"]["phase"] == "Failed"
    asyncio.run(go())


def test_dependents_and_queue_priorities():
    async def go():
        rt, kube = setup(make())
        conv = make("ModelConversion", "c", {"source": {"finetuneJob": "b"}})
        other = make("ModelConversion", "d", {"source": {"finetuneJob": "zzz"}})
        rt.store.put(conv)
        rt.store.put(other)
        assert rt.store.dependents(("FinetuneJob", "demo", "b")) == [("ModelConversion", "demo", "c")]
        # re-pointed, then deleted: the reverse index follows
        moved = make("ModelConversion", "c", {"source": {"finetuneJob": "zzz"}})
        moved["metadata"]["resourceVersion"] = "2"
        rt.store.put(moved)
        assert rt.store.dependents(("FinetuneJob", "demo", "b")) == []
        assert rt.store.dependents(("FinetuneJob", "demo", "zzz")) == [("ModelConversion", "demo", "d"),
                                                                  ("ModelConversion", "demo", "c")]
        rt.forget(("ModelConversion", "demo", "d"))
        assert rt.store.dependents(("FinetuneJob", "demo", "zzz")) == [("ModelConversion", "demo", "c")]
        rt.queue.enqueue(("X", "demo", "late"), priority=1)
        rt.queue.enqueue(("X", "demo", "new"), priority=0)
        rt.queue.enqueue(("X", "demo", "late"), priority=0)  # promoted
        order = []
        while not rt.queue.queue.empty():
            prio, _, k = rt.queue.queue.get_nowait()
            if rt.queue.queued.get(k) == prio:
                del rt.queue.queued[k]
                order.append(k[2])
        assert order == ["new", "late"]
    asyncio.run(go())


def test_store_ignores_older_versions():
    rt, _ = setup(make())
    newer = make()
    newer["metadata"]["resourceVersion"] = "50"
    newer["status"] = {"phase": "Running"}
    assert rt.store.put(newer)
    assert not rt.store.put(make())  # resourceVersion 1 < 50: an old watch event
    assert rt.store.resources[("FinetuneJob", "demo", "b")]["status"]["phase"] == "Running"


@pytest.mark.parametrize("status,expected", [(401, 1), (403, 1)])
def test_reconcile_errors_are_counted(status, expected):
    async def go():
        body = make()
        rt, kube = setup(body)

        async def boom(job):
            raise ApiError(status, "Forbidden", "no")
        kube.create_job = boom
        rt.start()
        rt.queue.enqueue(key(body))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if rt.queue.failures:
                break
        await rt.stop()
        assert rt.metrics.reconcile_errors.labels("FinetuneJob", "Forbidden")._value.get() == expected
    asyncio.run(go())


def test_a_node_that_changes_readiness_wakes_the_resources_running_on_it():
    async def go():
        rt, kube = setup(make())
        rt.pods_index[("FinetuneJob", "demo", "b")] = [{"name": "b-finetune-x", "node": "jetson-0"}]
        rt.pods_index[("FinetuneJob", "demo", "c")] = [{"name": "c-finetune-x", "node": "gpu-0"}]

        def node(ready):
            return {"metadata": {"name": "jetson-0"}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}

        def drain():
            out = []
            while not rt.queue.queue.empty():
                out.append(rt.queue.queue.get_nowait()[2])
            rt.queue.queued.clear()
            return out
        rt.node_observed(node("True"))  # first seen, Ready: nothing to do
        assert drain() == []
        rt.node_observed(node("Unknown"))  # the kubelet stopped posting
        assert drain() == [("FinetuneJob", "demo", "b")]
        rt.node_observed(node("Unknown"))  # a repeat changes nothing
        assert drain() == []
        rt.node_observed(node("True"))
        assert drain() == [("FinetuneJob", "demo", "b")]
        rt.nodes_index = Index({"jetson-0": [observe.summarize_node(node("Unknown"))]})
        assert rt._nodes_of([{"node": "jetson-0"}, {"node": None}])["jetson-0"]["ready"] == "Unknown"
    asyncio.run(go())
