"""What the steps after export check and read before any work: the model file and the
export meta (bad input is StepError InvalidInput, never a traceback), the build step's
sidecar, image folders."""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from edgetune_contract.meta import MetaError, load_meta

from ..cli import StepError

BUILD_INFO = "build.json"  # written by build-engine next to the model it built
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def load_step_inputs(model: str, meta: str, what: str = "model file") -> Tuple[Dict[str, Any], str]:
    """(meta, the meta's folder) once the model file exists and the meta loads."""
    if not os.path.isfile(model):
        raise StepError("InvalidInput", f"{what} {model} does not exist")
    try:
        return load_meta(meta)
    except (FileNotFoundError, MetaError) as exc:
        raise StepError("InvalidInput", str(exc)) from None


def read_build_info(model_path: str) -> Dict[str, Any]:
    """The build step's sidecar (build.json next to the model), if there is one."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), BUILD_INFO)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return {}


def list_images(folder: str, limit: Optional[int] = None) -> List[str]:
    """The images in a folder (or its images/ subfolder, a prepared dataset), sorted."""
    if os.path.isdir(os.path.join(folder, "images")):
        folder = os.path.join(folder, "images")
    files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if f.lower().endswith(IMAGE_EXTS))
    return files[:limit] if limit else files
