"""What the steps check and read before any work: the model file and the export meta (bad
input is StepError InvalidInput, never a traceback), that a checkpoint or ONNX file is whole
(ArtifactCorrupted: truncated or not what its name says), a model the runtime can load
(InvalidModel), the build step's sidecar, image folders."""

from __future__ import annotations

import glob
import json
import os
import zipfile
from typing import Any, Dict, List, Optional, Tuple

from edgetune_contract.args import ONNX_GRAPH_BACKENDS
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


def check_checkpoint(path: str) -> None:
    """A PyTorch checkpoint is a zip archive (torch >= 1.6; every member's CRC is checked, so
    a truncated or damaged file is caught here, not as an unpickling error mid-export) or a
    legacy pickle."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] == b"\x80":  # legacy (pre-zip) torch.save: a pickle, checked when loaded
        return
    if head != b"PK\x03\x04":
        raise StepError("ArtifactCorrupted", f"checkpoint {path} is not a PyTorch checkpoint (neither a zip "
                                             f"archive nor a pickle; {os.path.getsize(path)} bytes)")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise StepError("ArtifactCorrupted", f"checkpoint {path} is damaged or truncated "
                                             f"({os.path.getsize(path)} bytes): {exc}") from None
    if bad is not None:
        raise StepError("ArtifactCorrupted", f"checkpoint {path} is damaged: member {bad} fails its CRC check")


def check_onnx(path: str) -> None:
    """An ONNX file parses and passes onnx's checker. Where the onnx package is absent (the
    Jetson image), TensorRT's parser is the check."""
    try:
        import onnx
    except ImportError:
        return
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise StepError("ArtifactCorrupted", f"ONNX file {path} does not parse (truncated or not ONNX; "
                                             f"{os.path.getsize(path)} bytes): {type(exc).__name__}: {exc}") from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - onnx.checker.ValidationError
        raise StepError("InvalidModel", f"ONNX file {path} fails onnx's checker: {exc}") from None


def open_detector(backend: str, model: str, meta: Dict[str, Any], meta_dir: str, **kwargs: Any) -> Any:
    """The backend's detector for the model, or StepError: BackendUnavailable (the runtime is
    missing here), InvalidModel naming the file (it does not load: truncated, corrupted, or
    built for another runtime version or GPU)."""
    from ..inference.detectors import make_detector

    try:
        return make_detector(backend, model, meta, meta_dir, **kwargs)
    except ImportError as exc:
        raise StepError("BackendUnavailable", f"{backend}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - each runtime raises its own kind
        if type(exc).__name__ == "TensorRTUnavailable":
            raise StepError("BackendUnavailable", str(exc)) from None
        raise StepError("InvalidModel", f"{backend} cannot load {model} ({os.path.getsize(model)} bytes): "
                                        f"{type(exc).__name__}: {exc}") from None


def check_backend(meta: Dict[str, Any], backend: str, what: str = "the model") -> None:
    """The export's graph suits the backend: the same backend, or onnxruntime <-> openvino
    (both run the mmdeploy ONNX graph with its NMS)."""
    exported = meta["backend"]
    if exported == backend or {exported, backend} <= set(ONNX_GRAPH_BACKENDS):
        return
    raise StepError("InvalidInput", f"{what} was exported for {exported}, not {backend}; "
                                    f"export again with --backend {backend}")


def read_build_info(model_path: str) -> Dict[str, Any]:
    """The build step's sidecar (build.json next to the model), if there is one."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), BUILD_INFO)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError):
        return {}


def readable_images(folder: str, limit: Optional[int] = None) -> List[str]:
    """The images of a calibration folder that decode; InvalidInput naming the folder when it
    does not exist or none does."""
    if not os.path.isdir(folder):
        raise StepError("InvalidInput", f"calibration folder {folder} does not exist")
    import cv2

    files = list_images(folder)
    readable: List[str] = []
    for f in files:
        if limit and len(readable) >= limit:
            break
        if cv2.imread(f) is not None:
            readable.append(f)
    if not readable:
        raise StepError("InvalidInput", f"calibration folder {folder} has no readable image "
                                        f"({len(files)} file(s) named {', '.join(IMAGE_EXTS)}, none decodes)")
    return readable


def list_images(folder: str, limit: Optional[int] = None) -> List[str]:
    """The images in a folder (or its images/ subfolder, a prepared dataset), sorted."""
    if os.path.isdir(os.path.join(folder, "images")):
        folder = os.path.join(folder, "images")
    files = sorted(f for f in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if f.lower().endswith(IMAGE_EXTS))
    return files[:limit] if limit else files
