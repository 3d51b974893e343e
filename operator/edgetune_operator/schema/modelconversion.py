"""The ModelConversion's spec and status schema and printer columns."""

from __future__ import annotations

from edgetune_contract import args

from .common import (AGE, DEVICE_LABELS, DNS_SUBDOMAIN, EDGE_DEFAULT, GPU_DEFAULT, IMMUTABLE, LABEL_KEY, STEP_PHASES,
                     array, artifact_path, artifacts_spec, boolean, coco, column, common_status, env_list, integer,
                     number, obj, placement, rule, run_settings, string, string_map, timestamp)

SHORT_NAMES = ['mc', 'conversion']
DESCRIPTION = ("Converts a fine-tuned checkpoint to ONNX (export, on a GPU node) and an engine "
               "(build, on the target device), and optionally verifies the converted model's mAP.")


def spec() -> dict:
    source = obj("What to convert: exactly one of finetuneJob or model.", {
        "finetuneJob": string("A FinetuneJob in this namespace; its checkpoint, config and validation set are used.",
                          pattern=DNS_SUBDOMAIN, maxLength=253),
        "model": obj("A checkpoint and its config.", {
            "checkpoint": artifact_path("The .pth checkpoint."),
            "config": artifact_path("The mmdet config file of the checkpoint."),
            "valDataset": artifact_path("A prepared dataset folder (annotations/val.json + images/) for verify."),
            "name": string("The model's name in metrics and columns (default: the config file's name).",
                       maxLength=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        }, required=["checkpoint", "config"]),
    }, rules=[rule("[has(self.finetuneJob), has(self.model)].filter(x, x).size() == 1",
                   "exactly one of source.finetuneJob and source.model must be set")])
    return obj("The desired conversion. Immutable once created.", {
        "source": source,
        "backend": string("Inference backend of the converted model: tensorrt (Jetson / NVIDIA GPU), "
                          "onnxruntime or openvino (CPU edge devices).", enum=list(args.BACKENDS),
                          default="tensorrt"),
        "precision": string("Numeric precision of the model. tensorrt: fp32, fp16, int8; onnxruntime: fp32, "
                            "int8 (static QDQ); openvino: fp32, fp16, bf16 (the CPU plugin's inference "
                            "precision: bf16 runs on AVX512-BF16/AMX CPUs, elsewhere the plugin falls back and "
                            "status.provenance says what ran), int8 (NNCF). int8 needs calibration.images.",
                            enum=list(args.PRECISIONS), default="fp16"),
        "imageSize": integer("Square input size in pixels (static shape 1x3xNxN); a multiple of 32.",
                        minimum=64, maximum=2048, default=640,
                        **{"x-kubernetes-validations": [rule("self % 32 == 0", "imageSize must be a multiple of 32")]}),
        "dynamic": boolean("Export with dynamic batch/height/width axes. On onnxruntime each frame is then padded "
                      "only to the next multiple of 32 (a 16:9 frame at 640 runs at 640x384); a TensorRT "
                      "engine runs at its profile's optimal shape (imageSize square).", default=False),
        "postprocess": obj("Detection post-processing baked into the exported model.", {
            "scoreThreshold": number("Minimum score of a kept detection.", minimum=0, maximum=1, default=0.05),
            "iouThreshold": number("NMS IoU threshold.", minimum=0, maximum=1, default=0.6),
            "maxDetections": integer("Detections kept per image.", minimum=1, maximum=1000, default=100),
        }, default={}),
        "calibration": obj("INT8 calibration data (required for precision int8).", {
            "images": artifact_path("A folder of calibration images (or a prepared dataset: its images/)."),
            "method": string("How activation ranges are chosen: minmax, entropy or percentile (onnxruntime's "
                             "calibration methods; openvino maps them to NNCF's MINMAX, HISTOGRAM and "
                             "MEAN_QUANTILE range estimators; tensorrt always uses its entropy calibrator).",
                             enum=list(args.CALIBRATION_METHODS), default="minmax"),
            "maxImages": integer("At most this many calibration images are used.", minimum=1, maximum=100000,
                                 default=200),
        }, required=["images"]),
        "export": obj("The export step (PyTorch -> ONNX).", {
            "placement": placement("export Job", GPU_DEFAULT),
            "device": string("auto, cuda or cpu for the export.", enum=["auto", "cuda", "cpu"], default="auto"),
        }, default={}),
        "build": obj("The engine build step (ONNX -> engine, on the target device).", {
            "workspaceMiB": integer("TensorRT builder workspace in MiB.", minimum=64, maximum=65536, default=1024),
        }, default={}),
        "target": placement("engine build and verify Jobs (the target device)", EDGE_DEFAULT),
        "fleet": obj(
            "Build one engine per device group among the Ready nodes the target selects (a TensorRT engine "
            "runs only on the GPU model and TensorRT version it was built with): status.engines gets one "
            "entry per group, and a fleet EdgeBenchmark runs each node's own group's engine. verify measures "
            "the first group's engine, on a node of that group. The groups are fixed when the builds start.", {
                "deviceLabels": array(
                    "Node label keys whose values make a device group (a device model).",
                    string("A node label key.", maxLength=317, pattern=LABEL_KEY),
                    minItems=1, maxItems=8, default=list(DEVICE_LABELS), **{"x-kubernetes-list-type": "set"}),
                "maxGroups": integer("At most this many device groups get an engine (by name).", minimum=1,
                                     maximum=64, default=16),
            }),
        "verify": obj("Measure the converted model's COCO AP on the validation set.", {
            "enabled": boolean("Run the verify step.", default=True),
            "maxMapDrop": number("Fail when mAP(PyTorch) - mAP(converted) exceeds this.", minimum=0, maximum=1,
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
        rule("!self.dynamic || self.backend != 'tensorrt' || self.precision != 'int8'",
             "dynamic shapes with tensorrt int8 are not supported", field_path=".dynamic"),
    ] + [
        rule(f"self.backend != '{backend}' || self.precision in {list(precisions)!r}".replace('"', "'"),
             f"backend {backend} builds precision {', '.join(precisions)}", field_path=".precision")
        for backend, precisions in args.BACKEND_PRECISIONS.items()
    ])


def status() -> dict:
    return common_status({
        "stage": string("The current stage: Waiting, export, build-engine, verify, Done or Failed."),
        "model": string("The model's name (for metrics and columns)."),
        "source": obj("The resolved source.", {
            "checkpoint": string("Checkpoint URI."), "config": string("Config URI."),
            "valDataset": string("Validation dataset URI."), "finetuneJob": string("The source FinetuneJob."),
        }),
        "engines": array("spec.fleet: one engine per device group, in group order.", obj("A device group.", {
            "group": string("The group's name (in its Job's name and folder)."),
            "labels": string_map("The device labels' values of the group.", "The label value."),
            "nodes": array("The Ready nodes of the group when the builds started.", string("A node.")),
            "node": string("The node that built the engine."),
            "engine": string("The engine (TensorRT) URI."), "model": string("The model URI (other backends)."),
            "engineBytes": number("Size of the engine."), "buildSeconds": number("Build time."),
            "phase": string("Pending, Running, Succeeded or Failed.", enum=list(STEP_PHASES)),
            "reason": string("Reason of the phase."), "message": string("Details."),
            "job": string("The group's build Job."), "jobUID": string("Its UID once seen."),
            "recreated": integer("How often the Job was deleted while it ran and recreated.", minimum=0),
            "completionTime": timestamp("When the build finished."),
            "verified": boolean("The verify step measured this group's engine."),
        }, required=["group"]), maxItems=64, **{"x-kubernetes-list-type": "atomic"}),
        "metrics": obj("Accuracy and size of the converted model.", {
            "converted": coco("COCO metrics of the converted model."),
            "reference": coco("COCO metrics of the PyTorch model at the same input size."),
            "mapDrop": number("reference mAP - converted mAP."),
            "onnxBytes": number("Size of the ONNX file."),
            "engineBytes": number("Size of the engine file."),
            "buildSeconds": number("Engine build time."),
        }),
    })


COLUMNS = [
    column("Phase", "string", ".status.phase", "Pending, Running, Succeeded or Failed."),
    column("Stage", "string", ".status.stage", "export, build-engine, verify, Done."),
    column("Backend", "string", ".spec.backend", "tensorrt, onnxruntime or openvino."),
    column("Precision", "string", ".spec.precision", "fp32, fp16, bf16 or int8."),
    column("AP-drop", "number", ".status.metrics.mapDrop", "mAP(PyTorch) - mAP(converted)."),
    column("mAP", "number", ".status.metrics.converted.mAP", "Converted model mAP.", priority=1),
    AGE,
]
