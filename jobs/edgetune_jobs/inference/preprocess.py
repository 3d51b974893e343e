"""The CPU side of preprocessing: one letterbox resize into a preallocated buffer.

Everything else the mmdeploy SDK does per image on the CPU (Normalize, HWC->CHW,
DefaultFormatBundle: 3.2 of the reference's 5.1 ms preprocess on the Orin) is folded into
the exported graph (graph.fold_preprocess). What remains here reproduces mmdet's test
pipeline for RTMDet-style configs exactly:

    Resize(scale=(S, S), keep_ratio=True)   mmcv.imrescale, cv2 INTER_LINEAR,
                                            new size = int(w * f + 0.5), int(h * f + 0.5),
                                            f = min(S_long / long_side, S_short / short_side)
    Pad(size=(S, S), pad_val=114)           bottom/right padding

and records the scale factors that postprocessing divides the boxes by. Only numpy and
cv2 are needed (no torch, no mmcv): this runs on the Jetson image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import cv2
import numpy as np

# The largest feature stride of the detectors exported here (RTMDet: 8, 16, 32): input
# sides must be multiples of it.
MAX_STRIDE = 32

_INTERP = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


@dataclass(frozen=True)
class Letterbox:
    """Resize (+ pad) settings, as recorded in the export meta ("letterbox")."""

    height: int
    width: int
    keep_ratio: bool = True
    pad_value: int = 114
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"letterbox size must be positive, got {self.height}x{self.width}")
        if self.interpolation not in _INTERP:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    def to_meta(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = [self.height, self.width]
        d["pad_position"] = "bottom_right"
        return d

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "Letterbox":
        return cls(height=int(meta["height"]), width=int(meta["width"]),
                   keep_ratio=bool(meta.get("keep_ratio", True)),
                   pad_value=int(meta.get("pad_value", 114)),
                   interpolation=str(meta.get("interpolation", "bilinear")))

    def plan(self, h: int, w: int) -> tuple[int, int, float, float]:
        """(new_h, new_w, scale_x, scale_y) for an h x w image, as mmdet's Resize computes."""
        if h <= 0 or w <= 0:
            raise ValueError(f"empty image {h}x{w}")
        if self.keep_ratio:
            long_edge, short_edge = max(self.height, self.width), min(self.height, self.width)
            f = min(long_edge / max(h, w), short_edge / min(h, w))
            new_w, new_h = int(w * float(f) + 0.5), int(h * float(f) + 0.5)
            # (square targets always fit; for non-square ones mmdet's own rule can overshoot)
            new_w, new_h = min(new_w, self.width), min(new_h, self.height)
        else:
            new_w, new_h = self.width, self.height
        return new_h, new_w, new_w / w, new_h / h


@dataclass
class ImageInfo:
    """What postprocessing needs to map boxes back to the original image."""

    orig_h: int
    orig_w: int
    new_h: int
    new_w: int
    scale_x: float
    scale_y: float


class Preprocessor:
    """Letterbox into a preallocated [1, H, W, 3] buffer (uint8, or float32 0..255).

    The buffer is reused across calls: only the resized region is written, and the
    padding is refilled only when the resized region shrinks. `__call__` returns the
    buffer itself (do not keep references across calls).

    pad_to_stride=N (a model with dynamic height/width): the image is resized exactly as
    before, but padded only up to the next multiple of N instead of to the full H x W
    ("rectangular" inference: a 16:9 frame at 640 becomes 640x384, not 640x640). One
    buffer is kept per padded shape.
    """

    def __init__(self, letterbox: Letterbox, dtype: str = "uint8", out: np.ndarray | None = None,
                 pad_to_stride: int | None = None) -> None:
        """out: an existing [1, H, W, 3] buffer of `dtype` to write into (e.g. TensorRT's
        pinned input buffer), instead of allocating one."""
        if dtype not in ("uint8", "float32"):
            raise ValueError(f"input dtype must be uint8 or float32, got {dtype!r}")
        if pad_to_stride is not None:
            if pad_to_stride <= 0 or letterbox.height % pad_to_stride or letterbox.width % pad_to_stride:
                raise ValueError(f"pad_to_stride {pad_to_stride} must divide the letterbox size "
                                 f"{letterbox.height}x{letterbox.width}")
            if out is not None:
                raise ValueError("pad_to_stride needs buffers of its own (out= is for a fixed shape)")
        self.lb = letterbox
        self.dtype = dtype
        self.stride = pad_to_stride
        self._interp = _INTERP[letterbox.interpolation]
        shape = (1, letterbox.height, letterbox.width, 3)
        if out is not None and (tuple(out.shape) != shape or out.dtype != np.dtype(dtype)):
            raise ValueError(f"output buffer is {out.shape} {out.dtype}, need {shape} {dtype}")
        # padded (h, w) -> [uint8 buffer, float32 buffer or None, (h, w) of the last image in it]
        self._bufs: dict[tuple[int, int], list[Any]] = {}
        self._buffers_for(letterbox.height, letterbox.width, out)

    def _buffers_for(self, h: int, w: int, out: np.ndarray | None = None) -> list[Any]:
        entry = self._bufs.get((h, w))
        if entry is None:
            shape = (1, h, w, 3)
            if self.dtype == "uint8":
                u8 = out if out is not None else np.empty(shape, np.uint8)
                f32 = None
            else:
                u8 = np.empty(shape, np.uint8)
                f32 = out if out is not None else np.empty(shape, np.float32)
                f32[...] = float(self.lb.pad_value)
            u8[...] = self.lb.pad_value
            entry = self._bufs[(h, w)] = [u8, f32, (h, w)]
        return entry

    @property
    def buffer(self) -> np.ndarray:
        """The full-size (H x W) buffer."""
        u8, f32, _ = self._bufs[(self.lb.height, self.lb.width)]
        return f32 if f32 is not None else u8

    def padded_shape(self, new_h: int, new_w: int) -> tuple[int, int]:
        """The network input's (h, w) for a resized new_h x new_w image."""
        if self.stride is None:
            return self.lb.height, self.lb.width
        s = self.stride
        return (min(self.lb.height, -(-new_h // s) * s), min(self.lb.width, -(-new_w // s) * s))

    def __call__(self, img: np.ndarray) -> tuple[np.ndarray, ImageInfo]:
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 image, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        nh, nw, sx, sy = self.lb.plan(h, w)
        entry = self._buffers_for(*self.padded_shape(nh, nw))
        u8_full, f32_full, (lh, lw) = entry
        u8 = u8_full[0]
        if nh < lh or nw < lw:  # the old image's pixels would show in the new padding
            for buf in (u8, None if f32_full is None else f32_full[0]):
                if buf is not None:
                    buf[nh:, :] = self.lb.pad_value
                    buf[:, nw:] = self.lb.pad_value
        region = u8[:nh, :nw]
        if (nh, nw) == (h, w):
            region[...] = img
        else:
            out = cv2.resize(img, (nw, nh), dst=region, interpolation=self._interp)
            if not np.shares_memory(out, u8):  # cv2 reallocated instead of writing in place
                region[...] = out
        entry[2] = (nh, nw)
        info = ImageInfo(h, w, nh, nw, sx, sy)
        if f32_full is not None:  # only the resized region changes
            np.copyto(f32_full[0, :nh, :nw], region, casting="unsafe")
            return f32_full, info
        return u8_full, info


def rescale_boxes(boxes: np.ndarray, info: ImageInfo) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) in network-input pixels -> original image pixels, clipped."""
    out = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    out[:, 0::2] /= info.scale_x
    out[:, 1::2] /= info.scale_y
    np.clip(out[:, 0::2], 0, info.orig_w, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0, info.orig_h, out=out[:, 1::2])
    return out


def letterbox_from_model_cfg(model_cfg: Any, image_size: int) -> Letterbox:
    """The Resize/Pad of an mmdet config's test pipeline, at the export's image size."""
    pipeline = _test_pipeline(model_cfg)
    keep_ratio, interp, pad_value = True, "bilinear", 114
    for t in pipeline:
        kind = str(t.get("type", ""))
        if kind.endswith("Resize"):
            keep_ratio = bool(t.get("keep_ratio", False))
            interp = str(t.get("interpolation", "bilinear"))
        elif kind.endswith("Pad"):
            pv = t.get("pad_val", {})
            pv = pv.get("img", pv) if isinstance(pv, Mapping) else pv
            if isinstance(pv, (list, tuple)):
                if len(set(pv)) != 1:
                    raise ValueError(f"per-channel pad values are not supported: {pv}")
                pv = pv[0]
            pad_value = int(pv) if pv is not None else 0
    return Letterbox(height=image_size, width=image_size, keep_ratio=keep_ratio,
                     pad_value=pad_value, interpolation=interp)


def _test_pipeline(cfg: Any) -> list:
    for path in (("test_dataloader", "dataset", "pipeline"), ("test_pipeline",),
                 ("val_dataloader", "dataset", "pipeline")):
        node = cfg
        try:
            for key in path:
                node = node[key]
        except (KeyError, TypeError, AttributeError):
            continue
        if node:
            return list(node)
    raise ValueError("model config has no test pipeline (test_dataloader.dataset.pipeline)")


def normalization_from_model_cfg(model_cfg: Any) -> dict[str, Any]:
    """mean/std/bgr_to_rgb of the model's data_preprocessor (mmdet's channel order)."""
    dp = model_cfg["model"].get("data_preprocessor", {}) or {}
    mean = list(dp.get("mean") or [0.0, 0.0, 0.0])
    std = list(dp.get("std") or [1.0, 1.0, 1.0])
    bgr_to_rgb = bool(dp.get("bgr_to_rgb", False) or dp.get("rgb_to_bgr", False))
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std], "bgr_to_rgb": bgr_to_rgb}


def load_image(path: str) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return img
