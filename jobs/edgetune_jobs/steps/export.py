"""export: an mmdet checkpoint -> end2end.onnx + pipeline.json (the meta every later step reads).

    python -m edgetune_jobs.steps.export --out DIR --checkpoint PATH --config PATH
        --backend tensorrt|onnxruntime|openvino --image-size N [--dynamic]
        [--score-threshold F] [--iou-threshold F] [--max-detections N]
        [--val-dataset DIR] [--device cpu|cuda]
        [--input-dtype uint8|float32] [--no-fold-preprocess] [--opset N]   (edgetune_contract.args.ExportArgs)

Both targets go through mmdeploy 1.3.1 (its model rewrites, RewriterContext and export) with
the TorchScript ONNX exporter (torch >= 2.9 defaults to the dynamo exporter, which mmdeploy's
rewrites do not support):

- onnxruntime and openvino (the same graph): mmdeploy's onnxruntime deploy config, i.e.
  mmdeploy.apis.torch2onnx. The graph ends in ONNX NonMaxSuppression: outputs dets [B, K, 5]
  (x1 y1 x2 y2 score) and labels [B, K].
- tensorrt: the same rewritten detector, but its head stops before NMS (RTMDetHead.
  predict_by_feat(with_nms=False): decoded boxes [B, N, 4] + sigmoid scores [B, N, C]); then
  graph.append_efficient_nms adds TensorRT's built-in EfficientNMS_TRT plugin (no mmdeploy
  TRTBatchedNMS plugin library needed on the device). Outputs num_detections,
  detection_boxes, detection_scores, detection_classes.

Post-processing values are resolved once -- the model's test_cfg, overridden by the CLI -- and
written both into the model's test_cfg (which mmdeploy's RTMDet rewrite reads first) and into
the deploy config's post_processing, so the graph, the PyTorch reference and the meta agree.

Then graph.fold_preprocess moves Normalize and HWC->CHW (and BGR->RGB where the model wants
it) into the graph: the input becomes `input` [B, H, W, 3] NHWC, BGR as cv2 decodes it,
uint8 by default for onnxruntime and float32 (values 0..255) by default for TensorRT (UINT8
network inputs need TensorRT >= 8.6's cast support; JetPack 5 ships 8.5).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Iterator

from edgetune_contract.args import ONNX_GRAPH_BACKENDS, ExportArgs
from edgetune_contract.meta import LAYOUT_EFFICIENT_NMS, LAYOUT_MMDEPLOY, META_FILE, META_FORMAT, ONNX_FILE
from edgetune_contract.results import ExportResult

from ..cli import StepError, entry_point
from ..inference.device import versions
from .inputs import check_checkpoint

CONFIG_FILE = "model_config.py"


# --- the TorchScript exporter for mmdeploy -------------------------------------------------

@contextlib.contextmanager
def torchscript_onnx_exporter() -> Iterator[None]:
    """Make torch.onnx.export use the TorchScript exporter (dynamo=False) while mmdeploy runs.

    mmdeploy 1.3.1 calls torch.onnx.export(...) without `dynamo`; torch >= 2.9 defaults to
    dynamo=True, which bypasses mmdeploy's symbolic rewrites. Scoped: restored on exit."""
    import torch

    original = torch.onnx.export
    if "dynamo" not in inspect.signature(original).parameters:
        yield  # torch < 2.5: only the TorchScript exporter exists
        return

    def export(*args, **kwargs):
        kwargs.setdefault("dynamo", False)
        return original(*args, **kwargs)

    torch.onnx.export = export
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            yield
    finally:
        torch.onnx.export = original


# --- configs --------------------------------------------------------------------------------

def resolve_postprocess(model_cfg, score: float | None, iou: float | None,
                        max_det: int | None) -> dict[str, Any]:
    """The post-processing the graph bakes in: model test_cfg, overridden by the CLI."""
    tc = model_cfg.model.get("test_cfg") or {}
    nms = tc.get("nms") or {}
    out = {
        "score_threshold": float(score if score is not None else tc.get("score_thr", 0.05)),
        "iou_threshold": float(iou if iou is not None else nms.get("iou_threshold", 0.5)),
        "max_detections": int(max_det if max_det is not None else tc.get("max_per_img", 100)),
        "nms_pre": int(tc.get("nms_pre", 1000)),
    }
    if not 0.0 <= out["score_threshold"] < 1.0:
        raise StepError("InvalidInput", f"--score-threshold must be in [0, 1), got {out['score_threshold']}")
    if not 0.0 < out["iou_threshold"] <= 1.0:
        raise StepError("InvalidInput", f"--iou-threshold must be in (0, 1], got {out['iou_threshold']}")
    if out["max_detections"] < 1:
        raise StepError("InvalidInput", f"--max-detections must be >= 1, got {out['max_detections']}")
    return out


def num_priors(model, image_size: int) -> int:
    strides = getattr(getattr(model.bbox_head, "prior_generator", None), "strides", [(8, 8), (16, 16), (32, 32)])
    n = 0
    for s in strides:
        sh, sw = (s, s) if isinstance(s, (int, float)) else s
        n += math.ceil(image_size / sh) * math.ceil(image_size / sw)
    return n


def make_deploy_cfg(image_size: int, dynamic: bool, post: dict[str, Any], *,
                    output_names: list[str], opset: int, pre_top_k: int):
    """mmdeploy's detection_onnxruntime_{static,dynamic}.py, written out (the mmdeploy wheel
    does not ship its configs/), with our resolved post-processing."""
    from mmengine.config import Config

    onnx_config = dict(
        type="onnx", export_params=True, keep_initializers_as_inputs=False,
        opset_version=opset, save_file=ONNX_FILE, input_names=["input"],
        output_names=output_names, input_shape=None if dynamic else [image_size, image_size],
        optimize=False)
    if dynamic:
        axes = {"input": {0: "batch", 2: "height", 3: "width"}}
        for name in output_names:
            axes[name] = {0: "batch", 1: "num_dets" if name in ("dets", "labels") else "num_boxes"}
        onnx_config["dynamic_axes"] = axes
    return Config(dict(
        onnx_config=onnx_config,
        codebase_config=dict(
            type="mmdet", task="ObjectDetection", model_type="end2end",
            post_processing=dict(
                score_threshold=post["score_threshold"], confidence_threshold=0.005,
                iou_threshold=post["iou_threshold"],
                max_output_boxes_per_class=post["max_detections"],
                pre_top_k=pre_top_k, keep_top_k=post["max_detections"], background_label_id=-1)),
        backend_config=dict(type="onnxruntime")))


# --- the two exports ------------------------------------------------------------------------

def export_mmdeploy_ort(out_dir: str, deploy_cfg, model_cfg, checkpoint: str, image_size: int) -> str:
    """mmdeploy.apis.torch2onnx with the onnxruntime deploy config: NMS in the graph."""
    import numpy as np
    from mmdeploy.apis import torch2onnx

    from ..inference import mmdeploy_rewrites  # noqa: F401 - edgetune's RTMDetHead rewrite (clip + mask)
    from ..inference.torch_model import register_mm_compat

    register_mm_compat()
    img = np.full((image_size, image_size, 3), 114, np.uint8)
    with torchscript_onnx_exporter():
        torch2onnx(img, out_dir, ONNX_FILE, deploy_cfg, model_cfg, checkpoint, device="cpu")
    return os.path.join(out_dir, ONNX_FILE)


def export_raw_head(out_dir: str, deploy_cfg, model, image_size: int, dynamic: bool, opset: int) -> str:
    """The mmdeploy-rewritten detector up to decoded boxes + scores (no NMS)."""
    import torch
    from mmdeploy.apis.onnx import export
    from mmdeploy.codebase import import_codebase
    from mmdeploy.utils import Codebase, get_dynamic_axes

    import_codebase(Codebase.MMDET)  # registers mmdeploy's mmdet rewrites (RTMDetHead, ...)
    from ..inference import mmdeploy_rewrites  # noqa: F401 - edgetune's RTMDetHead rewrite (clip + mask)

    class RawHead(torch.nn.Module):
        def __init__(self, detector) -> None:
            super().__init__()
            self.detector = detector

        def forward(self, x):
            feats = self.detector.extract_feat(x)
            outs = self.detector.bbox_head(feats)
            # like mmdeploy's detector forward: the input size, traced as a tensor when dynamic
            hw = torch._shape_as_tensor(x)[2:] if dynamic else (int(x.shape[2]), int(x.shape[3]))
            metas = [{"img_shape": hw, "pad_shape": hw, "batch_input_shape": hw}]
            return self.detector.bbox_head.predict_by_feat(*outs, batch_img_metas=metas, with_nms=False)

    wrapper = RawHead(model.cpu().eval())
    dummy = torch.zeros(1, 3, image_size, image_size)
    names = ["boxes", "scores"]
    axes = get_dynamic_axes(deploy_cfg, ["input"] + names) if dynamic else None
    with torchscript_onnx_exporter():
        export(wrapper, dummy, os.path.join(out_dir, os.path.splitext(ONNX_FILE)[0]),
               backend="onnxruntime", context_info={"deploy_cfg": deploy_cfg},
               input_names=["input"], output_names=names, opset_version=opset,
               dynamic_axes=axes, keep_initializers_as_inputs=False, optimize=False)
    return os.path.join(out_dir, ONNX_FILE)


# --- main -----------------------------------------------------------------------------------

def _check_inputs(args: ExportArgs) -> None:
    if not os.path.isfile(args.checkpoint):
        raise StepError("CheckpointNotFound", f"checkpoint {args.checkpoint} does not exist")
    if not os.path.isfile(args.config):
        raise StepError("InvalidInput", f"model config {args.config} does not exist")
    check_checkpoint(args.checkpoint)
    if args.image_size < 32 or args.image_size % 32:
        raise StepError("InvalidInput", f"--image-size must be a multiple of 32 (the detector's "
                                        f"largest stride), got {args.image_size}")
    if args.val_dataset and not os.path.isfile(os.path.join(args.val_dataset, "annotations", "val.json")):
        raise StepError("DatasetNotFound", f"{args.val_dataset} has no annotations/val.json")
    if args.opset < 11:
        raise StepError("InvalidInput", f"--opset must be >= 11, got {args.opset}")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise StepError("InvalidInput", "--device cuda, but torch sees no CUDA device")


def input_spec(image_size: int, dynamic: bool, dtype: str, fold: bool) -> dict[str, Any]:
    s = image_size
    shape = [1, s, s, 3] if fold else [1, 3, s, s]
    spec = {"name": "input", "shape": shape, "dtype": dtype if fold else "float32",
            "layout": "NHWC" if fold else "NCHW", "channel_order": "BGR" if fold else "model",
            "value_range": "0..255" if fold else "normalised", "dynamic": dynamic}
    if dynamic:
        lo = max(32, (s // 2) // 32 * 32)
        hwc = (lambda b, x: [b, x, x, 3]) if fold else (lambda b, x: [b, 3, x, x])
        spec["shape"] = ["batch", "height", "width", 3] if fold else ["batch", 3, "height", "width"]
        spec.update(min_shape=hwc(1, lo), opt_shape=hwc(1, s), max_shape=hwc(4, 2 * s))
    return spec


def run(args: ExportArgs) -> ExportResult:
    t0 = time.monotonic()
    _check_inputs(args)
    os.makedirs(args.out, exist_ok=True)
    # onnxruntime and openvino run the same graph: mmdeploy's ONNX with its NMS, uint8 input
    graph_ort = args.backend in ONNX_GRAPH_BACKENDS
    input_dtype = args.input_dtype or ("uint8" if graph_ort else "float32")

    import onnx
    from mmengine.config import Config

    from ..inference import graph
    from ..inference.preprocess import letterbox_from_model_cfg, normalization_from_model_cfg
    from ..inference.torch_model import apply_test_cfg, build_torch_model

    try:
        model_cfg = Config.fromfile(args.config)
    except Exception as exc:  # noqa: BLE001 - a config is code; report why it does not load
        raise StepError("InvalidInput", f"cannot load model config {args.config}: {exc}") from None
    post = resolve_postprocess(model_cfg, args.score_threshold, args.iou_threshold, args.max_detections)
    test_cfg = {"score_thr": post["score_threshold"], "iou_threshold": post["iou_threshold"],
                "max_per_img": post["max_detections"], "nms_pre": post["nms_pre"]}
    apply_test_cfg(model_cfg, test_cfg)
    try:
        letterbox = letterbox_from_model_cfg(model_cfg, args.image_size)
        norm = normalization_from_model_cfg(model_cfg)
    except (ValueError, KeyError) as exc:
        raise StepError("InvalidInput", f"model config: {exc}") from None
    try:
        model, _ = build_torch_model(model_cfg, args.checkpoint, "cpu")
    except Exception as exc:  # noqa: BLE001
        raise StepError("CheckpointNotFound" if isinstance(exc, FileNotFoundError) else "InvalidInput",
                        f"cannot build the model from {args.config} + {args.checkpoint}: {exc}") from None
    classes = list((getattr(model, "dataset_meta", None) or {}).get("classes") or
                   (model_cfg.get("metainfo") or {}).get("classes") or [])
    n_priors = num_priors(model, args.image_size)
    pre_top_k = -1 if (not args.dynamic and post["nms_pre"] >= n_priors) else post["nms_pre"]

    t_export = time.monotonic()
    try:
        if graph_ort:
            deploy_cfg = make_deploy_cfg(args.image_size, args.dynamic, post, output_names=["dets", "labels"],
                                         opset=args.opset, pre_top_k=pre_top_k)
            path = export_mmdeploy_ort(args.out, deploy_cfg, model_cfg, args.checkpoint, args.image_size)
        else:
            deploy_cfg = make_deploy_cfg(args.image_size, args.dynamic, post, output_names=["boxes", "scores"],
                                         opset=args.opset, pre_top_k=pre_top_k)
            path = export_raw_head(args.out, deploy_cfg, model, args.image_size, args.dynamic, args.opset)
        onnx_model = onnx.load(path)
        if args.fold:
            onnx_model = graph.fold_preprocess(onnx_model, mean=norm["mean"], std=norm["std"],
                                               bgr_to_rgb=norm["bgr_to_rgb"], input_dtype=input_dtype)
        if args.backend == "tensorrt":
            onnx_model = graph.append_efficient_nms(
                onnx_model, boxes="boxes", scores="scores",
                score_threshold=post["score_threshold"], iou_threshold=post["iou_threshold"],
                max_output_boxes=post["max_detections"])
        onnx.checker.check_model(onnx_model)
        onnx.shape_inference.infer_shapes(onnx_model, check_type=True)
        onnx.save(onnx_model, path)
    except StepError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StepError("ExportFailed", f"{type(exc).__name__}: {exc}") from None
    export_seconds = time.monotonic() - t_export
    shutil.copyfile(args.config, os.path.join(args.out, CONFIG_FILE))

    folded: list[str] = []
    if args.fold:
        folded = (["cast_to_float"] if input_dtype == "uint8" else []) + ["hwc_to_chw"] + \
            (["bgr_to_rgb"] if norm["bgr_to_rgb"] else []) + ["normalize"]
    if args.backend == "tensorrt":
        outputs = {"layout": LAYOUT_EFFICIENT_NMS, "names": list(graph.NMS_OUTPUTS),
                   "nms": "EfficientNMS_TRT (TensorRT built-in plugin, per class)",
                   "box_format": "xyxy", "coordinates": "network input pixels"}
    else:
        outputs = {"layout": LAYOUT_MMDEPLOY, "names": ["dets", "labels"],
                   "nms": "ONNX NonMaxSuppression (mmdeploy multiclass_nms, per class)",
                   "box_format": "xyxy+score", "coordinates": "network input pixels"}
    vers = versions("torch", "mmcv", "mmdet", "mmengine", "mmdeploy", "onnx", "onnxruntime", "numpy")
    meta: dict[str, Any] = {
        "format": META_FORMAT,
        "backend": args.backend,
        "model": {"onnx": ONNX_FILE, "opset": args.opset, "config": CONFIG_FILE,
                  "checkpoint": os.path.abspath(args.checkpoint),
                  "exporter": "mmdeploy + torch.onnx TorchScript exporter"},
        "input": input_spec(args.image_size, args.dynamic, input_dtype, args.fold),
        "folded": folded,
        "normalize": norm,
        "letterbox": letterbox.to_meta(),
        "postprocess": {**post, "pre_top_k": pre_top_k, "class_agnostic": False,
                        "num_priors": n_priors, "source": "model test_cfg, overridden by the CLI"},
        "outputs": outputs,
        "classes": classes,
        "reference": None,
        "versions": vers,
    }

    reference = None
    if args.val_dataset:
        reference = reference_ap(args, meta, model_cfg, model if args.device == "cpu" else None)
        meta["reference"] = reference
    meta_path = os.path.join(args.out, META_FILE)
    with open(meta_path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)

    onnx_bytes = os.path.getsize(path)
    return ExportResult(
        message=f"exported {args.backend} ONNX at {args.image_size}x{args.image_size}"
                + (" (dynamic)" if args.dynamic else "") + f", {onnx_bytes / 1e6:.1f} MB",
        onnx_bytes=onnx_bytes, reference=reference["metrics"] if reference else None,
        artifacts={"onnx": ONNX_FILE, "meta": META_FILE},
        provenance={"backend": args.backend, "input_shape": meta["input"]["shape"],
                    "dynamic": args.dynamic, "opset": args.opset, "input_dtype": meta["input"]["dtype"],
                    "folded": folded, "score_threshold": post["score_threshold"],
                    "iou_threshold": post["iou_threshold"], "max_detections": post["max_detections"],
                    "export_seconds": round(export_seconds, 2),
                    "seconds": round(time.monotonic() - t0, 2),
                    "versions": {k: v for k, v in vers.items() if k != "numpy"}})


def reference_ap(args: ExportArgs, meta: dict[str, Any], model_cfg, model=None) -> dict[str, Any]:
    """COCO AP of the PyTorch model (mmdet's predict, its NMS) at the export's input size,
    with the same letterbox the converted model gets: verify's reference."""
    from ..data.coco_eval import ValSet, evaluate_detector
    from ..inference.detectors import TorchDetector
    from ..inference.torch_model import build_torch_model

    t0 = time.monotonic()
    try:
        val = ValSet.open(args.val_dataset)
    except (OSError, ValueError) as exc:
        raise StepError("DatasetNotFound", str(exc)) from None
    if model is None:
        model, _ = build_torch_model(model_cfg, args.checkpoint, args.device)
    # the letterbox the converted model will get: rectangular for a dynamic onnxruntime model
    det = TorchDetector(args.checkpoint, meta, device=args.device, model=model,
                        rect=args.backend in ONNX_GRAPH_BACKENDS)
    try:
        metrics, n = evaluate_detector(det, val, meta["classes"])
    except ValueError as exc:
        raise StepError("InvalidInput", f"reference AP: {exc}") from None
    return {"metrics": metrics, "images": n, "dataset": os.path.abspath(args.val_dataset),
            "backend": "torch", "device": args.device, "input_size": args.image_size,
            "input_padding": det.input_padding(), "seconds": round(time.monotonic() - t0, 2)}


main = entry_point(ExportArgs, run)

if __name__ == "__main__":
    sys.exit(main())
