"""The one contract between the operator and the job steps.

Everything both sides must agree on lives here and nowhere else: the API group,
the job steps and their command lines, labels, the environment the Pods get, the
result document a step writes to its termination message, and the progress lines
the operator reads from a running step's log.

This module must stay importable with the standard library alone: the operator
image has no torch/mmdet, and the operator imports it.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

GROUP = "edgetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# kind -> plural, as registered by the CRDs
PLURALS = {
    "FinetuneJob": "finetunejobs",
    "ModelConversion": "modelconversions",
    "EdgeBenchmark": "edgebenchmarks",
}

# --- job steps -----------------------------------------------------------------

# step name (as in labels, Job names and the result's "step") -> python module
STEPS = {
    "finetune": "edgetune_jobs.finetune",
    "export": "edgetune_jobs.export",
    "build-engine": "edgetune_jobs.build_engine",
    "verify": "edgetune_jobs.verify",
    "benchmark": "edgetune_jobs.benchmark",
}


def step_command(step: str, python: str = "python") -> list[str]:
    """The container command of a step: `python -m edgetune_jobs.<module>`."""
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; known: {sorted(STEPS)}")
    return [python, "-m", STEPS[step]]


# --- labels and annotations --------------------------------------------------------

LABEL_NAME = "app.kubernetes.io/name"              # always "edgetune"
LABEL_COMPONENT = "app.kubernetes.io/component"    # the step
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"  # "edgetune-operator"
LABEL_PART_OF = "app.kubernetes.io/part-of"        # "edgetune"
LABEL_KIND = f"{GROUP}/kind"                       # FinetuneJob / ModelConversion / EdgeBenchmark
LABEL_RESOURCE = f"{GROUP}/resource"               # the owning resource's name
LABEL_STEP = f"{GROUP}/step"                       # the step
LABEL_RUN = f"{GROUP}/run"                         # run number (scheduled benchmarks), "1" otherwise
MANAGED_BY = "edgetune-operator"

# Node selection defaults (the local cluster's nodes carry the same labels; see
# localcluster/README.md and the README's "Installing on k3s with a Jetson").
LABEL_DEVICE = f"{GROUP}/device"
DEVICE_GPU = "x86-gpu"
DEVICE_JETSON = "jetson-orin"
EDGE_TAINT_KEY = f"{GROUP}/edge"
GPU_RESOURCE = "nvidia.com/gpu"

# --- environment and paths inside the Pods ------------------------------------------

ENV_RESULT_PATH = "EDGETUNE_RESULT_PATH"
DEFAULT_RESULT_PATH = "/dev/termination-log"
ENV_ARTIFACT_DIR = "EDGETUNE_ARTIFACT_DIR"  # the step's own output folder (inside the mount)
ARTIFACT_MOUNT = "/artifacts"                # where the artifact PVC is mounted
ARTIFACT_SCHEME = "pvc"                      # status artifacts are pvc://<claim>/<path>

# --- the result document ------------------------------------------------------------------

RESULT_SCHEMA = "edgetune.io/result/v1"
MAX_RESULT_BYTES = 4096  # the kubelet truncates termination messages beyond this


class ResultError(ValueError):
    """A termination message that is not a valid result document."""


def make_result(
    step: str,
    ok: bool,
    *,
    reason: str = "",
    message: str = "",
    metrics: Mapping[str, Any] | None = None,
    artifacts: Mapping[str, str] | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a result document.

    - metrics: figures (numbers, or dicts of numbers); latencies in milliseconds,
      APs in [0, 1].
    - artifacts: name -> path relative to the step's artifact folder.
    - provenance: what measured the figures (iterations, warm-up, dataset size,
      precision, device, versions...).
    - reason: CamelCase machine-readable reason (Succeeded, InvalidInput, ...).
    """
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}")
    return {
        "schema": RESULT_SCHEMA,
        "step": step,
        "ok": bool(ok),
        "reason": reason or ("Succeeded" if ok else "Failed"),
        "message": message,
        "metrics": dict(metrics or {}),
        "artifacts": dict(artifacts or {}),
        "provenance": dict(provenance or {}),
    }


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: replace them with None, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode_result(doc: Mapping[str, Any]) -> str:
    """Serialise a result document, compactly, within MAX_RESULT_BYTES.

    A too-long message is shortened (it is the only free-text field); a document
    still too large is a bug in the step and raises.
    """
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


def decode_result(text: str) -> dict[str, Any]:
    """Parse and check a termination message. Raises ResultError with the cause."""
    try:
        doc = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        snippet = (text or "").strip().splitlines()[-1:] or [""]
        raise ResultError(f"not a result document (last line: {snippet[0][:200]!r}): {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != RESULT_SCHEMA:
        raise ResultError(f"not a result document: schema is {doc.get('schema') if isinstance(doc, dict) else type(doc).__name__!r}")
    for key, kind in (("step", str), ("ok", bool), ("reason", str), ("message", str),
                      ("metrics", dict), ("artifacts", dict), ("provenance", dict)):
        if not isinstance(doc.get(key), kind):
            raise ResultError(f"result document field {key!r} must be {kind.__name__}")
    if doc["step"] not in STEPS:
        raise ResultError(f"result document names unknown step {doc['step']!r}")
    return doc


def write_result(doc: Mapping[str, Any], path: str | None = None) -> str:
    """Write the result document where the Pod's termination message is read."""
    path = path or os.environ.get(ENV_RESULT_PATH, DEFAULT_RESULT_PATH)
    text = encode_result(doc)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


# --- progress lines ------------------------------------------------------------------------

PROGRESS_PREFIX = "EDGETUNE_PROGRESS "


def progress_line(**fields: Any) -> str:
    """One structured progress line for the log, e.g. during training:
    progress_line(phase="train", epoch=3, epochs=40, iter=120, iters=1600,
                  loss=0.81, eta_seconds=412.0, percent=7.5)
    """
    return PROGRESS_PREFIX + json.dumps(_finite(fields), separators=(",", ":"), sort_keys=True)


def parse_progress(lines: Iterable[str]) -> dict[str, Any] | None:
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
    return last


# --- latency statistics keys (benchmark results, status, metrics) ---------------------------

STAGES = ("preprocess", "inference", "postprocess", "pipeline")
LATENCY_STATS = ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")
COCO_KEYS = ("mAP", "mAP50", "mAP75", "mAP_s", "mAP_m", "mAP_l")

# --- what each step's result carries (the operator reads exactly these keys) -------------------
#
# finetune   metrics:    {"base": {COCO_KEYS...} | null, "finetuned": {COCO_KEYS...}}
#            artifacts:  {"checkpoint": "best.pth", "config": "config.py", "dataset": "data"}
#            provenance: {"dataset": {"source", "format", "train_images", "val_images", "classes"},
#                         "epochs", "iterations", "batch_size", "image_size", "seed",
#                         "device", "seconds", "versions": {"torch", "mmcv", "mmdet", "mmengine"}}
# export     metrics:    {"onnx_bytes"}
#            artifacts:  {"onnx": "end2end.onnx", "meta": "pipeline.json"}
#            provenance: {"backend", "input_shape", "dynamic", "opset", "versions": {...}}
# build-engine metrics:  {"build_seconds", "engine_bytes"}
#            artifacts:  {"engine": "end2end.engine"} (onnxruntime: {"model": "end2end.onnx"})
#            provenance: {"backend", "precision", "device", "versions": {"tensorrt"|"onnxruntime", ...}}
# verify     metrics:    {"converted": {COCO_KEYS...}, "reference": {COCO_KEYS...}, "map_drop"}
#            provenance: {"backend", "precision", "images", "device", "versions"}
# benchmark  metrics:    {"<stage>": {LATENCY_STATS...} for stage in STAGES, "fps"}
#            provenance: {"backend", "precision", "device", "warmup", "iterations", "images",
#                         "input_shape", "threads", "gpu_timing", "versions": {...}}
#
# Failure: ok=false, reason (InvalidInput, DatasetNotFound, CheckpointNotFound, ExportFailed,
# BuildFailed, AccuracyDropTooLarge, BackendUnavailable, ...), message = one line for humans.


def device_label(device: Any) -> str:
    """A short human name for a result's provenance["device"] (a dict from the job's
    runtime.device_info, or a plain string): what status.device and the metrics' `device`
    label show. E.g. 'NVIDIA Jetson AGX Orin (JetPack 5.1.2, MAXN (mode 0))',
    'NVIDIA H100 80GB HBM3', 'AMD EPYC (2 CPUs, x86_64)'."""
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
