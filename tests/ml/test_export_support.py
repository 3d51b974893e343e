"""Shared helpers of the export / verify / benchmark ML tests (no tests in here).

Exports are the slow part (~10-20 s each on 2 cores), so they are made once per pytest
run and shared by test_export.py, test_verify.py and test_benchmark.py through the caches
below (this module is imported once; tests/ml is on sys.path in pytest's default
"prepend" import mode). Steps run in-process through their main() (cli.run_step), exactly
the code path of `python -m edgetune_jobs.steps.<step>` minus the interpreter start; one test
per step also runs the real command line in a subprocess.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def run_inprocess(module, argv: list[str], result_path: Path) -> tuple[int, dict]:
    """(exit code, the result document as written, checked by the typed decoder)."""
    from support import decoded

    if result_path.exists():
        result_path.unlink()
    code = module.main(argv, result_path=str(result_path))
    return code, decoded(result_path.read_text())


def run_cli(step_module: str, argv: list[str], result_path: Path, timeout: float = 600) -> tuple[int, dict | None, str]:
    env = dict(os.environ, EDGETUNE_RESULT_PATH=str(result_path), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", f"edgetune_jobs.steps.{step_module}", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    doc = json.loads(result_path.read_text()) if result_path.exists() else None
    return proc.returncode, doc, proc.stderr


@functools.lru_cache(maxsize=None)
def export_model(root: str, backend: str, checkpoint: str, config: str, image_size: int,
                 dynamic: bool = False, val: str | None = None, extra: tuple = ()) -> tuple[Path, dict]:
    from edgetune_jobs.steps import export

    name = f"export-{backend}-{image_size}{'-dyn' if dynamic else ''}{'-val' if val else ''}"
    if extra:
        name += "-" + "".join(ch for ch in "".join(extra) if ch.isalnum())[:40]
    out = Path(root) / name
    argv = ["--out", str(out), "--checkpoint", checkpoint, "--config", config, "--backend", backend,
            "--image-size", str(image_size)]
    if dynamic:
        argv.append("--dynamic")
    if val:
        argv += ["--val-dataset", val]
    argv += list(extra)
    code, doc = run_inprocess(export, argv, Path(root) / f"{name}.result.json")
    assert code == 0, doc
    return out, doc


@functools.lru_cache(maxsize=None)
def build_onnxruntime(root: str, export_dir: str) -> tuple[Path, dict]:
    from edgetune_jobs.steps import build_engine

    out = Path(root) / (Path(export_dir).name + "-build")
    code, doc = run_inprocess(build_engine, [
        "--out", str(out), "--onnx", str(Path(export_dir) / "end2end.onnx"),
        "--meta", str(Path(export_dir) / "pipeline.json"), "--backend", "onnxruntime",
        "--precision", "fp32"], Path(root) / f"{out.name}.result.json")
    assert code == 0, doc
    return out, doc


def exports_root(tmp_path_factory) -> str:
    root = tmp_path_factory.getbasetemp() / "edgetune-exports"
    root.mkdir(exist_ok=True)
    return str(root)


def val_images(dataset: Path) -> list[Path]:
    val = json.loads((dataset / "annotations" / "val.json").read_text())
    train = json.loads((dataset / "annotations" / "train.json").read_text())
    recs = val["images"] + train["images"][:3]
    return [dataset / "images" / r["file_name"] for r in recs]


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64).reshape(-1, 1, 4)
    b = np.asarray(b, np.float64).reshape(1, -1, 4)
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def match(ref, got, top: int = 30, iou_min: float = 0.5) -> list[dict]:
    """Each of ref's `top` highest-scoring detections against all of got's, by IoU (same
    label). Returns one record per ref detection: matched?, IoU, max |coordinate diff| px,
    |score diff|."""
    rb, rs, rl = ref
    gb, gs, gl = got
    order = np.argsort(-rs, kind="stable")[:top]
    out = []
    ious = iou_matrix(rb[order], gb) if len(gb) else np.zeros((len(order), 0))
    for row, i in enumerate(order):
        cand = np.nonzero(gl == rl[i])[0]
        if len(cand) == 0:
            out.append({"matched": False})
            continue
        j = cand[np.argmax(ious[row, cand])]
        out.append({"matched": bool(ious[row, j] >= iou_min), "iou": float(ious[row, j]),
                    "px": float(np.abs(rb[i] - gb[j]).max()), "dscore": float(abs(rs[i] - gs[j]))})
    return out
