"""The finetune step's progress lines (edgetune_contract.progress): a Reporter prints them
through one ProgressPlan, so the whole job's percentage only rises; ProgressHook is the
mmengine hook that reports training (epoch, iteration, loss, ETA), validation during training
and the test loops of the base and fine-tuned model evaluations.

Lines are throttled to one every `interval_s` seconds (env EDGETUNE_PROGRESS_INTERVAL,
default 5) plus the first and the last iteration of every epoch, so the log stays small on
long runs and the cost per iteration is a clock read.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Optional, TextIO

from edgetune_contract.progress import ProgressPlan


def default_interval() -> float:
    try:
        return float(os.environ.get("EDGETUNE_PROGRESS_INTERVAL", "5"))
    except ValueError:
        return 5.0


class Reporter:
    """Prints progress lines for one job; the plan makes its percentage monotonic."""

    def __init__(self, plan: Optional[ProgressPlan] = None, stream: Optional[TextIO] = None):
        self.plan = plan or ProgressPlan()
        self.stream = stream

    def emit(self, phase: str, fraction: float, **fields: Any) -> str:
        line = self.plan.report(phase, fraction, **fields).line()
        print(line, file=self.stream or sys.stdout, flush=True)
        return line


def make_progress_hook(reporter: Reporter, eval_phase: str = "eval", interval_s: Optional[float] = None):
    """An mmengine Hook instance (imported lazily: mmengine is heavy). Test loops report as
    `eval_phase` (eval-base or eval); the val loop during training as "val"."""
    from mmengine.hooks import Hook

    class ProgressHook(Hook):
        priority = "VERY_LOW"  # after the IterTimerHook / LoggerHook

        def __init__(self) -> None:
            self.interval_s = default_interval() if interval_s is None else interval_s
            self._last = 0.0
            self._t0: Optional[float] = None
            self._done0 = 0

        def _due(self, first_or_last: bool) -> bool:
            now = time.monotonic()
            if first_or_last or now - self._last >= self.interval_s:
                self._last = now
                return True
            return False

        # -- training
        def before_train(self, runner) -> None:
            self._t0 = time.monotonic()
            self._done0 = runner.iter

        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            per_epoch = len(runner.train_dataloader)
            if not self._due(batch_idx == 0 or batch_idx + 1 >= per_epoch):
                return
            done, total = runner.iter + 1, runner.max_iters
            rate = (time.monotonic() - self._t0) / max(1, done - self._done0) if self._t0 else 0.0
            loss = None
            if outputs and "loss" in outputs:
                try:
                    loss = round(float(outputs["loss"]), 5)
                except (TypeError, ValueError):
                    loss = None
            reporter.emit("train", done / max(1, total), epoch=runner.epoch + 1, epochs=runner.max_epochs,
                          iter=done, iters=total, loss=loss, eta_seconds=round(rate * (total - done), 1))

        # -- validation during training: part of training, at training's current fraction
        def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            total = len(runner.val_dataloader)
            if not self._due(batch_idx + 1 >= total):
                return
            reporter.emit("val", runner.iter / max(1, runner.max_iters), epoch=runner.epoch,
                          epochs=runner.max_epochs, iter=batch_idx + 1, iters=total,
                          phase_percent=100.0 * (batch_idx + 1) / max(1, total))

        # -- the evaluations before and after training
        def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
            total = len(runner.test_dataloader)
            if not self._due(batch_idx + 1 >= total):
                return
            reporter.emit(eval_phase, (batch_idx + 1) / max(1, total), iter=batch_idx + 1, iters=total)

    return ProgressHook()
