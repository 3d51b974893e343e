"""Progress: the structured lines a running step prints, and what they mean for the whole job.

A step prints `EDGETUNE_PROGRESS {json}` lines; the operator reads the last one from the
Pod's log and shows Progress.text() in status (the FinetuneJob's PROGRESS column). The step
alone decides the percentage, through a ProgressPlan: each phase of the job owns a share of
0-100 %, so the percentage is of the whole job and never goes back (evaluating the base model
is 2-10 %, training 10-90 %, ...), and the text names the phase.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

from .results import _finite

PROGRESS_PREFIX = "EDGETUNE_PROGRESS "

# The FinetuneJob's phases in order, with their share of the whole job in percent.
FINETUNE_PHASES: Tuple[Tuple[str, float], ...] = (
    ("data", 2.0), ("eval-base", 8.0), ("train", 80.0), ("eval", 10.0))
# Phases that run inside another one: validation during training is part of training.
PART_OF = {"val": "train"}
PHASE_WORDS = {"data": "preparing data", "eval-base": "evaluating base model", "train": "training",
               "val": "validating", "eval": "evaluating fine-tuned model", "done": "done"}


def human_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return ""
    s = int(max(0, round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{sec:02d}s"
    return f"{sec}s"


@dataclasses.dataclass
class Progress:
    """One progress record. percent is of the whole job; phase_percent of the current phase."""

    phase: str = ""
    percent: Optional[float] = None
    phase_percent: Optional[float] = None
    epoch: Optional[int] = None
    epochs: Optional[int] = None
    iter: Optional[int] = None
    iters: Optional[int] = None
    loss: Optional[float] = None
    eta_seconds: Optional[float] = None

    def line(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        return PROGRESS_PREFIX + json.dumps(_finite(fields), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_record(cls, record: Dict[str, Any]) -> "Progress":
        """A record from a log line; fields of the wrong type are dropped, not trusted."""
        kwargs: Dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            v = record.get(f.name)
            if f.name == "phase":
                if isinstance(v, str):
                    kwargs["phase"] = v
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                kwargs[f.name] = int(v) if f.name in ("epoch", "epochs", "iter", "iters") else float(v)
        return cls(**kwargs)

    def text(self) -> str:
        """e.g. '46% training epoch 23/50, ETA 2m10s' or '9% evaluating base model'."""
        words = [f"{self.percent:.0f}%" if self.percent is not None else "",
                 PHASE_WORDS.get(self.phase, self.phase)]
        if self.phase in ("train", "val") and self.epoch is not None and self.epochs:
            words.append(f"epoch {self.epoch}/{self.epochs}")
        text = " ".join(w for w in words if w)
        if self.phase == "train" and self.eta_seconds is not None:
            text += f", ETA {human_duration(self.eta_seconds)}"
        return text or "running"


class ProgressPlan:
    """Turns (phase, fraction of that phase) into the whole job's percentage, which only rises.
    Phases in `skip` (e.g. eval-base without a base checkpoint) give their share to the rest."""

    def __init__(self, phases: Sequence[Tuple[str, float]] = FINETUNE_PHASES, skip: Iterable[str] = ()):
        kept = [(p, w) for p, w in phases if p not in set(skip)]
        total = sum(w for _, w in kept) or 1.0
        self.span: Dict[str, Tuple[float, float]] = {}
        start = 0.0
        for phase, weight in kept:
            share = 100.0 * weight / total
            self.span[phase] = (start, share)
            start += share
        self.last = 0.0

    def report(self, phase: str, fraction: float, **fields: Any) -> Progress:
        """The record for `phase` being `fraction` (0-1) done. For a phase that is part of
        another (validation during training) `fraction` is that of the enclosing phase."""
        fraction = min(1.0, max(0.0, float(fraction)))
        owner = PART_OF.get(phase, phase)
        if owner == "done":
            overall = 100.0
        elif owner not in self.span:
            raise ValueError(f"phase {phase!r} is not in the plan {list(self.span)}")
        else:
            start, share = self.span[owner]
            overall = start + share * fraction
        self.last = max(self.last, overall)
        phase_percent = fields.pop("phase_percent", None)
        if phase_percent is None and owner == phase:
            phase_percent = 100.0 * fraction
        return Progress(phase=phase, percent=round(self.last, 2),
                        phase_percent=None if phase_percent is None else round(phase_percent, 2), **fields)


def parse_progress(lines: Iterable[str]) -> Optional[Progress]:
    """The last progress record in a log, or None."""
    last = None
    for line in lines:
        idx = line.find(PROGRESS_PREFIX)
        if idx < 0:
            continue
        try:
            rec = json.loads(line[idx + len(PROGRESS_PREFIX):])
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            last = rec
    return Progress.from_record(last) if last is not None else None
