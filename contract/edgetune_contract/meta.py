"""The export's pipeline meta (pipeline.json): the one description of a converted model that
every later step reads — backend, input (name, shape, dtype, padding), the letterbox and
normalisation folded into the graph, post-processing, output layout, classes, and the PyTorch
reference AP measured at export. Written by the export step, read by build-engine, verify
and benchmark (which therefore need neither torch nor mmdet).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Tuple

META_FORMAT = "edgetune.io/pipeline/v1"
META_FILE = "pipeline.json"
ONNX_FILE = "end2end.onnx"
LAYOUT_MMDEPLOY = "mmdeploy_dets_labels"     # dets [B, K, 5] (x1 y1 x2 y2 score), labels [B, K]
LAYOUT_EFFICIENT_NMS = "efficient_nms"      # num_detections, detection_boxes/scores/classes
REQUIRED = ("backend", "model", "input", "letterbox", "postprocess", "outputs", "classes")


class MetaError(ValueError):
    """A file that is not an export meta."""


def check_meta(meta: Any, where: str = "meta") -> Dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise MetaError(f"{where} is not an edgetune export meta (format {META_FORMAT!r})")
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise MetaError(f"{where} lacks {', '.join(missing)}")
    if meta["outputs"].get("layout") not in (LAYOUT_MMDEPLOY, LAYOUT_EFFICIENT_NMS):
        raise MetaError(f"{where}: unknown output layout {meta['outputs'].get('layout')!r}")
    return meta


def load_meta(path: str) -> Tuple[Dict[str, Any], str]:
    """(meta, folder of the meta file). Raises FileNotFoundError / MetaError."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"meta file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetaError(f"meta file {path} is not JSON: {exc}") from None
    return check_meta(meta, path), os.path.dirname(os.path.abspath(path))
