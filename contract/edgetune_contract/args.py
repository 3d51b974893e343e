"""The typed arguments of every step (and of the dataset tool). The operator builds an
instance from a resource and renders it with to_argv(); the step parses its command line
with from_argv() of the same class. docs/contract.md shows the resulting command lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Type

from .cliargs import StepArgs, arg
from .names import STEPS

BACKENDS = ("tensorrt", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# The precisions each backend builds: TensorRT fp32/fp16/int8 (calibrated); onnxruntime fp32 and
# int8 (static QDQ); OpenVINO fp32, fp16 and bf16 (its CPU plugin's inference precision hint:
# bf16 runs on AVX512-BF16/AMX, elsewhere the plugin falls back and the provenance says what
# ran) and int8 (NNCF post-training quantization).
BACKEND_PRECISIONS = {"tensorrt": ("fp32", "fp16", "int8"), "onnxruntime": ("fp32", "int8"),
                      "openvino": ("fp32", "fp16", "bf16", "int8")}
# Backends whose model is the mmdeploy ONNX graph (NMS inside): one export serves them all.
ONNX_GRAPH_BACKENDS = ("onnxruntime", "openvino")
# int8 calibration: how activation ranges are chosen from the calibration images
# (onnxruntime's CalibrationMethod; NNCF's range estimators for openvino; TensorRT uses its
# entropy calibrator whatever is asked).
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEVICES = ("cpu", "cuda")
DATASET_SOURCES = ("generate", "url", "path")
DATASET_FORMATS = ("via", "coco")
DEFAULT_CONFIG = "rtmdet_tiny_8xb32-300e_coco"
DEFAULT_OPSET = 11


@dataclass
class DatasetArgs(StepArgs):
    """Where a dataset comes from and how it is prepared (finetune, and `python -m
    edgetune_jobs.data.prepare`)."""

    dataset_source: str = arg("generate", choices=DATASET_SOURCES,
                              help="generate a synthetic set, download a URL, or read a path")
    dataset_url: Optional[str] = arg(help="zip/tar URL (http(s):// or s3://) of a VIA or COCO dataset", artifact=True)
    dataset_path: Optional[str] = arg(help="folder or archive (on the artifact volume, or an s3:// prefix)",
                                      artifact=True)
    dataset_format: str = arg("via", choices=DATASET_FORMATS, help="VIA 1.x/2.x or COCO annotations")
    val_fraction: float = arg(0.2, help="validation share when the set has no train/val split")
    split_seed: int = arg(0, help="seed of that split")
    class_name: str = arg("balloon", help="the class of every region (single-class VIA)")
    category_attribute: Optional[str] = arg(help="VIA region attribute holding the class name (multi-class)")
    generate_images: int = arg(24, help="generated set: number of images")
    generate_seed: int = arg(0, help="generated set: seed")
    generate_size: int = arg(320, help="generated set: longest image side in pixels")


@dataclass
class FinetuneArgs(DatasetArgs):
    STEP = "finetune"

    config: str = arg(DEFAULT_CONFIG, help="mmdet config name or path")
    checkpoint: Optional[str] = arg(help="path or URL (http(s)://, s3://) of a checkpoint to start from",
                                    artifact=True)
    epochs: int = arg(40)
    batch_size: int = arg(8)
    image_size: int = arg(640, help="training input size (a multiple of 32)")
    lr: float = arg(0.004, help="base learning rate")
    seed: int = arg(0)
    workers: int = arg(2, help="data loader workers")
    device: Optional[str] = arg(choices=DEVICES, help="default: cuda when available, else cpu")
    val_interval: Optional[int] = arg(help="epochs between evaluations (default epochs/10)")
    eval_base: bool = arg(True, flag="--no-eval-base", negate=True, help="skip evaluating the base checkpoint")
    # distributed training (torchrun): one Pod per node; the node rank is $JOB_COMPLETION_INDEX
    nnodes: int = arg(1, help="nodes (Pods) of a distributed run")
    nproc_per_node: int = arg(1, help="processes (GPUs) per node")
    master_addr: Optional[str] = arg(help="node 0's stable DNS name: the rendezvous of a distributed run")
    master_port: int = arg(29500, help="the rendezvous port on node 0")
    checkpoint_interval: Optional[int] = arg(help="epochs between resumable checkpoints: a retried run resumes "
                                                  "from the last complete one")


@dataclass
class ExportArgs(StepArgs):
    STEP = "export"

    checkpoint: str = arg(required=True, help="mmdet checkpoint (.pth)", artifact=True)
    config: str = arg(required=True, help="mmdet config (.py) the checkpoint was trained with", artifact=True)
    backend: str = arg(required=True, choices=BACKENDS)
    image_size: int = arg(required=True, help="network input S (S x S)")
    dynamic: bool = arg(False, help="dynamic batch/height/width axes")
    score_threshold: Optional[float] = arg(help="default: model test_cfg.score_thr")
    iou_threshold: Optional[float] = arg(help="default: model test_cfg.nms.iou_threshold")
    max_detections: Optional[int] = arg(help="default: model test_cfg.max_per_img")
    val_dataset: Optional[str] = arg(help="prepared dataset: the PyTorch reference AP goes into the meta",
                                     artifact=True)
    device: str = arg("cpu", choices=DEVICES, help="for the reference AP (export runs on CPU)")
    input_dtype: Optional[str] = arg(choices=("uint8", "float32"),
                                     help="graph input dtype (default: uint8 for onnxruntime, float32 for tensorrt)")
    fold: bool = arg(True, flag="--no-fold-preprocess", negate=True,
                     help="keep mmdeploy's normalised float NCHW input (for mmdeploy's SDK)")
    opset: int = arg(DEFAULT_OPSET)


@dataclass
class BuildEngineArgs(StepArgs):
    STEP = "build-engine"

    onnx: str = arg(required=True, help="end2end.onnx from the export step", artifact=True)
    meta: str = arg(required=True, help="pipeline.json from the export step", artifact=True)
    backend: str = arg(required=True, choices=BACKENDS)
    precision: str = arg(required=True, choices=PRECISIONS)
    calibration_images: Optional[str] = arg(help="folder of images for int8 calibration", artifact=True)
    calibration_max_images: int = arg(200)
    calibration_method: str = arg("minmax", choices=CALIBRATION_METHODS,
                                  help="int8 activation ranges: minmax, entropy or percentile")
    workspace_mib: int = arg(1024, help="TensorRT builder workspace")


@dataclass
class VerifyArgs(StepArgs):
    STEP = "verify"

    model: str = arg(required=True, help="the built model (end2end.engine / end2end.onnx)", artifact=True)
    meta: str = arg(required=True, help="pipeline.json from the export step", artifact=True)
    backend: str = arg(required=True, choices=BACKENDS)
    val_dataset: str = arg(required=True, help="prepared dataset (annotations/val.json + images/)",
                           artifact=True)
    max_map_drop: Optional[float] = arg(help="fail if reference mAP - converted mAP > F")
    threads: Optional[int] = arg()
    max_images: Optional[int] = arg(help="evaluate the first N val images only")


@dataclass
class BenchmarkArgs(StepArgs):
    STEP = "benchmark"

    model: str = arg(required=True, help="the built model, or the .pth for --backend torch", artifact=True)
    meta: str = arg(required=True, help="pipeline.json from the export step", artifact=True)
    backend: str = arg(required=True, choices=BACKENDS + ("torch",))
    warmup: int = arg(50)
    iterations: int = arg(1000)
    duration: Optional[float] = arg(help="seconds; overrides --iterations")
    images: Optional[str] = arg(help="folder of images (default: one synthetic 1280x720 image)", artifact=True)
    threads: Optional[int] = arg(help="CPU threads (onnxruntime intra-op / torch)")
    device: str = arg("cpu", choices=DEVICES, help="torch backend only")


@dataclass
class SweepArgs(StepArgs):
    """Several converted models measured side by side on one device (an EdgeBenchmark over
    several ModelConversions): each model in its own worker process (its own peak memory),
    timed in interleaved blocks; writes the table, sweep.json and the picture."""

    STEP = "sweep"

    models: str = arg(required=True, help="JSON list of the rows: {name, backend, precision, model, meta, "
                                          "mAP?, mapDrop?, accuracyOk?, modelBytes?}",
                      artifact_keys=("model", "meta"))
    warmup: int = arg(20)
    iterations: int = arg(200, help="timed iterations per model")
    block: int = arg(20, help="iterations per interleaved block")
    images: Optional[str] = arg(help="folder of images (default: one synthetic 1280x720 image)", artifact=True)
    threads: Optional[int] = arg(help="CPU threads of every runtime")
    max_map_drop: Optional[float] = arg(help="accuracy budget: the best row is the fastest within it")


STEP_ARGS: Dict[str, Type[StepArgs]] = {cls.STEP: cls for cls in (
    FinetuneArgs, ExportArgs, BuildEngineArgs, VerifyArgs, BenchmarkArgs, SweepArgs)}
assert list(STEP_ARGS) == list(STEPS), "every step has exactly one arguments class"
