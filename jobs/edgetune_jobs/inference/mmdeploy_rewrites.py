"""edgetune's mmdeploy rewrite of RTMDetHead.predict_by_feat (backend "onnxruntime").

mmdeploy 1.3.1's own (default-backend) rewrite decodes the boxes and goes straight to NMS.
mmdet's predict does two more things first, and without them the exported graph and the
PyTorch model disagree for weakly trained models:

1. it clips the decoded boxes to the image (DistancePointBBoxCoder.decode(max_shape=...));
2. it drops boxes with width or height <= min_bbox_size (0 for RTMDet) before NMS
   (BaseDenseHead._bbox_post_process). Such "inverted" boxes are not harmless: ONNX
   NonMaxSuppression and EfficientNMS_TRT both read a box as any pair of diagonal corners,
   so an inverted box takes part in NMS and can suppress a real one.

This rewrite does both in the graph: boxes are clamped to the network input (H, W) and the
scores of degenerate boxes are set to 0 (below any score threshold; a `Where`, which
TensorRT 8.5+ and onnxruntime run). It is registered for backend "onnxruntime" -- the
backend both edgetune targets export with -- and so takes precedence over mmdeploy's
default-backend rewrite; other backends are untouched. The rest is mmdeploy's rewrite.

Importing this module registers the rewrite (import it after mmdeploy's mmdet codebase).
"""

from __future__ import annotations

from typing import List, Optional

import torch
from mmdeploy.codebase.mmdet import get_post_processing_params
from mmdeploy.core import FUNCTION_REWRITER
from mmdeploy.mmcv.ops import multiclass_nms
from torch import Tensor


def clip_and_mask(bboxes: Tensor, scores: Tensor, img_shape, min_size: float = 0.0):
    """Clamp xyxy boxes [B, N, 4] to img_shape (H, W) (ints or a tensor) and zero the
    scores [B, N, C] of boxes with width or height <= min_size."""
    if isinstance(img_shape, torch.Tensor):
        h = img_shape[0].to(bboxes.dtype)
        w = img_shape[1].to(bboxes.dtype)
        zero = bboxes.new_zeros(())
        x1 = torch.minimum(torch.maximum(bboxes[..., 0], zero), w)
        y1 = torch.minimum(torch.maximum(bboxes[..., 1], zero), h)
        x2 = torch.minimum(torch.maximum(bboxes[..., 2], zero), w)
        y2 = torch.minimum(torch.maximum(bboxes[..., 3], zero), h)
    else:
        h, w = float(img_shape[0]), float(img_shape[1])
        x1 = bboxes[..., 0].clamp(0, w)
        y1 = bboxes[..., 1].clamp(0, h)
        x2 = bboxes[..., 2].clamp(0, w)
        y2 = bboxes[..., 3].clamp(0, h)
    bboxes = torch.stack([x1, y1, x2, y2], -1)
    valid = ((x2 - x1) > min_size) & ((y2 - y1) > min_size)
    scores = torch.where(valid.unsqueeze(-1), scores, scores.new_zeros(()))
    return bboxes, scores


@FUNCTION_REWRITER.register_rewriter(
    func_name="mmdet.models.dense_heads.rtmdet_head.RTMDetHead.predict_by_feat",
    backend="onnxruntime")
def rtmdet_head__predict_by_feat__edgetune(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                                           batch_img_metas: Optional[List[dict]] = None, cfg=None,
                                           rescale: bool = False, with_nms: bool = True):
    ctx = FUNCTION_REWRITER.get_context()
    assert len(cls_scores) == len(bbox_preds)
    device = cls_scores[0].device
    cfg = self.test_cfg if cfg is None else cfg
    batch_size = bbox_preds[0].shape[0]
    featmap_sizes = [cls_score.shape[2:] for cls_score in cls_scores]
    mlvl_priors = self.prior_generator.grid_priors(featmap_sizes, device=device)
    flatten_cls_scores = torch.cat([
        c.permute(0, 2, 3, 1).reshape(batch_size, -1, self.cls_out_channels) for c in cls_scores
    ], dim=1).sigmoid()
    flatten_bbox_preds = torch.cat([b.permute(0, 2, 3, 1).reshape(batch_size, -1, 4) for b in bbox_preds], dim=1)
    priors = torch.cat(mlvl_priors)
    tl_x = priors[..., 0] - flatten_bbox_preds[..., 0]
    tl_y = priors[..., 1] - flatten_bbox_preds[..., 1]
    br_x = priors[..., 0] + flatten_bbox_preds[..., 2]
    br_y = priors[..., 1] + flatten_bbox_preds[..., 3]
    bboxes = torch.stack([tl_x, tl_y, br_x, br_y], -1)
    img_shape = batch_img_metas[0]["img_shape"] if batch_img_metas else featmap_sizes[0]
    bboxes, scores = clip_and_mask(bboxes, flatten_cls_scores, img_shape,
                                   float(max(cfg.get("min_bbox_size", 0), 0)))
    if not with_nms:
        return bboxes, scores

    post_params = get_post_processing_params(ctx.cfg)
    return multiclass_nms(
        bboxes, scores, post_params.max_output_boxes_per_class,
        nms_type=cfg.nms.get("type"),
        iou_threshold=cfg.nms.get("iou_threshold", post_params.iou_threshold),
        score_threshold=cfg.get("score_thr", post_params.score_threshold),
        pre_top_k=post_params.pre_top_k,
        keep_top_k=cfg.get("max_per_img", post_params.keep_top_k))
