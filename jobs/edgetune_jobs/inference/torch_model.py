"""The PyTorch model from an mmdet config and checkpoint: the reference that every converted
model is measured against (export and the torch benchmark backend). Needs torch and mmdet."""

from __future__ import annotations

import os
from typing import Any, Mapping


def register_mm_compat() -> None:
    """torch >= 2.6 loads checkpoints with weights_only=True: allow mmengine's objects."""
    from .mmcompat import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()


def build_torch_model(config: Any, checkpoint: str, device: str = "cpu",
                      test_cfg: Mapping[str, Any] | None = None):
    """An mmdet detector from a config (path or Config) and checkpoint, eval mode.

    test_cfg: overrides of model.test_cfg (score_thr, nms.iou_threshold, max_per_img, nms_pre).
    """
    from mmengine.config import Config
    from mmdet.apis import init_detector
    from mmdet.utils import register_all_modules

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    register_all_modules()
    register_mm_compat()
    cfg = Config.fromfile(config) if isinstance(config, str) else config.copy()
    if test_cfg:
        apply_test_cfg(cfg, test_cfg)
    model = init_detector(cfg, checkpoint, device=device)
    model.eval()
    return model, cfg


def apply_test_cfg(cfg, values: Mapping[str, Any]) -> None:
    """Write resolved post-processing values into cfg.model.test_cfg (in place)."""
    tc = cfg.model.get("test_cfg") or {}
    if "score_thr" in values:
        tc["score_thr"] = float(values["score_thr"])
    if "iou_threshold" in values:
        nms = dict(tc.get("nms") or {"type": "nms"})
        nms["iou_threshold"] = float(values["iou_threshold"])
        tc["nms"] = nms
    if "max_per_img" in values:
        tc["max_per_img"] = int(values["max_per_img"])
    if "nms_pre" in values:
        tc["nms_pre"] = int(values["nms_pre"])
    cfg.model["test_cfg"] = tc
    if hasattr(cfg.model, "bbox_head") and isinstance(cfg.model.get("bbox_head"), dict):
        if "test_cfg" in cfg.model.bbox_head:
            cfg.model.bbox_head["test_cfg"] = tc
