"""Cron schedules, Lease leader election, settings."""
from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from edgetune_operator import leader
from edgetune_operator.cron import Cron, CronError
from edgetune_operator.kube import ApiError
from edgetune_operator.settings import SettingsError, from_env

UTC = dt.timezone.utc


def t(*a):
    return dt.datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize("expr,after,expected", [
    ("*/10 * * * *", t(2025, 1, 1, 0, 0), t(2025, 1, 1, 0, 10)),
    ("0 2 * * *", t(2025, 1, 1, 2, 0), t(2025, 1, 2, 2, 0)),
    ("0 2 * * *", t(2025, 1, 1, 1, 59, 30), t(2025, 1, 1, 2, 0)),
    ("30 6 * * 1-5", t(2025, 7, 26, 12, 0), t(2025, 7, 28, 6, 30)),  # Sat -> Mon
    ("0 0 1 * *", t(2025, 1, 31, 0, 0), t(2025, 2, 1, 0, 0)),
    ("0 0 29 2 *", t(2025, 1, 1), t(2028, 2, 29)),
    ("@hourly", t(2025, 1, 1, 5, 59), t(2025, 1, 1, 6, 0)),
    ("@weekly", t(2025, 7, 26), t(2025, 7, 27)),  # Sunday
    ("0 0 13 * 5", t(2025, 6, 1), t(2025, 6, 6)),  # dom OR dow
    ("5,35 1-3/2 * * 7", t(2025, 7, 27, 1, 6), t(2025, 7, 27, 1, 35)),
])
def test_cron_next(expr, after, expected):
    assert Cron(expr).next_after(after) == expected


@pytest.mark.parametrize("expr", ["* * * *", "61 * * * *", "*/0 * * * *", "a * * * *", "5-1 * * * *", "0 0 31 2 *"])
def test_cron_invalid(expr):
    with pytest.raises(CronError):
        Cron(expr).next_after(t(2025, 1, 1))


def test_lease_decisions():
    now = t(2025, 1, 1, 0, 0, 30)
    held = {"spec": {"holderIdentity": "a", "leaseDurationSeconds": 15, "renewTime": "2025-01-01T00:00:20.000000Z"}}
    assert leader.decide(None, "b", now, 15) == "create"
    assert leader.decide(held, "a", now, 15) == "renew"
    assert leader.decide(held, "b", now, 15) == "wait"
    assert leader.decide(held, "b", now + dt.timedelta(seconds=6), 15) == "acquire"  # expired
    released = {"spec": {"holderIdentity": "", "renewTime": "2025-01-01T00:00:29.000000Z"}}
    assert leader.decide(released, "b", now, 15) == "acquire"


def test_lease_body_counts_transitions():
    now = t(2025, 1, 1)
    old = {"metadata": {"resourceVersion": "7"}, "spec": {"holderIdentity": "a", "leaseTransitions": 2,
                                                          "acquireTime": "x"}}
    b = leader.lease_body("l", "ns", "b", now, 15, old)
    assert b["spec"]["leaseTransitions"] == 3 and b["metadata"]["resourceVersion"] == "7"
    assert b["spec"]["acquireTime"] == "2025-01-01T00:00:00.000000Z"
    b = leader.lease_body("l", "ns", "a", now, 15, old)
    assert b["spec"]["leaseTransitions"] == 2 and b["spec"]["acquireTime"] == "x"


class FakeLeases:
    """An in-memory Lease API with resourceVersion checks, like the API server's."""

    def __init__(self):
        self.lease = None
        self.rv = 0

    async def get_lease(self, ns, name):
        import copy
        return copy.deepcopy(self.lease)

    async def create_lease(self, ns, body):
        if self.lease is not None:
            raise ApiError(409, "AlreadyExists", "exists")
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.lease = body
        return body

    async def replace_lease(self, ns, name, body):
        if body["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        self.lease = body
        return body


def test_two_candidates_one_leader_and_handover():
    async def scenario():
        api = FakeLeases()
        clock = [t(2025, 1, 1)]
        a = leader.LeaderElector(api, "ns", "l", "a", 15, 5, clock=lambda: clock[0])
        b = leader.LeaderElector(api, "ns", "l", "b", 15, 5, clock=lambda: clock[0])
        assert await a.try_once() is True
        assert await b.try_once() is False
        clock[0] += dt.timedelta(seconds=10)
        assert await a.try_once() is True  # renewal
        clock[0] += dt.timedelta(seconds=10)
        assert await b.try_once() is False  # renewed 10 s ago: still valid
        await a.release()
        assert await b.try_once() is True  # released: immediate takeover
        assert api.lease["spec"]["holderIdentity"] == "b" and api.lease["spec"]["leaseTransitions"] == 1
        assert await a.try_once() is False
        clock[0] += dt.timedelta(seconds=16)  # b died without releasing
        assert await a.try_once() is True
    asyncio.run(scenario())


class Outage(FakeLeases):
    """The Lease API, unreachable (connection refused, or 503 while etcd is away) or refusing
    (403) for a while."""

    def __init__(self):
        super().__init__()
        self.error: Exception | None = None

    async def get_lease(self, ns, name):
        if self.error is not None:
            raise self.error
        return await super().get_lease(ns, name)


def keep_through(api, elector, clock, rounds, error, then=None):
    """Run keep() for `rounds` renewals failing with `error`, then `then` (or recovery); returns
    whether on_lost was called."""
    async def scenario():
        lost, stop = [], asyncio.Event()
        api.error = error
        elector.renew_period = 0.001
        n = [0]
        real = elector.try_once

        async def counting():
            n[0] += 1
            clock[0] += dt.timedelta(seconds=5)
            if n[0] > rounds:
                api.error = None
                if then:
                    then()
            if n[0] > rounds + 2:
                stop.set()
            return await real()
        elector.try_once = counting
        await elector.keep(stop, lambda: (lost.append(True), stop.set()))
        return bool(lost)
    return asyncio.run(scenario())


def test_a_leader_keeps_its_lease_through_an_api_server_outage_and_gives_it_up_to_another_holder():
    # unreachable, etcd away, and the 403 of a just-restarted API server whose RBAC caches are cold
    for error in (OSError("Cannot connect to host 10.99.1.1:6443"), ApiError(503, "ServiceUnavailable", "etcd"),
                  ApiError(403, "Forbidden", 'clusterrole "edgetune-operator" not found')):
        api, clock = Outage(), [t(2025, 1, 1)]
        a = leader.LeaderElector(api, "ns", "l", "a", 15, 5, clock=lambda: clock[0])
        asyncio.run(a.try_once())
        # 12 failed renewals, 60 s: four times the lease duration
        assert keep_through(api, a, clock, 12, error) is False
        assert api.lease["spec"]["holderIdentity"] == "a" and a.leader and a.unreachable_since is None
    # back after a partition in which another replica took the Lease: lost at the first renewal
    api, clock = Outage(), [t(2025, 1, 1)]
    a = leader.LeaderElector(api, "ns", "l", "a", 15, 5, clock=lambda: clock[0])
    asyncio.run(a.try_once())

    def taken():
        api.lease["spec"]["holderIdentity"] = "b"
        api.lease["spec"]["renewTime"] = leader.fmt_micro(clock[0])
    assert keep_through(api, a, clock, 12, OSError("unreachable"), then=taken) is True


def test_settings_defaults_and_env():
    s = from_env({})
    assert (s.metrics_port, s.health_port, s.artifacts_claim, s.job_python) == (8080, 8081, "edgetune-artifacts", "python")
    assert s.gpu_node_selector == {"edgetune.io/device": "x86-gpu"}
    assert s.gpu_resources == {"limits": {"nvidia.com/gpu": 1}}
    assert s.edge_tolerations == [{"key": "edgetune.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]
    assert s.clusterwide and s.leader_election and s.lease_namespace == "default"
    s = from_env({"EDGETUNE_NAMESPACES": "a, b", "EDGETUNE_DEADLINES": '{"finetune": 60}', "POD_NAMESPACE": "sys",
                  "EDGETUNE_LEADER_ELECTION": "false", "EDGETUNE_JOB_RUN_AS_USER": "", "EDGETUNE_GPU_RUNTIME_CLASS": ""})
    assert s.namespaces == ["a", "b"] and not s.clusterwide and s.lease_namespace == "sys"
    assert s.deadlines["finetune"] == 60 and s.deadlines["export"] == 3600
    assert s.leader_election is False and s.job_run_as_user is None and s.gpu_runtime_class is None


@pytest.mark.parametrize("env", [{"EDGETUNE_GPU_NODE_SELECTOR": "[1]"}, {"EDGETUNE_METRICS_PORT": "x"},
                                 {"EDGETUNE_STEP_COMMAND_OVERRIDE": "[]"}, {"EDGETUNE_DEADLINES": '{"train": 1}'},
                                 {"EDGETUNE_LEASE_RENEW_PERIOD": "20"}, {"EDGETUNE_LEADER_ELECTION": "maybe"}])
def test_settings_errors_name_the_variable(env):
    with pytest.raises(SettingsError, match=next(iter(env)).replace("EDGETUNE_", "")):
        from_env(env)
