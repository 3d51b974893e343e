"""The work queue: one key is reconciled by one worker at a time (a key queued while it runs is
run again after), new resources before status refreshes, delayed re-queues on timers, and a
failing reconcile retried with exponential back-off."""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Awaitable, Callable

from .store import Key

log = logging.getLogger("edgetune_operator")


class WorkQueue:
    def __init__(self, process: Callable[[Key], Awaitable[None]],
                 on_error: Callable[[Key, Exception, int], float]):
        """process(key) reconciles; on_error(key, exc, failures in a row) -> seconds to retry."""
        self.process = process
        self.on_error = on_error
        # (priority, sequence, key): new resources (priority 0) go before status refreshes (1)
        self.queue: asyncio.PriorityQueue[tuple[int, int, Key]] = asyncio.PriorityQueue()
        self.queued: dict[Key, int] = {}
        self.seq = itertools.count()
        self.active: set[Key] = set()
        self.dirty: set[Key] = set()
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.failures: dict[Key, int] = {}
        self.tasks: list[asyncio.Task] = []

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

    def forget(self, key: Key) -> None:
        self.failures.pop(key, None)
        h = self.timers.pop(key, None)
        if h:
            h.cancel()

    def start(self, workers: int) -> None:
        for i in range(max(1, workers)):
            self.tasks.append(asyncio.create_task(self._worker(), name=f"edgetune-worker-{i}"))

    async def stop(self) -> None:
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
                await self.process(key)
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a reconcile error must not kill the worker
                n = self.failures[key] = self.failures.get(key, 0) + 1
                self.enqueue(key, self.on_error(key, exc, n))
            finally:
                self.active.discard(key)
                if key in self.dirty:
                    self.dirty.discard(key)
                    self.enqueue(key)
