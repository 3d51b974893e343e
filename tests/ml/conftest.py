"""Fixtures of the ML tests (CPU, real OpenMMLab code, small generated data). The dataset and
trained-model fixtures live in tests/ml_fixtures.py (tests/gpu uses them too); here:

- ort_export -> (export folder, result): trained_model exported for onnxruntime at its
  training size, with the PyTorch reference AP on its data (test_export_support.export_model).
- ort_build -> (build folder, result): build_engine (onnxruntime, fp32) on ort_export.
- ort_int8 -> (build folder, result): build_engine (onnxruntime, int8 static QDQ, MinMax
  calibration on the trained model's images) on ort_export.

run_finetune_step(out, *args) -> (exit code, result, log) runs the step in a subprocess;
tiny_train_args: the training options trained_model used.

Function fixture:

- serve_directory(path) -> base URL: a local http.server (127.0.0.1, random port) serving
  path, stopped after the test. Nothing in the tests downloads from the internet.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest
from ml_fixtures import TINY_TRAIN_ARGS, run_finetune


def pytest_collection_modifyitems(items):
    # every test in tests/ml is an ML test (also when a file forgets the marker)
    for item in items:
        if Path(str(item.fspath)).resolve().is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.ml)


@pytest.fixture(scope="session")
def run_finetune_step():
    """run_finetune_step(out, *args) -> (exit code, result document or None, log)."""
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


@pytest.fixture(scope="session")
def ort_int8(ort_export, trained_model, tmp_path_factory):
    from test_export_support import run_inprocess

    from edgetune_jobs.steps import build_engine

    out = tmp_path_factory.mktemp("int8") / "ort-int8"
    code, doc = run_inprocess(build_engine, [
        "--out", str(out), "--onnx", str(ort_export[0] / "end2end.onnx"), "--meta", str(ort_export[0] / "pipeline.json"),
        "--backend", "onnxruntime", "--precision", "int8", "--calibration-images", str(trained_model.data),
        "--calibration-method", "minmax"], out.parent / "ort-int8.result.json")
    assert code == 0, doc
    return out, doc


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
