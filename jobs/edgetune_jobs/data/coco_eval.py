"""COCO bbox AP with pycocotools, the same figures mmdet's CocoMetric reports.

Used by export (the PyTorch reference AP at the export's input size) and verify (the
converted model's AP), through one loop (`evaluate_detector`) so both numbers come from
the same images, the same preprocessing and the same evaluation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence, Tuple

import numpy as np

from edgetune_contract.results import COCO_KEYS


@dataclass
class ValSet:
    """A prepared dataset's validation split (contract: annotations/val.json + images/)."""

    root: str
    ann_file: str
    img_dir: str
    images: list[dict]       # COCO image records (id, file_name, width, height)
    cat_id_by_name: dict[str, int]

    @classmethod
    def open(cls, root: str) -> "ValSet":
        ann = os.path.join(root, "annotations", "val.json")
        img_dir = os.path.join(root, "images")
        if not os.path.isfile(ann):
            raise FileNotFoundError(f"no {ann} (a prepared dataset has annotations/val.json and images/)")
        with open(ann, encoding="utf-8") as fh:
            data = json.load(fh)
        images = sorted(data.get("images", []), key=lambda r: r["id"])
        if not images:
            raise ValueError(f"{ann} lists no images")
        cats = {c["name"]: int(c["id"]) for c in data.get("categories", [])}
        return cls(root=root, ann_file=ann, img_dir=img_dir, images=images, cat_id_by_name=cats)

    def image_path(self, rec: dict) -> str:
        return os.path.join(self.img_dir, rec["file_name"])


def label_to_category(classes: Sequence[str], cat_id_by_name: dict[str, int]) -> list[int]:
    """Model label i (classes[i]) -> COCO category id, by name (mmdet's CocoDataset rule)."""
    missing = [c for c in classes if c not in cat_id_by_name]
    if missing:
        raise ValueError(f"classes {missing} are not categories of the val set "
                         f"({sorted(cat_id_by_name)})")
    return [cat_id_by_name[c] for c in classes]


def to_coco_results(image_id: int, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    cat_ids: Sequence[int]) -> list[dict[str, Any]]:
    """xyxy boxes -> COCO result records (bbox = x, y, w, h)."""
    out = []
    for (x1, y1, x2, y2), s, lab in zip(np.asarray(boxes, float), np.asarray(scores, float),
                                        np.asarray(labels, int)):
        if lab < 0 or lab >= len(cat_ids):
            continue
        out.append({"image_id": int(image_id), "category_id": int(cat_ids[lab]),
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "score": float(s)})
    return out


def coco_metrics(ann_file: str, results: list[dict[str, Any]],
                 image_ids: Iterable[int] | None = None) -> dict[str, float]:
    """bbox mAP, mAP50, mAP75, mAP_s/m/l (edgetune_contract.results.COCO_KEYS) of `results` on `ann_file`."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(ann_file)
        if not results:
            return {k: 0.0 for k in COCO_KEYS}
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(set(int(i) for i in image_ids))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # pycocotools reports -1 where an area range has no ground truth: that is "no figure"
    # (None), not an AP of 0, and not a value outside the contract's [0, 1].
    return {k: (round(float(v), 4) if v >= 0 else None) for k, v in zip(COCO_KEYS, ev.stats[:6])}


Detect = Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, np.ndarray]]


def evaluate_detector(detect: Detect, val: ValSet, classes: Sequence[str], *,
                      max_images: int | None = None,
                      load: Callable[[str], np.ndarray] | None = None) -> tuple[dict[str, float], int]:
    """Run `detect(bgr_image) -> (boxes xyxy in image pixels, scores, labels)` over the val
    set and return (COCO metrics, number of images)."""
    from ..inference.preprocess import load_image

    load = load or load_image
    cat_ids = label_to_category(classes, val.cat_id_by_name)
    results: list[dict] = []
    recs = val.images[:max_images] if max_images else val.images
    for rec in recs:
        boxes, scores, labels = detect(load(val.image_path(rec)))
        results.extend(to_coco_results(rec["id"], boxes, scores, labels, cat_ids))
    return coco_metrics(val.ann_file, results, [r["id"] for r in recs]), len(recs)
