"""The finetune step on CPU: real mmdet training for a few iterations, real COCO evaluation."""

import json
import subprocess
import sys

import pytest

from edgetune_contract.progress import PROGRESS_PREFIX, parse_progress
from edgetune_contract.results import COCO_KEYS
from support import decoded

pytestmark = pytest.mark.ml


def assert_coco(metrics):
    assert set(metrics) == set(COCO_KEYS)
    for key, value in metrics.items():
        assert value is None or 0.0 <= value <= 1.0, (key, value)
    assert metrics["mAP"] is not None and metrics["mAP50"] is not None


def test_result_document(trained_model):
    doc = decoded(trained_model.result)  # the typed decoder accepts it
    assert doc["ok"] and doc["reason"] == "Succeeded" and doc["step"] == "finetune"
    assert doc["metrics"]["base"] is None  # no --checkpoint: random init, nothing to evaluate
    assert_coco(doc["metrics"]["finetuned"])
    assert doc["artifacts"] == {"checkpoint": "best.pth", "config": "config.py", "dataset": "data",
                                "detections": "detections.json"}
    prov = doc["provenance"]
    assert prov["dataset"] == {"source": "path", "format": "via", "train_images": 9, "val_images": 3,
                               "classes": ["balloon"]}
    assert (prov["epochs"], prov["batch_size"], prov["image_size"], prov["seed"]) == (2, 2, 128, 0)
    assert prov["iterations"] == 10  # 2 epochs x ceil(9 / 2)
    assert prov["device"].startswith("cpu") and prov["seconds"] > 0
    assert set(prov["versions"]) >= {"torch", "mmcv", "mmdet", "mmengine"}
    assert prov["test_cfg"]["score_thr"] == 0.001 and prov["test_cfg"]["nms_iou"] == 0.65
    assert prov["test_cfg"]["max_per_img"] == 300
    assert prov["checkpoint_kind"] in ("best", "final") and prov["init"] == "random"
    assert json.loads((trained_model.out / "result.json").read_text()) == trained_model.result


def test_artifacts(trained_model):
    import torch
    from mmengine.config import Config

    from edgetune_jobs.inference.mmcompat import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    ckpt = torch.load(trained_model.checkpoint, map_location="cpu")  # weights-only load
    assert set(ckpt) == {"meta", "state_dict"}
    assert any(k.startswith("bbox_head.rtm_cls") for k in ckpt["state_dict"])
    cfg = Config.fromfile(str(trained_model.config))
    assert cfg.model.bbox_head.num_classes == 1
    assert cfg.load_from is None
    assert cfg.test_dataloader.dataset.metainfo["classes"] == ("balloon",)
    assert cfg.test_dataloader.dataset.pipeline[1]["scale"] == (128, 128)
    assert cfg.model.backbone.init_cfg is None
    for split in ("train", "val"):
        assert (trained_model.data / "annotations" / f"{split}.json").is_file()
    assert not list((trained_model.out / "work" / "train").glob("*.pth"))  # full checkpoints removed


def test_progress_lines(trained_model):
    """A real run's progress: the whole job's percentage never goes back, each phase named, in
    order; training reports epoch, iterations, loss and ETA (random init: no base evaluation)."""
    records = []
    for line in trained_model.log.splitlines():
        if line.startswith(PROGRESS_PREFIX):
            rec = json.loads(line[len(PROGRESS_PREFIX):])
            assert parse_progress([line]) is not None, line
            records.append(rec)
    phases = [r["phase"] for r in records]
    assert phases[0] == "data" and phases[-1] == "done" and "eval-base" not in phases
    assert {"train", "val", "eval"} <= set(phases)
    order = {"data": 0, "train": 1, "val": 1, "eval": 2, "done": 3}
    assert [order[p] for p in phases] == sorted(order[p] for p in phases)
    percents = [r["percent"] for r in records]
    assert percents == sorted(percents), percents  # monotonic over the whole job
    assert percents[0] == 0.0 and percents[-1] == 100.0
    # without a base evaluation the shares 2/80/10 of data/training/eval make 92: data ends at
    # 2/92 = 2.17 %, training at 82/92 = 89.13 %
    train = [r for r in records if r["phase"] == "train"]
    assert 2.17 <= min(r["percent"] for r in train) and max(r["percent"] for r in train) == pytest.approx(89.13, abs=0.01)
    assert min(r["percent"] for r in records if r["phase"] == "eval") >= 89.13
    for r in train:
        assert set(r) == {"phase", "epoch", "epochs", "iter", "iters", "loss", "eta_seconds", "percent",
                          "phase_percent"}
        assert r["epochs"] == 2 and r["iters"] == 10 and 1 <= r["epoch"] <= 2
        assert r["loss"] is None or r["loss"] > 0
        assert r["eta_seconds"] >= 0
    assert [r["iter"] for r in train] == sorted(r["iter"] for r in train)
    assert train[-1]["phase_percent"] == 100.0 and train[-1]["eta_seconds"] == 0
    texts = [parse_progress([PROGRESS_PREFIX + json.dumps(r)]).text() for r in records]
    assert texts[0] == "0% preparing data" and texts[-1] == "100% done"
    assert any(t.endswith("training epoch 2/2, ETA 0s") for t in texts), texts
    assert parse_progress(trained_model.log.splitlines()).phase == "done"


def test_checkpoint_from_url_evaluates_base_then_trains(trained_model, serve_directory, tmp_path,
                                                        run_finetune_step, tiny_train_args):
    url = serve_directory(trained_model.out) + "/best.pth"
    out = tmp_path / "ft"
    code, doc, log = run_finetune_step(
        out, "--dataset-source", "path", "--dataset-path", str(trained_model.data), "--dataset-format", "coco",
        "--checkpoint", url, "--epochs", "1", *tiny_train_args[2:])
    assert code == 0, log[-3000:]
    assert (out / "work" / "checkpoints" / "best.pth").is_file()  # downloaded
    assert_coco(doc["metrics"]["base"])
    assert_coco(doc["metrics"]["finetuned"])
    # the base model IS the fixture's fine-tuned model, on the same val set and input size
    assert doc["metrics"]["base"]["mAP"] == pytest.approx(trained_model.result["metrics"]["finetuned"]["mAP"],
                                                          abs=1e-3)
    assert doc["provenance"]["init"] == "checkpoint" and doc["provenance"]["base_checkpoint"] == url
    phases = [p.phase for p in map(lambda s: parse_progress([s]), log.splitlines()) if p]
    assert phases.index("eval-base") < phases.index("train")


def test_bad_dataset_path_fails_before_the_ml_stack_with_one_line(tmp_path):
    """A bad dataset fails before torch/mmdet are even imported (what makes it fail in a
    second), with one stderr line and an ok=false result document."""
    result_path = tmp_path / "result.json"
    wrapper = ("import runpy, sys\n"
               "try:\n"
               "    runpy.run_module('edgetune_jobs.steps.finetune', run_name='__main__')\n"
               "finally:\n"
               "    print('heavy imports:', sorted(m for m in ('torch', 'mmdet', 'mmcv', 'mmengine')"
               " if m in sys.modules))\n")
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, "--out", str(tmp_path / "o"), "--dataset-source", "path",
         "--dataset-path", str(tmp_path / "nope"), "--dataset-format", "via", "--epochs", "1"],
        capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "EDGETUNE_RESULT_PATH": str(result_path)})
    assert proc.returncode != 0
    assert "heavy imports: []" in proc.stdout, proc.stdout
    err = proc.stderr.strip().splitlines()
    assert err == [f"finetune: DatasetNotFound: dataset path {tmp_path / 'nope'} does not exist"]
    doc = decoded(result_path.read_text())
    assert not doc["ok"] and doc["reason"] == "DatasetNotFound" and "does not exist" in doc["message"]


@pytest.mark.parametrize("args, reason, text", [
    (["--config", "no_such_config_1x"], "InvalidInput", "unknown config 'no_such_config_1x'"),
    (["--checkpoint", "/nonexistent/base.pth"], "CheckpointNotFound", "does not exist"),
    (["--epochs", "0"], "InvalidInput", "--epochs must be >= 1"),
    (["--image-size", "100"], "InvalidInput", "multiple of 32"),
    (["--dataset-source", "ftp"], "InvalidInput", "--dataset-source: invalid choice"),
])
def test_bad_input_gives_ok_false(tmp_path, monkeypatch, capsys, args, reason, text):
    from edgetune_jobs.steps import finetune

    result_path = tmp_path / "result.json"
    monkeypatch.setenv("EDGETUNE_RESULT_PATH", str(result_path))
    code = finetune.main(["--out", str(tmp_path / "o"), "--dataset-source", "generate", "--generate-images", "4",
                          "--generate-size", "64", "--workers", "0", "--device", "cpu", *args])
    assert code != 0
    doc = decoded(result_path.read_text())
    assert not doc["ok"] and doc["reason"] == reason and text in doc["message"], doc
    assert text in capsys.readouterr().err


def test_empty_annotations_fail(tmp_path, monkeypatch, generated_via_dataset):
    import shutil

    from edgetune_jobs.steps import finetune

    src = tmp_path / "set"
    shutil.copytree(generated_via_dataset, src)
    for f in src.rglob("via_region_data.json"):
        doc = json.loads(f.read_text())
        for v in doc.values():
            v["regions"] = []
        f.write_text(json.dumps(doc))
    monkeypatch.setenv("EDGETUNE_RESULT_PATH", str(tmp_path / "r.json"))
    assert finetune.main(["--out", str(tmp_path / "o"), "--dataset-source", "path", "--dataset-path", str(src)]) == 1
    doc = decoded((tmp_path / "r.json").read_text())
    assert doc["reason"] == "InvalidDataset" and "no annotations" in doc["message"]
