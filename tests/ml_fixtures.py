"""The ML fixtures every test folder may use (tests/conftest.py registers them), built once
per pytest run in a temporary folder, on CPU with real OpenMMLab code:

- generated_via_dataset -> Path: a synthetic balloon-like VIA set (edgetune_jobs.data.generate),
  balloon-zip layout: <dir>/train/ and <dir>/val/, each with images + via_region_data.json
  (12 images of at most 160 px: 9 train, 3 val).
- prepared_dataset -> Path: that set in the prepared layout of docs/contract.md
  (annotations/train.json, annotations/val.json, images/) — what --val-dataset takes.
- trained_model -> TrainedModel: `python -m edgetune_jobs.steps.finetune` run once on it
  (RTMDet-tiny, random init, 2 epochs, batch 2, 128 px): .out (the step's folder),
  .checkpoint (best.pth), .config (config.py), .data (the prepared dataset it trained on),
  .result (the result document), .log (stdout + stderr), .image_size (128).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE_SIZE = 128


def _need_ml_stack():
    for mod in ("torch", "mmengine", "mmdet", "mmcv"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (run `make install`)")


@pytest.fixture(scope="session")
def generated_via_dataset(tmp_path_factory) -> Path:
    pytest.importorskip("cv2")
    from edgetune_jobs.data import generate

    root = tmp_path_factory.mktemp("generated") / "balloon"
    generate.generate(root, images=12, seed=0, size=160, val_fraction=0.25)
    return root


@pytest.fixture(scope="session")
def prepared_dataset(generated_via_dataset, tmp_path_factory) -> Path:
    from edgetune_jobs.data import prepare as data

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
    proc = subprocess.run([sys.executable, "-m", "edgetune_jobs.steps.finetune", "--out", str(out), *args],
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
