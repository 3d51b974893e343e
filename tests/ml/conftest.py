"""Shared fixtures of the ML tests (CPU, real OpenMMLab code, small generated data).

Session fixtures (built once per pytest run, in a temporary folder):

- generated_via_dataset -> Path: a synthetic balloon-like VIA set (edgetune_jobs.generate),
  balloon-zip layout: <dir>/train/ and <dir>/val/, each with images + via_region_data.json
  (12 images of at most 160 px: 9 train, 3 val).
- prepared_dataset -> Path: that set in the prepared layout of docs/contract.md
  (annotations/train.json, annotations/val.json, images/) — what --val-dataset takes.
- trained_model -> TrainedModel: `python -m edgetune_jobs.finetune` run once on it
  (RTMDet-tiny, random init, 2 epochs, batch 2, 128 px): .out (the step's folder),
  .checkpoint (best.pth), .config (config.py), .data (the prepared dataset it trained on),
  .result (the result document), .log (stdout + stderr), .image_size (128).

- ort_export -> (export folder, result): trained_model exported for onnxruntime at its
  training size, with the PyTorch reference AP on its data (test_export_support.export_model).
- ort_build -> (build folder, result): build_engine (onnxruntime, fp32) on ort_export.

run_finetune_step(out, *args) -> (exit code, result, log) runs the step in a subprocess;
tiny_train_args: the training options trained_model used.

Function fixture:

- serve_directory(path) -> base URL: a local http.server (127.0.0.1, random port) serving
  path, stopped after the test. Nothing in the tests downloads from the internet.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_IMAGE_SIZE = 128


def pytest_collection_modifyitems(items):
    # every test in tests/ml is an ML test (also when a file forgets the marker)
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.ml)


def _need_ml_stack():
    for mod in ("torch", "mmengine", "mmdet", "mmcv"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (run `make install`)")


@pytest.fixture(scope="session")
def generated_via_dataset(tmp_path_factory) -> Path:
    pytest.importorskip("cv2")
    from edgetune_jobs import generate

    root = tmp_path_factory.mktemp("generated") / "balloon"
    generate.generate(root, images=12, seed=0, size=160, val_fraction=0.25)
    return root


@pytest.fixture(scope="session")
def prepared_dataset(generated_via_dataset, tmp_path_factory) -> Path:
    from edgetune_jobs import data

    out = tmp_path_factory.mktemp("prepared") / "data"
    data.prepare(generated_via_dataset, out, fmt="via", source="generate")
    return out


@dataclass
class TrainedModel:
    out: Path
    checkpoint: Path
    config: Path
    data: Path
    result: dict
    log: str
    image_size: int


def run_finetune(out: Path, *args: str, timeout: float = 600, env: dict | None = None
                 ) -> tuple[int, dict | None, str]:
    """Runs the finetune step as the operator would; returns (exit code, result, log)."""
    result_path = out.parent / f"{out.name}.result.json"
    e = dict(os.environ, EDGETUNE_RESULT_PATH=str(result_path), EDGETUNE_PROGRESS_INTERVAL="0",
             PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, "-m", "edgetune_jobs.finetune", "--out", str(out), *args],
                          cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)
    result = json.loads(result_path.read_text()) if result_path.exists() else None
    return proc.returncode, result, proc.stdout


TINY_TRAIN_ARGS = ("--epochs", "2", "--batch-size", "2", "--image-size", str(TINY_IMAGE_SIZE),
                   "--lr", "0.004", "--seed", "0", "--workers", "0", "--device", "cpu")


@pytest.fixture(scope="session")
def trained_model(generated_via_dataset, tmp_path_factory) -> TrainedModel:
    _need_ml_stack()
    out = tmp_path_factory.mktemp("finetune") / "finetune"
    code, result, log = run_finetune(
        out, "--dataset-source", "path", "--dataset-path", str(generated_via_dataset),
        "--dataset-format", "via", "--config", "rtmdet_tiny_8xb32-300e_coco", *TINY_TRAIN_ARGS)
    if code != 0:
        pytest.fail(f"the finetune step failed (exit {code}):\n{log[-4000:]}")
    return TrainedModel(out=out, checkpoint=out / "best.pth", config=out / "config.py", data=out / "data",
                        result=result, log=log, image_size=TINY_IMAGE_SIZE)


@pytest.fixture(scope="session")
def run_finetune_step():
    """- ort_export -> (export folder, result): trained_model exported for onnxruntime at its
  training size, with the PyTorch reference AP on its data (test_export_support.export_model).
- ort_build -> (build folder, result): build_engine (onnxruntime, fp32) on ort_export.

run_finetune_step(out, *args) -> (exit code, result document or None, log)."""
    return run_finetune


@pytest.fixture(scope="session")
def tiny_train_args() -> tuple[str, ...]:
    """The training options of trained_model (2 epochs, batch 2, 128 px, CPU, no workers)."""
    return TINY_TRAIN_ARGS


@pytest.fixture(scope="session")
def ort_export(trained_model, tmp_path_factory):
    from test_export_support import export_model, exports_root

    return export_model(exports_root(tmp_path_factory), "onnxruntime", str(trained_model.checkpoint),
                        str(trained_model.config), trained_model.image_size, False, str(trained_model.data))


@pytest.fixture(scope="session")
def ort_build(ort_export, tmp_path_factory):
    from test_export_support import build_onnxruntime, exports_root

    return build_onnxruntime(exports_root(tmp_path_factory), str(ort_export[0]))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def serve_directory():
    servers = []

    def serve(path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(path))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append((server, thread))
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
