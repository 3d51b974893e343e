"""Structured progress lines (contract.progress_line) from a running step.

emit() prints one line; ProgressHook is an mmengine hook that reports training
(phase "train": epoch, epochs, iter, iters, loss, eta_seconds, percent) and evaluation
(phase "val"/"test": iter, iters, percent). Lines are throttled to one every
`interval_s` seconds (env EDGETUNE_PROGRESS_INTERVAL, default 5) plus the first and the
last iteration of every epoch, so the log stays small on long runs and the cost per
iteration is a clock read.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from . import contract


def emit(stream: TextIO | None = None, **fields: Any) -> str:
    line = contract.progress_line(**fields)
    print(line, file=stream or sys.stdout, flush=True)
    return line


def default_interval() -> float:
    try:
        return float(os.environ.get("EDGETUNE_PROGRESS_INTERVAL", "5"))
    except ValueError:
        return 5.0


def make_progress_hook(interval_s: float | None = None, stream: TextIO | None = None,
                       eval_phase: str = "val"):
    """An mmengine Hook instance (imported lazily: mmengine is heavy)."""
    from mmengine.hooks import Hook

    class ProgressHook(Hook):
        priority = "VERY_LOW"  # after the IterTimerHook / LoggerHook

        def __init__(self) -> None:
            self.interval_s = default_interval() if interval_s is None else interval_s
            self.stream = stream
            self._last = 0.0
            self._t0 = None
            self._done0 = 0
            self._eval_phase = eval_phase

        # -- training
        def before_train(self, runner) -> None:
            self._t0 = time.monotonic()
            self._done0 = runner.iter

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            now = time.monotonic()
            per_epoch = len(runner.train_dataloader)
            last_in_epoch = batch_idx + 1 >= per_epoch
            if not (batch_idx == 0 or last_in_epoch or now - self._last >= self.interval_s):
                return
            self._last = now
            done, total = runner.iter + 1, runner.max_iters
            rate = (now - self._t0) / max(1, done - self._done0) if self._t0 else 0.0
            loss = None
            if outputs and "loss" in outputs:
                try:
                    loss = round(float(outputs["loss"]), 5)
                except (TypeError, ValueError):
                    loss = None
            emit(self.stream, phase="train", epoch=runner.epoch + 1, epochs=runner.max_epochs,
                 iter=done, iters=total, loss=loss,
                 eta_seconds=round(rate * (total - done), 1),
                 percent=round(100.0 * done / max(1, total), 2))

        # -- evaluation (both the val loop during training and a test run)
        def _eval_iter(self, runner, batch_idx, phase, loader) -> None:
            now = time.monotonic()
            total = len(loader)
            if not (batch_idx + 1 >= total or now - self._last >= self.interval_s):
                return
            self._last = now
            fields = dict(phase=phase, iter=batch_idx + 1, iters=total,
                          percent=round(100.0 * (batch_idx + 1) / max(1, total), 2))
            if phase == "val":
                fields.update(epoch=runner.epoch, epochs=runner.max_epochs)
            emit(self.stream, **fields)

        def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            self._eval_iter(runner, batch_idx, "val", runner.val_dataloader)

        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            self._eval_iter(runner, batch_idx, self._eval_phase, runner.test_dataloader)

    return ProgressHook()
