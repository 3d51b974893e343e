"""The one source of truth for the three CRDs.

The OpenAPI schemas (with descriptions, defaults, enums, bounds, patterns and CEL
rules), printer columns and names are defined here as Python data. ``crds/*.yaml`` is
*generated* from this module (``python -m edgetune_operator.crdgen``; a unit test fails
when the files drift), and the operator applies the very same defaults
(:func:`apply_defaults`) when it builds Jobs, so the operator's defaults and the API
server's cannot differ.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from edgetune_jobs import contract

GROUP = contract.GROUP
VERSION = contract.VERSION
KINDS = ("FinetuneJob", "ModelConversion", "EdgeBenchmark")
SHORT_NAMES = {"FinetuneJob": ["ftj", "finetune"], "ModelConversion": ["mc", "conversion"],
               "EdgeBenchmark": ["ebm", "edgebench"]}
CATEGORIES = ["edgetune", "all-edgetune"]
PHASES = ("Pending", "Waiting", "Running", "Succeeded", "Failed")
STEP_PHASES = ("Pending", "Running", "Succeeded", "Failed")

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
            r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
CRON = r"^(@(yearly|annually|monthly|weekly|daily|hourly)|([0-9*,/-]+\s+){4}[0-9*,/-]+)$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
COCO_FIELDS = contract.COCO_KEYS  # mAP, mAP50, mAP75, mAP_s, mAP_m, mAP_l


# --- schema helpers -------------------------------------------------------------------------


def rule(expr: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict:
    r: dict[str, Any] = {"rule": expr, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    if reason:
        r["reason"] = reason
    return r


def _s(desc: str, **kw: Any) -> dict:
    return {"type": "string", "description": desc, **kw}


def _i(desc: str, **kw: Any) -> dict:
    return {"type": "integer", "description": desc, **kw}


def _n(desc: str, **kw: Any) -> dict:
    return {"type": "number", "description": desc, **kw}


def _b(desc: str, **kw: Any) -> dict:
    return {"type": "boolean", "description": desc, **kw}


def _time(desc: str) -> dict:
    return {"type": "string", "format": "date-time", "description": desc}


def _obj(desc: str, props: dict, required: tuple | list = (), rules: list | None = None, **kw: Any) -> dict:
    o: dict[str, Any] = {"type": "object", "description": desc, "properties": props}
    if required:
        o["required"] = list(required)
    if rules:
        o["x-kubernetes-validations"] = rules
    o.update(kw)
    return o


def _arr(desc: str, items: dict, **kw: Any) -> dict:
    return {"type": "array", "description": desc, "items": items, **kw}


def _smap(desc: str, value_desc: str, **kw: Any) -> dict:
    return {"type": "object", "description": desc,
            "additionalProperties": {"type": "string", "description": value_desc}, **kw}


def _free(desc: str) -> dict:
    return {"type": "object", "description": desc, "x-kubernetes-preserve-unknown-fields": True}


# --- shared pieces ----------------------------------------------------------------------------


def _artifact_path(desc: str) -> dict:
    return _s(desc + " A path inside the artifact volume (relative to its root, no '..'), "
              "or an http(s)/s3/gs URL where the step accepts one.", minLength=1, maxLength=1024,
              **{"x-kubernetes-validations": [
                  rule("!self.startsWith('/') && !self.contains('..')",
                       "must be relative to the artifact volume's root and must not contain '..'")]})


def _quantity_map(desc: str) -> dict:
    return {"type": "object", "description": desc, "maxProperties": 16,
            "additionalProperties": {
                "description": "A resource quantity (e.g. 2, 500m, 8Gi).",
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True, "pattern": QUANTITY}}


def placement(what: str, default_desc: str) -> dict:
    return _obj(
        f"Where the {what} runs. Each field given here replaces the operator's default "
        f"for it as a whole ({default_desc}).",
        {
            "nodeSelector": _smap("Node labels the Pod must match.", "The label value.",
                                  maxProperties=16, **{"x-kubernetes-validations": [
                                      rule("self.all(k, k.matches('" + LABEL_KEY.replace("\\", "\\\\") + "'))",
                                           "nodeSelector keys must be valid label keys")]}),
            "tolerations": _arr(
                "Taints the Pod tolerates (the core/v1 Toleration shape).",
                _obj("A toleration.", {
                    "key": _s("The taint key; empty with operator Exists matches every key.", maxLength=253),
                    "operator": _s("Exists or Equal.", enum=["Exists", "Equal"], default="Equal"),
                    "value": _s("The taint value (operator Equal).", maxLength=63),
                    "effect": _s("The taint effect; empty matches all effects.",
                                 enum=["NoSchedule", "PreferNoSchedule", "NoExecute", ""]),
                    "tolerationSeconds": _i("How long a NoExecute taint is tolerated.", minimum=0),
                }, rules=[rule("self.operator != 'Exists' || !has(self.value) || self.value == ''",
                               "a toleration with operator Exists must not have a value")]),
                maxItems=16, **{"x-kubernetes-list-type": "atomic"}),
            "resources": _obj("Compute resources of the step's container (core/v1 ResourceRequirements).", {
                "limits": _quantity_map("Resource limits, e.g. {nvidia.com/gpu: 1, memory: 16Gi}."),
                "requests": _quantity_map("Resource requests, e.g. {cpu: 2, memory: 8Gi}."),
            }),
            "image": _s("Container image for the step; replaces the operator's image setting.",
                        minLength=1, maxLength=512, pattern=r"^\S+$"),
        })


def env_list() -> dict:
    return _arr(
        "Extra environment variables for the step containers (names starting with EDGETUNE_ are reserved).",
        _obj("An environment variable.", {
            "name": _s("The variable name.", pattern=ENV_NAME, maxLength=128),
            "value": _s("The value.", maxLength=4096, default=""),
        }, required=["name"], rules=[rule("!self.name.startsWith('EDGETUNE_')",
                                          "env names starting with EDGETUNE_ are reserved for the operator",
                                          field_path=".name")]),
        maxItems=32, **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})


def run_settings() -> dict:
    return _obj("How the Jobs run.", {
        "backoffLimit": _i("Retries of a failed step Pod before the step fails (Job backoffLimit).",
                           minimum=0, maximum=10, default=0),
        "activeDeadlineSeconds": _i("Time limit of each step's Job; unset uses the operator's per-step default.",
                                    minimum=10, maximum=7 * 24 * 3600),
    }, default={})


def artifacts_spec() -> dict:
    return _obj("Where the steps write their outputs.", {
        "claimName": _s("The PersistentVolumeClaim (in this namespace) mounted at /artifacts; "
                        "unset uses the operator's default (edgetune-artifacts).",
                        pattern=DNS_SUBDOMAIN, maxLength=253),
    }, default={})


def coco(desc: str) -> dict:
    return _obj(desc, {k: _n(f"COCO bbox {k} in [0, 1].") for k in COCO_FIELDS})


def condition_list() -> dict:
    return _arr(
        "The latest observations of the resource's state (metav1.Condition).",
        _obj("A condition.", {
            "type": _s("Condition type: Ready, Progressing, Scheduled, Failed, SourceReady or ModelReady.",
                       maxLength=316),
            "status": _s("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": _s("CamelCase reason for the last transition.", maxLength=1024),
            "message": _s("Human-readable details.", maxLength=32768),
            "lastTransitionTime": _time("When the status last changed."),
            "observedGeneration": _i("The .metadata.generation the condition was set for.", minimum=0),
        }, required=["type", "status", "lastTransitionTime", "reason", "message"]),
        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


def step_list() -> dict:
    return _arr(
        "One entry per step (Job) of the current run.",
        _obj("A step.", {
            "name": _s("The step: finetune, export, build-engine, verify or benchmark."),
            "job": _s("The Job's name."),
            "phase": _s("Pending, Running, Succeeded or Failed.", enum=list(STEP_PHASES)),
            "node": _s("The node the step's Pod ran on."),
            "startTime": _time("When the Job started."),
            "completionTime": _time("When the Job finished."),
            "durationSeconds": _n("Job run time (completion - start) in seconds."),
            "reason": _s("Reason of the step's state (the result's reason when finished)."),
            "message": _s("The step's message (the result's message when finished)."),
        }, required=["name"]),
        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})


def common_status(props: dict) -> dict:
    base = {
        "phase": _s("Pending, Waiting, Running, Succeeded or Failed.", enum=list(PHASES)),
        "message": _s("One line on the current state (the failing step's own message when Failed)."),
        "observedGeneration": _i("The .metadata.generation last acted on.", minimum=0),
        "conditions": condition_list(),
        "startTime": _time("When the first Job was created."),
        "completionTime": _time("When the resource reached Succeeded or Failed."),
        "steps": step_list(),
        "artifacts": _smap("Outputs, as pvc://<claim>/<namespace>/<kind>/<name>/<step>/<file> URIs.",
                           "An artifact URI."),
        "provenance": _free("What measured the figures: per step, the result's provenance "
                            "(dataset, iterations, device, versions...)."),
    }
    base.update(props)
    return _obj("The observed state, written by the operator.", base)


# --- the three kinds --------------------------------------------------------------------------

IMMUTABLE = rule("self == oldSelf", "spec is immutable: create a new resource for a new run")
NAME_RULE = rule("self.metadata.name.size() <= 63",
                 "metadata.name must be at most 63 characters (it is used in labels and Job names)")

GPU_DEFAULT = "nodeSelector edgetune.io/device=x86-gpu, limits nvidia.com/gpu=1, operator image EDGETUNE_TRAINER_IMAGE"
EDGE_DEFAULT = ("nodeSelector edgetune.io/device=jetson-orin, toleration edgetune.io/edge=true:NoSchedule, "
                "operator image EDGETUNE_JETSON_IMAGE")


def finetunejob_spec() -> dict:
    dataset = _obj(
        "The training data: exactly one of url, path or generate.",
        {
            "url": _s("Download the dataset archive (zip/tar) from this URL.", maxLength=2048,
                      pattern=r"^(https?|s3|gs)://\S+$"),
            "path": _artifact_path("A dataset folder already on the artifact volume."),
            "generate": _obj("Generate a small synthetic balloon-like VIA set (for tests and demos).", {
                "images": _i("Number of images to generate.", minimum=4, maximum=5000, default=24),
                "seed": _i("Random seed of the generator.", minimum=0, maximum=2**31 - 1, default=0),
            }),
            "format": _s("Annotation format: via (VIA 1.x/2.x polygons) or coco.", enum=["via", "coco"], default="via"),
            "valFraction": _n("Fraction of images held out for validation when the set has no val/ split.",
                              exclusiveMinimum=True, minimum=0, maximum=0.9),
        },
        rules=[
            rule("[has(self.url), has(self.path), has(self.generate)].filter(x, x).size() == 1",
                 "exactly one of dataset.url, dataset.path and dataset.generate must be set"),
            rule("!has(self.generate) || self.format == 'via'",
                 "dataset.generate produces a VIA set: dataset.format must be via", field_path=".format"),
        ])
    model = _obj("The model to fine-tune.", {
        "config": _s("An mmdet config name (from the model zoo).", default="rtmdet_tiny_8xb32-300e_coco",
                     pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", maxLength=128),
        "checkpoint": _s("Checkpoint to start from: a URL or a path on the artifact volume; "
                         "unset uses the config's COCO-pretrained weights.", maxLength=2048, minLength=1),
    }, default={})
    training = _obj("Training settings.", {
        "epochs": _i("Training epochs.", minimum=1, maximum=1000, default=40),
        "batchSize": _i("Images per batch.", minimum=1, maximum=256, default=12),
        "imageSize": _i("Square input size in pixels; a multiple of 32.", minimum=64, maximum=2048, default=640,
                        **{"x-kubernetes-validations": [rule("self % 32 == 0", "imageSize must be a multiple of 32")]}),
        "learningRate": _n("Base learning rate (AdamW).", exclusiveMinimum=True, minimum=0, maximum=1, default=0.004),
        "seed": _i("Random seed.", minimum=0, maximum=2**31 - 1, default=0),
        "workers": _i("Data loader workers.", minimum=0, maximum=32, default=2),
        "valInterval": _i("Evaluate every N epochs.", minimum=1, maximum=1000, default=10),
        "evalBase": _b("Also evaluate the base (not fine-tuned) model, for the before/after figure.", default=True),
        "device": _s("auto (the job picks cuda when available), cuda or cpu.", enum=["auto", "cuda", "cpu"],
                     default="auto"),
    }, default={}, rules=[rule("!has(self.valInterval) || !has(self.epochs) || self.valInterval <= self.epochs",
                               "valInterval must not exceed epochs",
                               field_path=".valInterval")])
    return _obj("The desired fine-tuning run. Immutable once created.", {
        "dataset": dataset,
        "model": model,
        "training": training,
        "placement": placement("fine-tuning Job", GPU_DEFAULT),
        "run": run_settings(),
        "artifacts": artifacts_spec(),
        "env": env_list(),
    }, required=["dataset"], rules=[IMMUTABLE])


def modelconversion_spec() -> dict:
    source = _obj("What to convert: exactly one of finetuneJob or model.", {
        "finetuneJob": _s("A FinetuneJob in this namespace; its checkpoint, config and validation set are used.",
                          pattern=DNS_SUBDOMAIN, maxLength=253),
        "model": _obj("A checkpoint and its config.", {
            "checkpoint": _artifact_path("The .pth checkpoint."),
            "config": _artifact_path("The mmdet config file of the checkpoint."),
            "valDataset": _artifact_path("A prepared dataset folder (annotations/val.json + images/) for verify."),
            "name": _s("The model's name in metrics and columns (default: the config file's name).",
                       maxLength=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        }, required=["checkpoint", "config"]),
    }, rules=[rule("[has(self.finetuneJob), has(self.model)].filter(x, x).size() == 1",
                   "exactly one of source.finetuneJob and source.model must be set")])
    return _obj("The desired conversion. Immutable once created.", {
        "source": source,
        "backend": _s("Inference backend of the converted model.", enum=["tensorrt", "onnxruntime"], default="tensorrt"),
        "precision": _s("Numeric precision of the engine.", enum=["fp32", "fp16", "int8"], default="fp16"),
        "imageSize": _i("Square input size in pixels (static shape 1x3xNxN); a multiple of 32.",
                        minimum=64, maximum=2048, default=640,
                        **{"x-kubernetes-validations": [rule("self % 32 == 0", "imageSize must be a multiple of 32")]}),
        "dynamic": _b("Export with dynamic batch/height/width axes. On onnxruntime each frame is then padded "
                      "only to the next multiple of 32 (a 16:9 frame at 640 runs at 640x384); a TensorRT "
                      "engine runs at its profile's optimal shape (imageSize square).", default=False),
        "postprocess": _obj("Detection post-processing baked into the exported model.", {
            "scoreThreshold": _n("Minimum score of a kept detection.", minimum=0, maximum=1, default=0.05),
            "iouThreshold": _n("NMS IoU threshold.", minimum=0, maximum=1, default=0.6),
            "maxDetections": _i("Detections kept per image.", minimum=1, maximum=1000, default=100),
        }, default={}),
        "calibration": _obj("INT8 calibration data (required for precision int8).", {
            "images": _artifact_path("A folder of calibration images."),
        }, required=["images"]),
        "export": _obj("The export step (PyTorch -> ONNX).", {
            "placement": placement("export Job", GPU_DEFAULT),
            "device": _s("auto, cuda or cpu for the export.", enum=["auto", "cuda", "cpu"], default="auto"),
        }, default={}),
        "build": _obj("The engine build step (ONNX -> engine, on the target device).", {
            "workspaceMiB": _i("TensorRT builder workspace in MiB.", minimum=64, maximum=65536, default=1024),
        }, default={}),
        "target": placement("engine build and verify Jobs (the target device)", EDGE_DEFAULT),
        "verify": _obj("Measure the converted model's COCO AP on the validation set.", {
            "enabled": _b("Run the verify step.", default=True),
            "maxMapDrop": _n("Fail when mAP(PyTorch) - mAP(converted) exceeds this.", minimum=0, maximum=1,
                             default=0.02),
        }, default={}),
        "run": run_settings(),
        "artifacts": artifacts_spec(),
        "env": env_list(),
    }, required=["source"], rules=[
        IMMUTABLE,
        rule("self.precision != 'int8' || has(self.calibration)",
             "precision int8 needs calibration.images", field_path=".calibration"),
        rule("!self.verify.enabled || has(self.source.finetuneJob) || "
             "(has(self.source.model) && has(self.source.model.valDataset))",
             "verify needs a validation set: set source.model.valDataset or verify.enabled=false",
             field_path=".verify.enabled"),
        rule("!self.dynamic || self.backend == 'onnxruntime' || self.precision != 'int8'",
             "dynamic shapes with tensorrt int8 are not supported", field_path=".dynamic"),
    ])


def edgebenchmark_spec() -> dict:
    return _obj("The desired benchmark. Immutable once created.", {
        "modelConversion": _s("The ModelConversion (in this namespace) whose model is measured.",
                              pattern=DNS_SUBDOMAIN, maxLength=253),
        "target": placement("benchmark Job (the edge device)", EDGE_DEFAULT),
        "warmup": _i("Untimed warm-up iterations.", minimum=0, maximum=100000, default=20),
        "iterations": _i("Timed iterations.", minimum=1, maximum=1000000, default=200),
        "durationSeconds": _n("Run for at least this long (iterations are repeated).", exclusiveMinimum=True,
                              minimum=0, maximum=86400),
        "images": _artifact_path("A folder of images to run on (default: the model's validation images, "
                                 "else synthetic)."),
        "threads": _i("CPU threads of the runtime.", minimum=1, maximum=256),
        "schedule": _s("Cron schedule (5 fields, or @hourly/@daily/@weekly/@monthly/@yearly, UTC) "
                       "for repeated runs; unset runs once.", maxLength=128, pattern=CRON),
        "historyLimit": _i("Results of scheduled runs kept in status.history (older Jobs are deleted).",
                           minimum=1, maximum=100, default=5),
        "run": run_settings(),
        "artifacts": artifacts_spec(),
        "env": env_list(),
    }, required=["modelConversion"], rules=[IMMUTABLE])


def latency_stats(desc: str) -> dict:
    return _obj(desc, {
        "meanMs": _n("Mean, milliseconds."), "p50Ms": _n("Median, milliseconds."),
        "p90Ms": _n("90th percentile, milliseconds."), "p99Ms": _n("99th percentile, milliseconds."),
        "minMs": _n("Minimum, milliseconds."), "maxMs": _n("Maximum, milliseconds."),
    })


def finetunejob_status() -> dict:
    return common_status({
        "model": _s("The model (config name) being fine-tuned."),
        "progress": _obj("Training progress, from the job's progress lines.", {
            "percent": _n("Percent done, 0-100."),
            "epoch": _i("Current epoch."), "epochs": _i("Total epochs."),
            "iteration": _i("Current iteration."), "iterations": _i("Total iterations."),
            "loss": _n("Latest training loss."),
            "etaSeconds": _n("Estimated seconds left."),
            "text": _s("Progress for humans, e.g. '45% ETA 3m20s'."),
            "updateTime": _time("When the progress was read."),
        }),
        "metrics": _obj("COCO bbox metrics on the validation set.", {
            "base": coco("The base model before fine-tuning."),
            "finetuned": coco("The fine-tuned model."),
        }),
    })


def modelconversion_status() -> dict:
    return common_status({
        "stage": _s("The current stage: Waiting, export, build-engine, verify, Done or Failed."),
        "model": _s("The model's name (for metrics and columns)."),
        "source": _obj("The resolved source.", {
            "checkpoint": _s("Checkpoint URI."), "config": _s("Config URI."),
            "valDataset": _s("Validation dataset URI."), "finetuneJob": _s("The source FinetuneJob."),
        }),
        "metrics": _obj("Accuracy and size of the converted model.", {
            "converted": coco("COCO metrics of the converted model."),
            "reference": coco("COCO metrics of the PyTorch model at the same input size."),
            "mapDrop": _n("reference mAP - converted mAP."),
            "onnxBytes": _n("Size of the ONNX file."),
            "engineBytes": _n("Size of the engine file."),
            "buildSeconds": _n("Engine build time."),
        }),
    })


def edgebenchmark_status() -> dict:
    return common_status({
        "model": _s("The measured model's name."),
        "backend": _s("The runtime backend."), "precision": _s("The model's precision."),
        "device": _s("The device the benchmark ran on (the result's provenance, else the node selector)."),
        "node": _s("The node the last run's Pod ran on."),
        "run": _i("The number of the current (or last) run; 1 for unscheduled benchmarks."),
        "latency": _obj("Latency of the last successful run per stage.", {
            st: latency_stats(f"The {st} stage.") for st in contract.STAGES}),
        "throughputFps": _n("Frames per second of the last successful run."),
        "lastRunTime": _time("When the last successful run finished."),
        "lastScheduleTime": _time("When the last scheduled run was started."),
        "nextScheduleTime": _time("When the next scheduled run is due."),
        "history": _arr("The last historyLimit runs, newest first.", _obj("A run.", {
            "run": _i("Run number."), "phase": _s("Succeeded or Failed."),
            "job": _s("The run's Job."),
            "startTime": _time("Start."), "completionTime": _time("End."),
            "p50Ms": _n("Pipeline median latency, ms."), "p99Ms": _n("Pipeline p99 latency, ms."),
            "throughputFps": _n("Frames per second."), "message": _s("The run's message."),
        }), maxItems=100, **{"x-kubernetes-list-type": "atomic"}),
    })


def _col(name: str, type_: str, path: str, desc: str, priority: int = 0) -> dict:
    c = {"name": name, "type": type_, "jsonPath": path, "description": desc}
    if priority:
        c["priority"] = priority
    return c


AGE = _col("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

SPECS = {
    "FinetuneJob": (finetunejob_spec, finetunejob_status, [
        _col("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed."),
        _col("Progress", "string", ".status.progress.text", "Training progress and ETA."),
        _col("mAP", "number", ".status.metrics.finetuned.mAP", "Fine-tuned COCO bbox mAP@[.50:.95]."),
        _col("mAP50", "number", ".status.metrics.finetuned.mAP50", "Fine-tuned COCO bbox mAP@.50."),
        _col("Base-mAP", "number", ".status.metrics.base.mAP", "Base model mAP.", priority=1),
        AGE,
    ]),
    "ModelConversion": (modelconversion_spec, modelconversion_status, [
        _col("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed."),
        _col("Stage", "string", ".status.stage", "export, build-engine, verify, Done."),
        _col("Backend", "string", ".spec.backend", "tensorrt or onnxruntime."),
        _col("Precision", "string", ".spec.precision", "fp32, fp16 or int8."),
        _col("AP-drop", "number", ".status.metrics.mapDrop", "mAP(PyTorch) - mAP(converted)."),
        _col("mAP", "number", ".status.metrics.converted.mAP", "Converted model mAP.", priority=1),
        AGE,
    ]),
    "EdgeBenchmark": (edgebenchmark_spec, edgebenchmark_status, [
        _col("Phase", "string", ".status.phase", "Waiting, Pending, Running, Succeeded or Failed."),
        _col("Device", "string", ".status.device", "Where it ran."),
        _col("P50(ms)", "number", ".status.latency.pipeline.p50Ms", "Pipeline median latency."),
        _col("P99(ms)", "number", ".status.latency.pipeline.p99Ms", "Pipeline 99th percentile latency."),
        _col("FPS", "number", ".status.throughputFps", "Throughput."),
        _col("Model", "string", ".spec.modelConversion", "The ModelConversion.", priority=1),
        AGE,
    ]),
}

KIND_DESCRIPTIONS = {
    "FinetuneJob": "Fine-tunes an mmdet detector (e.g. RTMDet-tiny) on a dataset in one GPU Job and "
                   "records COCO mAP of the base and fine-tuned model.",
    "ModelConversion": "Converts a fine-tuned checkpoint to ONNX (export, on a GPU node) and an engine "
                       "(build, on the target device), and optionally verifies the converted model's mAP.",
    "EdgeBenchmark": "Measures a converted model's latency (per stage, percentiles) and throughput "
                     "on an edge device, once or on a cron schedule.",
}


def openapi_schema(kind: str) -> dict:
    spec_fn, status_fn, _ = SPECS[kind]
    return {
        "type": "object",
        "description": KIND_DESCRIPTIONS[kind],
        "properties": {
            "apiVersion": _s("APIVersion defines the versioned schema of this representation of an object."),
            "kind": _s("Kind is a string value representing the REST resource this object represents."),
            "metadata": {"type": "object"},  # the API server allows nothing else here
            "spec": spec_fn(),
            "status": status_fn(),
        },
        "required": ["spec"],
        "x-kubernetes-validations": [NAME_RULE],
    }


def crd(kind: str) -> dict:
    plural = contract.PLURALS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}",
                     "labels": {"app.kubernetes.io/name": "edgetune", "app.kubernetes.io/part-of": "edgetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": SHORT_NAMES[kind], "categories": CATEGORIES},
            "versions": [{
                "name": VERSION, "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": SPECS[kind][2],
                "schema": {"openAPIV3Schema": openapi_schema(kind)},
            }],
        },
    }


def all_crds() -> list[dict]:
    return [crd(k) for k in KINDS]


# --- defaults ---------------------------------------------------------------------------------


def _default_into(schema: dict, value: Any) -> Any:
    """Structural defaulting as the API server does it: absent properties with a default get it,
    then defaulting recurses into objects (including defaulted ones) and array items."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = _default_into(sub, value[key])
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key in list(value):
                if key not in props:
                    value[key] = _default_into(addl, value[key])
    elif isinstance(value, list) and schema.get("type") == "array":
        return [_default_into(schema["items"], v) for v in value]
    return value


@functools.lru_cache(maxsize=None)
def _spec_schema_cached(kind: str) -> dict:
    return SPECS[kind][0]()


def spec_schema(kind: str) -> dict:
    """The spec's OpenAPI schema (built once; callers must not modify it)."""
    return _spec_schema_cached(kind)


def apply_defaults(kind: str, spec: dict | None) -> dict:
    """The spec with the CRD's defaults filled in (a deep copy)."""
    return _default_into(spec_schema(kind), copy.deepcopy(spec or {}))


def defaults(kind: str) -> dict:
    """The defaults of an empty spec (for documentation and tests)."""
    return apply_defaults(kind, {})
