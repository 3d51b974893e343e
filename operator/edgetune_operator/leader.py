"""Leader election on a coordination.k8s.io/v1 Lease (as client-go's leaderelection does).

Only the replica holding the Lease runs kopf; the others wait (serving /healthz) and take
over when the holder stops renewing for leaseDurationSeconds, or at once when it releases
the Lease on a graceful exit. Updates use the Lease's resourceVersion, so two candidates can
never both win a round.

A leader gives up only when the API server says the Lease is another's (its renewal loses
the round): kopf is stopped and the process exits non-zero, to be restarted as a candidate. A
renewal that fails for any other reason — the API server unreachable (a restart, an upgrade),
5xx while etcd is away, 403 from an API server that has just restarted and whose RBAC caches
are not warm yet (as kopf notes, upgrades do this) — keeps it leading until the API server
answers, unlike client-go, which gives up after its renew deadline: without the API server no
replica can take the Lease, or act. Should a partition have let another replica take over
meanwhile, the overlap until the next renewal is harmless: Job names are deterministic (a
second create is AlreadyExists) and status patches carry the resourceVersion (a stale one is a
Conflict).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any, Callable, Mapping

from .kube import ApiError, Kube

log = logging.getLogger(__name__)
MICRO = "%Y-%m-%dT%H:%M:%S.%fZ"


def fmt_micro(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime(MICRO)


def parse_micro(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def decide(lease: Mapping[str, Any] | None, me: str, now: dt.datetime, default_duration: float) -> str:
    """What a candidate should do with the Lease as read: create, renew, acquire (take over an
    expired or released lease) or wait (someone else holds a valid lease). Pure."""
    if lease is None:
        return "create"
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if holder == me:
        return "renew"
    if not holder:
        return "acquire"
    renew = parse_micro(spec.get("renewTime")) or parse_micro(spec.get("acquireTime"))
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    if renew is None or (now - renew).total_seconds() > duration:
        return "acquire"
    return "wait"


def lease_body(name: str, namespace: str, me: str, now: dt.datetime, duration: float,
               old: Mapping[str, Any] | None = None) -> dict:
    spec_old = (old or {}).get("spec") or {}
    transitions = int(spec_old.get("leaseTransitions") or 0)
    same = spec_old.get("holderIdentity") == me
    body: dict[str, Any] = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"holderIdentity": me, "leaseDurationSeconds": int(round(duration)),
                 "acquireTime": spec_old.get("acquireTime") if same else fmt_micro(now),
                 "renewTime": fmt_micro(now),
                 "leaseTransitions": transitions if (same or old is None) else transitions + 1},
    }
    if old is not None:
        body["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if old["metadata"].get("labels"):
            body["metadata"]["labels"] = old["metadata"]["labels"]
    return body


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, duration: float, renew_period: float,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)):
        self.kube, self.namespace, self.name, self.me = kube, namespace, name, identity
        self.duration, self.renew_period, self.clock = duration, renew_period, clock
        self.leader = False
        self.last_renew: dt.datetime | None = None
        self.unreachable_since: dt.datetime | None = None

    async def try_once(self) -> bool:
        now = self.clock()
        lease = await self.kube.get_lease(self.namespace, self.name)
        action = decide(lease, self.me, now, self.duration)
        if action == "wait":
            self.leader = False
            return False
        body = lease_body(self.name, self.namespace, self.me, now, self.duration, lease)
        try:
            if action == "create":
                await self.kube.create_lease(self.namespace, body)
            else:
                await self.kube.replace_lease(self.namespace, self.name, body)
        except ApiError as exc:
            if exc.status in (409, 422):  # someone else won the round
                self.leader = False
                return False
            raise
        if not self.leader:
            log.info("acquired Lease %s/%s as %s (%s)", self.namespace, self.name, self.me, action)
        self.leader = True
        self.last_renew = now
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Block until this candidate holds the Lease (True) or `stop` is set (False)."""
        logged = False
        while not stop.is_set():
            try:
                if await self.try_once():
                    return True
                if not logged:
                    lease = await self.kube.get_lease(self.namespace, self.name)
                    holder = ((lease or {}).get("spec") or {}).get("holderIdentity")
                    log.info("waiting for Lease %s/%s (held by %s)", self.namespace, self.name, holder)
                    logged = True
            except (ApiError, OSError, asyncio.TimeoutError) as exc:
                log.warning("leader election: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.renew_period)
            except asyncio.TimeoutError:
                pass
        return False

    async def keep(self, stop: asyncio.Event, on_lost: Callable[[], None]) -> None:
        """Renew every renew_period; call on_lost() when the lease cannot be kept."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.renew_period)
                return
            except asyncio.TimeoutError:
                pass
            try:
                ok = await self.try_once()
            except (ApiError, OSError, asyncio.TimeoutError) as exc:
                log.warning("cannot renew Lease: %s", exc)
                if self.unreachable_since is None:
                    self.unreachable_since = self.clock()
                    log.warning("keeping Lease %s/%s until the API server answers (no replica can take it "
                                "without it)", self.namespace, self.name)
                continue
            if ok and self.unreachable_since is not None:
                log.info("the API server answers again after %.0f s: Lease %s/%s renewed",
                         (self.clock() - self.unreachable_since).total_seconds(), self.namespace, self.name)
            self.unreachable_since = None
            if not ok:
                log.error("lost Lease %s/%s: stopping", self.namespace, self.name)
                self.leader = False
                on_lost()
                return

    async def release(self) -> None:
        if not self.leader:
            return
        try:
            lease = await self.kube.get_lease(self.namespace, self.name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.me:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                await self.kube.replace_lease(self.namespace, self.name, lease)
                log.info("released Lease %s/%s", self.namespace, self.name)
        except (ApiError, OSError, asyncio.TimeoutError) as exc:
            log.warning("cannot release Lease: %s", exc)
        self.leader = False
