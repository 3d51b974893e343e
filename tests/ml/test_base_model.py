"""Fine-tuning from the generated base model lifts AP; random weights with the same small
budget do not get there.

The base model (edgetune_jobs.training.base_model) comes from $EDGETUNE_CACHE; on a cold
cache this test builds it first (the pre-training: minutes on 2 cores, once per machine
and stamp). The fine-tuning here is small on purpose (TEST_RECIPE); its thresholds come
from measured runs (benchmarks/notes/issue-11-recipe.md), not from the code under test, and
the same recipe from random weights runs next to it as the control (MIN_* below).

The checkpoint is given as the demo gives it, a path on the artifact volume
(pvc://<claim>/models/...), with its sidecar next to it; the URL form of --checkpoint is
tested in test_finetune.py (a local http server). The AP the step reports is recomputed with
pycocotools from the detections it saved.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest

pytestmark = pytest.mark.ml

# 40 generated balloon-like images (seed 7, 320 px; 30 train / 10 val), 192 px input, 12 epochs of
# batch 4 (96 iterations), lr 0.001 (the demo's), 1 torch thread (a 2-core CI machine busy with
# anything else runs 2 threads several times slower; the thresholds were measured with 1)
TEST_RECIPE = ("--dataset-source", "generate", "--generate-images", "40", "--generate-seed", "7",
               "--val-fraction", "0.25", "--dataset-format", "via",
               "--epochs", "12", "--batch-size", "4", "--image-size", "192", "--lr", "0.001", "--seed", "0",
               "--val-interval", "4", "--workers", "0", "--device", "cpu")
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# measured (benchmarks/notes/issue-11-recipe.md), 1 thread: from the 12-epoch base model (a
# 2-vCPU AMD EPYC) base mAP 0.036 -> fine-tuned 0.685, from random weights 0.103; from the
# earlier 24-epoch base (a 2-vCPU Intel Xeon) 0.273 -> 0.804, from random weights 0.096
MIN_FINETUNED = 0.5   # 0.185 below the lowest measured run from a base, 0.40 above random weights
MIN_LIFT = 0.3        # base -> fine-tuned; measured 0.649 and 0.531
MIN_OVER_RANDOM = 0.3  # fine-tuned from the base minus fine-tuned from random weights; measured 0.582 and 0.708


@pytest.fixture(scope="session")
def base_checkpoint():
    from edgetune_jobs.training import base_model

    return base_model.ensure(log=lambda m: print(f"base model: {m}", flush=True))


def pycocotools_map(data_dir, detections) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(data_dir / "annotations" / "val.json"))
        dets = json.loads(detections.read_text())
        if not dets:
            return 0.0
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


# the first run on a cold $EDGETUNE_CACHE pre-trains the base model in the fixture: 15-30 min
# on 2 cores (longer than the suite's 900 s per test)
@pytest.mark.timeout(3600)
def test_finetuning_from_the_base_lifts_ap(base_checkpoint, tmp_path, run_finetune_step):
    from edgetune_jobs.training import base_model

    # the artifact volume as the Pod sees it: the checkpoint and its sidecar under models/
    volume = tmp_path / "volume"
    (volume / "models").mkdir(parents=True)
    for src in (base_checkpoint, base_model.sidecar_path(base_checkpoint)):
        shutil.copyfile(src, volume / "models" / src.name)
    side = json.loads(base_model.sidecar_path(base_checkpoint).read_text())

    out = tmp_path / "ft"
    code, doc, log = run_finetune_step(
        out, *TEST_RECIPE, "--checkpoint", f"pvc://edgetune-artifacts/models/{base_checkpoint.name}",
        env={"EDGETUNE_PVC_MOUNT": str(volume), **THREADS}, timeout=1800)
    assert code == 0, log[-3000:]
    base, tuned = doc["metrics"]["base"]["mAP"], doc["metrics"]["finetuned"]["mAP"]

    # what the base is, in the result's provenance
    prov = doc["provenance"]
    assert prov["init"] == "checkpoint"
    assert prov["base_model"]["stamp"] == side["stamp"] == base_model.stamp()
    assert "not COCO" in prov["base_model"]["description"]
    assert prov["base_model"]["sha256"] == base_model.sha256_of(base_checkpoint)[:16]
    assert prov["base_eval"].startswith("class head re-initialised: the checkpoint's 6 classes")

    # the step's own figure is what pycocotools makes of the detections it saved
    assert doc["artifacts"]["detections"] == "detections.json"
    assert pycocotools_map(out / "data", out / "detections.json") == pytest.approx(tuned, abs=5e-4)

    # the lift, and the same budget from random weights in the same run, as a control
    code, rdoc, rlog = run_finetune_step(tmp_path / "random", *TEST_RECIPE, env=THREADS, timeout=1800)
    assert code == 0, rlog[-3000:]
    random_tuned = rdoc["metrics"]["finetuned"]["mAP"]
    assert rdoc["provenance"]["init"] == "random" and rdoc["metrics"]["base"] is None
    print(f"from the base model: {base} -> {tuned}; from random weights: {random_tuned}")
    assert tuned >= MIN_FINETUNED, (base, tuned, random_tuned)
    assert tuned - base >= MIN_LIFT, (base, tuned, random_tuned)
    assert tuned - random_tuned >= MIN_OVER_RANDOM, (base, tuned, random_tuned)
