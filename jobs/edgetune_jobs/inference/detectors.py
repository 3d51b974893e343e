"""Run an exported detector: the same three stages for every backend.

    preprocess   letterbox into a preallocated buffer (preprocess.Preprocessor)
    inference    onnxruntime session / TensorRT engine / PyTorch model
    postprocess  take the valid rows, boxes back to original-image pixels (rescale + clip)

A detector is made from the export's meta (pipeline.json, edgetune_contract.meta), so verify
and benchmark on the device need neither torch nor mmdet (the torch backend excepted, which
is the reference).
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from edgetune_contract.meta import LAYOUT_EFFICIENT_NMS, LAYOUT_MMDEPLOY

from .preprocess import MAX_STRIDE, ImageInfo, Letterbox, Preprocessor, rescale_boxes

BACKENDS = ("tensorrt", "onnxruntime", "openvino", "torch")


class Detector:
    """preprocess -> infer -> postprocess; __call__ does all three (BGR image in)."""

    backend = ""
    precision = "fp32"

    def __init__(self, meta: Mapping[str, Any]) -> None:
        self.meta = meta
        self.letterbox = Letterbox.from_meta(meta["letterbox"])
        self.classes = list(meta.get("classes") or [])
        self.gpu_ms: float | None = None  # GPU time of the last infer(), where measured
        self.threads: int | None = None

    def rect_stride(self) -> int | None:
        """A model exported with dynamic height/width is fed "rectangular" inputs: padded to
        the next multiple of the stride, not to the full square (a 16:9 frame at 640 runs
        at 640x384). None: the export's fixed shape."""
        return MAX_STRIDE if self.meta["input"].get("dynamic") else None

    def preprocess(self, img: np.ndarray) -> tuple[np.ndarray, ImageInfo]:
        return self.pre(img)

    def infer(self, x: np.ndarray) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def postprocess(self, raw: Any, info: ImageInfo) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError  # pragma: no cover

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, info = self.preprocess(img)
        return self.postprocess(self.infer(x), info)

    def input_shape(self) -> list[int]:
        return [1, self.letterbox.height, self.letterbox.width, 3]

    def input_padding(self) -> str:
        """How the letterbox pads, for the provenance of a figure."""
        stride = self.rect_stride()
        return f"to a multiple of {stride} (rectangular)" if stride else "to the full input shape"

    def provenance(self) -> dict[str, Any]:
        return {}


def _finish(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, info: ImageInfo):
    """Boxes to original-image pixels; drop those left empty by the clip (they lay in the
    letterbox padding)."""
    boxes = rescale_boxes(boxes, info)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if not keep.all():
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    return boxes, np.asarray(scores, np.float32), np.asarray(labels, np.int64)


def _postprocess_mmdeploy(dets: np.ndarray, labels: np.ndarray, info: ImageInfo):
    dets, labels = dets[0], labels[0]
    keep = dets[:, 4] > 0  # the graph pads with one all-zero row
    dets, labels = dets[keep], labels[keep]
    return _finish(dets[:, :4], dets[:, 4], labels, info)


def _postprocess_efficient_nms(num, boxes, scores, classes, info: ImageInfo):
    n = int(np.asarray(num).reshape(-1)[0])
    return _finish(boxes[0, :n], scores[0, :n], classes[0, :n], info)


class OrtDetector(Detector):
    backend = "onnxruntime"

    def __init__(self, model_path: str, meta: Mapping[str, Any], threads: int | None = None,
                 providers: Sequence[str] | None = None) -> None:
        super().__init__(meta)
        import onnxruntime as ort

        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"model file {model_path} does not exist")
        layout = meta["outputs"]["layout"]
        if layout != LAYOUT_MMDEPLOY:
            raise ValueError(f"this model was exported for TensorRT (outputs {layout}, an "
                             "EfficientNMS_TRT node onnxruntime cannot run); export with "
                             "--backend onnxruntime to run it on onnxruntime")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(model_path, so, providers=list(providers or ["CPUExecutionProvider"]))
        self.threads = int(threads) if threads else None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        dtype = "uint8" if inp.type == "tensor(uint8)" else "float32"
        self.pre = Preprocessor(self.letterbox, dtype, pad_to_stride=self.rect_stride())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: x})

    def postprocess(self, raw, info):
        return _postprocess_mmdeploy(raw[0], raw[1], info)

    def provenance(self) -> dict[str, Any]:
        return {"providers": self.session.get_providers(),
                "intra_op_threads": self.threads or "default (physical cores)"}


class TrtDetector(Detector):
    backend = "tensorrt"

    def __init__(self, engine_path: str, meta: Mapping[str, Any]) -> None:
        super().__init__(meta)
        from .trt_compat import TrtRunner

        if not os.path.isfile(engine_path):
            raise FileNotFoundError(f"engine file {engine_path} does not exist")
        if meta["outputs"]["layout"] != LAYOUT_EFFICIENT_NMS:
            raise ValueError("this model was exported for onnxruntime (mmdeploy's ONNX NMS); "
                             "export with --backend tensorrt to build a TensorRT engine")
        shape = meta["input"].get("opt_shape") or meta["input"]["shape"]
        self.runner = TrtRunner(engine_path, shape)
        dtype = str(self.runner.input_buffer().dtype)
        # letterbox straight into the engine's pinned input buffer
        self.pre = Preprocessor(self.letterbox, dtype, out=self.runner.input_buffer())
        names = meta["outputs"]["names"]
        self._names = names

    def rect_stride(self) -> int | None:
        return None  # a dynamic engine runs at its profile's opt shape, in the pinned buffer

    def infer(self, x: np.ndarray):
        outs, self.gpu_ms = self.runner.run(x)
        return [outs[n] for n in self._names]

    def postprocess(self, raw, info):
        return _postprocess_efficient_nms(*raw, info)

    def provenance(self) -> dict[str, Any]:
        return {"execution_api": self.runner.api, "cuda_binding": self.runner.cuda.name}


# --- PyTorch (the reference) ---------------------------------------------------------------

class TorchDetector(Detector):
    """mmdet's own predict() (its NMS, its box decoding) on our letterboxed input."""

    backend = "torch"

    def __init__(self, checkpoint: str, meta: Mapping[str, Any], meta_dir: str = ".",
                 config: str | None = None, device: str = "cpu", threads: int | None = None,
                 model: Any = None, rect: bool = True) -> None:
        """rect=False: pad to the full shape even for a dynamic export (as TensorRT runs it)."""
        super().__init__(meta)
        import torch

        self.rect = rect
        self.torch = torch
        if threads:
            torch.set_num_threads(int(threads))
        self.threads = int(threads) if threads else torch.get_num_threads()
        self.device = device
        if model is None:
            config = config or os.path.join(meta_dir, meta["model"]["config"])
            pp = meta["postprocess"]
            from .torch_model import build_torch_model

            model, _ = build_torch_model(config, checkpoint, device, test_cfg={
                "score_thr": pp["score_threshold"], "iou_threshold": pp["iou_threshold"],
                "max_per_img": pp["max_detections"], "nms_pre": pp.get("nms_pre", 30000)})
        self.model = model
        norm = meta["normalize"]
        self.mean = torch.tensor(norm["mean"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm["std"], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.bgr_to_rgb = bool(norm["bgr_to_rgb"])
        self.pre = Preprocessor(self.letterbox, "uint8", pad_to_stride=self.rect_stride())
        self._info: ImageInfo | None = None
        # GPU time of model.predict by CUDA events (on a GPU only)
        self._events = ((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                        if device.startswith("cuda") else None)

    def rect_stride(self) -> int | None:
        return super().rect_stride() if self.rect else None

    def preprocess(self, img):
        x, info = self.pre(img)
        self._info = info
        return x, info

    def infer(self, x: np.ndarray):
        from mmdet.structures import DetDataSample

        torch = self.torch
        info = self._info
        with torch.no_grad():
            t = torch.from_numpy(x).to(self.device).permute(0, 3, 1, 2).float()
            if self.bgr_to_rgb:
                t = t[:, [2, 1, 0]]
            t = (t - self.mean) / self.std
            h, w = x.shape[1:3]
            sample = DetDataSample(metainfo={
                "img_shape": (info.new_h, info.new_w) if info else (h, w),
                "ori_shape": (info.orig_h, info.orig_w) if info else (h, w),
                "pad_shape": (h, w), "batch_input_shape": (h, w),
                "scale_factor": (info.scale_x, info.scale_y) if info else (1.0, 1.0)})
            if self._events:
                self._events[0].record()
            res = self.model.predict(t, [sample], rescale=False)[0].pred_instances
            if self._events:
                self._events[1].record()
            out = (res.bboxes.float().cpu().numpy(), res.scores.float().cpu().numpy(),
                   res.labels.cpu().numpy())
        if self._events:
            torch.cuda.synchronize()
            self.gpu_ms = float(self._events[0].elapsed_time(self._events[1]))
        return out

    def postprocess(self, raw, info):
        boxes, scores, labels = raw
        return _finish(boxes, scores, labels, info)

    def provenance(self) -> dict[str, Any]:
        return {"torch_threads": self.threads, "torch_device": self.device}


def make_detector(backend: str, model_path: str, meta: Mapping[str, Any], meta_dir: str,
                  threads: int | None = None, device: str = "cpu", precision: str = "fp32") -> Detector:
    """precision: what the build made (build.json); OpenVINO compiles with it as its hint."""
    if backend == "onnxruntime":
        return OrtDetector(model_path, meta, threads=threads)
    if backend == "openvino":
        from .openvino_runtime import OpenVinoDetector

        return OpenVinoDetector(model_path, meta, threads=threads, precision=precision)
    if backend == "tensorrt":
        return TrtDetector(model_path, meta)
    if backend == "torch":
        return TorchDetector(model_path, meta, meta_dir, threads=threads, device=device)
    raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")


def now() -> float:
    return time.perf_counter()
