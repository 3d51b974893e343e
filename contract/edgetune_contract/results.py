"""The result document a step writes to its termination message, typed per step.

The document is JSON (< 4 KiB, the kubelet's limit):
    {"schema": "edgetune.io/result/v1", "step", "ok", "reason", "message",
     "metrics": {...}, "artifacts": {name: path relative to the step's folder}, "provenance": {...}}
Each step has a result class whose fields are its metrics; to_doc()/from_doc() convert,
and from_doc() refuses a document whose metrics do not have the step's shape. Latencies are
in milliseconds, APs in [0, 1]. provenance says what measured the figures (iterations,
warm-up, dataset, precision, device, versions) and stays a free-form dict.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Tuple, Type

from .names import DEFAULT_RESULT_PATH, ENV_RESULT_PATH, STEPS

RESULT_SCHEMA = "edgetune.io/result/v1"
MAX_RESULT_BYTES = 4096  # the kubelet truncates termination messages beyond this
COCO_KEYS = ("mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l")
STAGES = ("preprocess", "inference", "postprocess", "pipeline")
LATENCY_STATS = ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")


class ResultError(ValueError):
    """A termination message that is not a valid result document."""


def _number(where: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultError(f"result document field {where!r} must be a number, got {value!r}")
    return value


def _figures(where: str, value: Any, keys: Tuple[str, ...]) -> Optional[Dict[str, Optional[float]]]:
    """A dict of numbers with exactly `keys` (None where not measured), or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ResultError(f"result document field {where!r} must be an object, got {value!r}")
    unknown = sorted(set(value) - set(keys))
    if unknown:
        raise ResultError(f"result document field {where!r} has unknown keys {unknown}; known: {list(keys)}")
    return {k: _number(f"{where}.{k}", value.get(k)) for k in keys}


def coco(where: str, value: Any) -> Optional[Dict[str, Optional[float]]]:
    """COCO bbox figures (COCO_KEYS)."""
    return _figures(where, value, COCO_KEYS)


def latency(where: str, value: Any) -> Optional[Dict[str, Optional[float]]]:
    """Latency statistics of one stage (LATENCY_STATS, milliseconds)."""
    return _figures(where, value, LATENCY_STATS)


@dataclasses.dataclass
class StepResult:
    """The envelope; subclasses add their metrics as fields and set STEP."""

    STEP: ClassVar[str] = ""
    # metric -> its decoder (coco, latency); a metric not named here is a number
    FIGURES: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {}
    ok: bool = True
    reason: str = ""
    message: str = ""
    artifacts: Dict[str, str] = dataclasses.field(default_factory=dict)
    provenance: Dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reason = self.reason or ("Succeeded" if self.ok else "Failed")

    # --- metrics: the subclass's own fields
    @classmethod
    def metric_names(cls) -> Tuple[str, ...]:
        envelope = {f.name for f in dataclasses.fields(StepResult)}
        return tuple(f.name for f in dataclasses.fields(cls) if f.name not in envelope)

    def metrics(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self.metric_names()}

    @classmethod
    def decode_metrics(cls, metrics: Mapping[str, Any]) -> Dict[str, Any]:
        """The step's metrics, each checked by its decoder; unknown ones are refused."""
        unknown = sorted(set(metrics) - set(cls.metric_names()))
        if unknown:
            raise ResultError(f"{cls.STEP} result has unknown metrics {unknown}; known: {list(cls.metric_names())}")
        return {name: cls.FIGURES.get(name, _number)(f"metrics.{name}", metrics.get(name))
                for name in cls.metric_names()}

    # --- the document
    def to_doc(self) -> Dict[str, Any]:
        return {"schema": RESULT_SCHEMA, "step": self.STEP, "ok": bool(self.ok),
                "reason": self.reason,
                "message": self.message, "metrics": self.metrics(),
                "artifacts": dict(self.artifacts), "provenance": dict(self.provenance)}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> "StepResult":
        """The typed result of a document (of this step, or of any step when called on
        StepResult itself)."""
        if not isinstance(doc, Mapping) or doc.get("schema") != RESULT_SCHEMA:
            got = doc.get("schema") if isinstance(doc, Mapping) else type(doc).__name__
            raise ResultError(f"not a result document: schema is {got!r}")
        for key, kind in (("step", str), ("ok", bool), ("reason", str), ("message", str),
                          ("metrics", dict), ("artifacts", dict), ("provenance", dict)):
            if not isinstance(doc.get(key), kind):
                raise ResultError(f"result document field {key!r} must be {kind.__name__}")
        target = RESULT_TYPES.get(doc["step"])
        if target is None:
            raise ResultError(f"result document names unknown step {doc['step']!r}")
        if cls is not StepResult and target is not cls:
            raise ResultError(f"a {doc['step']} result where a {cls.STEP} result was expected")
        if not all(isinstance(v, str) for v in doc["artifacts"].values()):
            raise ResultError("result document artifacts must map names to paths")
        return target(ok=doc["ok"], reason=doc["reason"], message=doc["message"],
                      artifacts=dict(doc["artifacts"]), provenance=dict(doc["provenance"]),
                      **target.decode_metrics(doc["metrics"]))

    def encode(self) -> str:
        return encode(self.to_doc())

    def write(self, path: Optional[str] = None) -> str:
        """Write the document where the Pod's termination message is read."""
        path = path or os.environ.get(ENV_RESULT_PATH, DEFAULT_RESULT_PATH)
        text = self.encode()
        directory = os.path.dirname(path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path


@dataclasses.dataclass
class FinetuneResult(StepResult):
    STEP: ClassVar[str] = "finetune"
    ARTIFACTS: ClassVar[Tuple[str, ...]] = ("checkpoint", "config", "dataset", "detections")
    FIGURES: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {"base": coco, "finetuned": coco}
    base: Optional[Dict[str, Optional[float]]] = None       # COCO figures of the starting checkpoint
    finetuned: Optional[Dict[str, Optional[float]]] = None  # COCO figures of the result


@dataclasses.dataclass
class ExportResult(StepResult):
    STEP: ClassVar[str] = "export"
    ARTIFACTS: ClassVar[Tuple[str, ...]] = ("onnx", "meta")
    FIGURES: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {"reference": coco}
    onnx_bytes: Optional[float] = None
    reference: Optional[Dict[str, Optional[float]]] = None  # the PyTorch model's COCO figures at this input


@dataclasses.dataclass
class BuildEngineResult(StepResult):
    STEP: ClassVar[str] = "build-engine"
    ARTIFACTS: ClassVar[Tuple[str, ...]] = ("engine", "model", "build_info")  # engine (TensorRT) or model
    build_seconds: Optional[float] = None
    engine_bytes: Optional[float] = None

    def model_artifact(self) -> Optional[str]:
        return self.artifacts.get("engine") or self.artifacts.get("model")


@dataclasses.dataclass
class VerifyResult(StepResult):
    STEP: ClassVar[str] = "verify"
    ARTIFACTS: ClassVar[Tuple[str, ...]] = ("report",)
    FIGURES: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {"converted": coco, "reference": coco}
    converted: Optional[Dict[str, Optional[float]]] = None
    reference: Optional[Dict[str, Optional[float]]] = None
    map_drop: Optional[float] = None  # reference mAP - converted mAP (positive = worse)


@dataclasses.dataclass
class BenchmarkResult(StepResult):
    STEP: ClassVar[str] = "benchmark"
    ARTIFACTS: ClassVar[Tuple[str, ...]] = ("report",)
    # stage -> latency statistics: STAGES, plus "inference_gpu" (CUDA-event time) where measured
    latency: Dict[str, Dict[str, Optional[float]]] = dataclasses.field(default_factory=dict)
    fps: Optional[float] = None
    peak_rss_mib: Optional[float] = None     # the step process's peak resident memory (VmHWM)
    peak_device_mib: Optional[float] = None  # peak device (GPU) memory where measurable

    def metrics(self) -> Dict[str, Any]:  # stages sit at the top of "metrics", beside fps and memory
        return {**self.latency, "fps": self.fps, **{k: getattr(self, k) for k in MEMORY_METRICS
                                                     if getattr(self, k) is not None}}

    @classmethod
    def decode_metrics(cls, metrics: Mapping[str, Any]) -> Dict[str, Any]:
        scalars = ("fps",) + MEMORY_METRICS
        stages = {k: v for k, v in metrics.items() if k not in scalars}
        unknown = sorted(set(stages) - set(STAGES + ("inference_gpu",)))
        if unknown:
            raise ResultError(f"benchmark result has unknown metrics {unknown}")
        return {"latency": {k: latency(f"metrics.{k}", v) for k, v in stages.items() if v is not None},
                **{k: _number(f"metrics.{k}", metrics.get(k)) for k in scalars}}


MEMORY_METRICS = ("peak_rss_mib", "peak_device_mib")
# One row of a sweep: a model measured beside the others (milliseconds, frames/s, MiB).
SWEEP_ROW_NUMBERS = ("p50_ms", "p99_ms", "mean_ms", "fps", "peak_rss_mib", "peak_device_mib",
                     "inference_p50_ms")
SWEEP_ROW_TEXT = ("name", "precision_run", "error")
SWEEP_ROW_FLAGS = ("within_budget",)  # the step's verdict: accuracy kept and drop within --max-map-drop


def sweep_rows(where: str, value: Any) -> list:
    if not isinstance(value, list):
        raise ResultError(f"result document field {where!r} must be a list, got {value!r}")
    rows = []
    for i, row in enumerate(value):
        if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
            raise ResultError(f"{where}[{i}] must be an object with a name")
        unknown = sorted(set(row) - set(SWEEP_ROW_NUMBERS + SWEEP_ROW_TEXT + SWEEP_ROW_FLAGS))
        if unknown:
            raise ResultError(f"{where}[{i}] has unknown keys {unknown}")
        out: Dict[str, Any] = {k: _number(f"{where}[{i}].{k}", row.get(k)) for k in SWEEP_ROW_NUMBERS
                               if row.get(k) is not None}
        out.update({k: str(row[k]) for k in SWEEP_ROW_TEXT if row.get(k) is not None})
        for k in SWEEP_ROW_FLAGS:
            if row.get(k) is not None:
                if not isinstance(row[k], bool):
                    raise ResultError(f"{where}[{i}].{k} must be a boolean, got {row[k]!r}")
                out[k] = row[k]
        rows.append(out)
    return rows


def _text(where: str, value: Any) -> Optional[str]:
    if value is not None and not isinstance(value, str):
        raise ResultError(f"result document field {where!r} must be a string, got {value!r}")
    return value


@dataclasses.dataclass
class SweepResult(StepResult):
    STEP: ClassVar[str] = "sweep"
    ARTIFACTS: ClassVar[Tuple[str, ...]] = ("report", "plot", "plot_png")
    FIGURES: ClassVar[Dict[str, Callable[[str, Any], Any]]] = {"rows": sweep_rows, "best": _text}
    rows: list = dataclasses.field(default_factory=list)  # one per model, in the order asked
    best: Optional[str] = None  # the fastest row (pipeline p50) within the accuracy budget


RESULT_TYPES: Dict[str, Type[StepResult]] = {cls.STEP: cls for cls in (
    FinetuneResult, ExportResult, BuildEngineResult, VerifyResult, BenchmarkResult, SweepResult)}
assert list(RESULT_TYPES) == list(STEPS), "every step has exactly one result class"


def failure(step: str, reason: str, message: str, provenance: Optional[Mapping[str, Any]] = None) -> StepResult:
    """The ok=false result of a step that ended before it measured anything."""
    if step not in RESULT_TYPES:
        raise ValueError(f"unknown step {step!r}")
    return RESULT_TYPES[step](ok=False, reason=reason, message=message, provenance=dict(provenance or {}))


# --- the accuracy gate: decided here, once -----------------------------------------------------


def map_drop(reference: Optional[Mapping[str, Any]], converted: Optional[Mapping[str, Any]]) -> Optional[float]:
    """reference mAP - converted mAP, rounded to 4 places (None without both)."""
    if not reference or not converted or reference.get("mAP") is None or converted.get("mAP") is None:
        return None
    return round(float(reference["mAP"]) - float(converted["mAP"]), 4)


def accuracy_gate(drop: Optional[float], max_drop: Optional[float]) -> bool:
    """Whether a conversion keeps its accuracy: no limit, or a measured drop within it."""
    if max_drop is None:
        return True
    return drop is not None and drop <= max_drop + 1e-9


# --- encoding -----------------------------------------------------------------------------------


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: replace them with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode(doc: Mapping[str, Any]) -> str:
    """Serialise a result document, compactly, within MAX_RESULT_BYTES. A too-long message
    is shortened (the only free-text field); a document still too large raises."""
    doc = _finite(dict(doc))
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    overflow = len(text.encode()) - MAX_RESULT_BYTES
    if overflow > 0 and doc.get("message"):
        msg = doc["message"].encode()
        keep = max(0, len(msg) - overflow - 3)
        doc["message"] = msg[:keep].decode(errors="ignore") + "..."
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > MAX_RESULT_BYTES:
        raise ResultError(f"result document is {len(text.encode())} bytes, limit {MAX_RESULT_BYTES}")
    return text


def decode(text: str) -> StepResult:
    """Parse and check a termination message into the step's typed result."""
    try:
        doc = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        snippet = (text or "").strip().splitlines()[-1:] or [""]
        raise ResultError(f"not a result document (last line: {snippet[0][:200]!r}): {exc}") from None
    return StepResult.from_doc(doc)


def device_label(device: Any) -> str:
    """A short human name for a result's provenance["device"] (a dict from the step's
    device_info, or a plain string): what status.device and the metrics' `device` label show.
    E.g. 'NVIDIA Jetson AGX Orin (JetPack 5.1.2, MAXN (mode 0))', 'NVIDIA H100 80GB HBM3',
    'AMD EPYC (2 CPUs, x86_64)'."""
    if not isinstance(device, Mapping):
        return str(device or "")
    if device.get("kind") in ("jetson", "board"):
        extras = [f"JetPack {device['jetpack']}" if device.get("jetpack") else
                  (f"L4T {device['l4t']}" if device.get("l4t") else ""), device.get("power_mode") or ""]
        extras = [e for e in extras if e]
        name = str(device.get("model") or "Jetson").strip("\x00 ")
        return f"{name} ({', '.join(extras)})" if extras else name
    if device.get("gpu"):
        return str(device["gpu"])
    cpus = device.get("cpus")
    extras = ", ".join(x for x in (f"{cpus} CPUs" if cpus else "", str(device.get("arch") or "")) if x)
    name = str(device.get("cpu") or device.get("kind") or "unknown device")
    return f"{name} ({extras})" if extras else name
