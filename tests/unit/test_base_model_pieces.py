"""The base model's pieces that need no training: the generic-objects generator, the cache
stamp, the sidecar that says what a checkpoint is, the examples' two checkpoint forms, and
the demo's accuracy table, background pre-training and timeline."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import importlib.util
import json
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

pytest.importorskip("numpy")
pytest.importorskip("cv2")

from edgetune_contract import names  # noqa: E402
from edgetune_jobs.data import generic_objects  # noqa: E402
from edgetune_jobs.training import base_model  # noqa: E402
from edgetune_operator.kinds import finetunejob  # noqa: E402
from edgetune_operator.kinds.common import Context  # noqa: E402
from edgetune_operator.settings import from_env  # noqa: E402
from support import tree_digest  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


digest = tree_digest


def test_generic_objects_are_deterministic_varied_and_not_balloons(tmp_path):
    a = generic_objects.generate(tmp_path / "a", images=40, seed=1, size=128, val_fraction=0.1)
    generic_objects.generate(tmp_path / "b", images=40, seed=1, size=128, val_fraction=0.1)
    generic_objects.generate(tmp_path / "c", images=40, seed=2, size=128, val_fraction=0.1)
    assert (a["train"], a["val"]) == (36, 4)
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    seen, sizes = set(), []
    for split in ("train", "val"):
        via = json.loads((tmp_path / "a" / split / "via_region_data.json").read_text())
        for rec in via.values():
            import cv2

            h, w = cv2.imread(str(tmp_path / "a" / split / rec["filename"])).shape[:2]
            assert max(h, w) == 128
            for r in rec["regions"]:
                xs, ys = r["shape_attributes"]["all_points_x"], r["shape_attributes"]["all_points_y"]
                assert 0 <= min(xs) and max(xs) < w and 0 <= min(ys) and max(ys) < h
                seen.add(r["region_attributes"]["class"])
                sizes.append(max(max(xs) - min(xs), max(ys) - min(ys)) / min(h, w))
    assert seen == set(generic_objects.CLASSES) and "balloon" not in seen
    assert min(sizes) < 0.15 and max(sizes) > 0.35  # small and large objects (9-45 % of the shorter side)


def test_generic_objects_convert_as_a_multi_class_via_set(tmp_path):
    from edgetune_jobs.data import prepare

    generic_objects.generate(tmp_path / "raw", images=12, seed=0, size=96, val_fraction=0.25)
    summary = prepare.prepare(tmp_path / "raw", tmp_path / "prep", fmt="via", category_attribute="class")
    assert set(summary["classes"]) <= set(generic_objects.CLASSES) and len(summary["classes"]) >= 4
    assert summary["train_images"] == 9 and summary["val_images"] == 3


# sha256 of generate(images=6, seed=0, size=96, val_fraction=0.2) at generic_objects.VERSION 1
GENERATOR_OUTPUT = {1: "f5599a115dba176845bfa83b9c9f2ad88c6f169cc25d385b562107a42fb5dd17"}


def test_the_generators_output_is_pinned_to_its_version(tmp_path):
    """The base model's stamp names the generator by VERSION, not by its source (a comment
    must not cost a 30-minute pre-training): a change to the images that forgets to bump
    VERSION fails here (bump it and add the new digest)."""
    generic_objects.generate(tmp_path / "g", images=6, seed=0, size=96, val_fraction=0.2)
    assert digest(tmp_path / "g") == GENERATOR_OUTPUT[generic_objects.VERSION]


def test_stamp_covers_recipe_generator_and_versions(monkeypatch):
    s0 = base_model.stamp()
    assert s0 == base_model.stamp() and len(s0) == 16
    inputs = base_model.stamp_inputs()
    assert inputs["generator"]["version"] == generic_objects.VERSION
    assert {"torch", "mmcv", "mmdet", "mmengine"} <= set(inputs["versions"])
    monkeypatch.setitem(base_model.RECIPE, "epochs", base_model.RECIPE["epochs"] + 1)
    assert base_model.stamp() != s0
    monkeypatch.undo()
    monkeypatch.setattr(generic_objects, "VERSION", generic_objects.VERSION + 1)
    assert base_model.stamp() != s0


def _fake_base(folder: Path, *, sha: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / f"{base_model.NAME}.pth"
    ckpt.write_bytes(b"not really weights")
    side = {"kind": base_model.SIDECAR_KIND, "description": base_model.DESCRIPTION, "stamp": "abcdef0123456789",
            "classes": list(generic_objects.CLASSES),
            "generator": {"module": "edgetune_jobs.data.generic_objects", "version": 1, "train_images": 288,
                          "seed": 0, "size": 192},
            "training": {"epochs": 24, "iterations": 864, "image_size": 192, "batch_size": 8, "lr": 0.004},
            "val": {"mAP": 0.5}, "sha256": sha or hashlib.sha256(ckpt.read_bytes()).hexdigest()}
    base_model.sidecar_path(ckpt).write_text(json.dumps(side))
    return ckpt


def test_sidecar_says_what_the_checkpoint_is_and_is_checked_against_it(tmp_path):
    ckpt = _fake_base(tmp_path / "ok")
    prov = base_model.provenance_of(ckpt)
    assert prov["stamp"] == "abcdef0123456789" and prov["classes"] == 6 and prov["own_val_mAP"] == 0.5
    assert "not COCO" in prov["description"] and "generic_objects v1, 288 train images" in prov["pretrained_on"]
    assert len(json.dumps(prov)) < 700  # it travels in a 4 KiB result document
    wrong = _fake_base(tmp_path / "wrong", sha="0" * 64)
    assert "sha256 differs" in base_model.provenance_of(wrong)["error"]
    bare = tmp_path / "bare.pth"
    bare.write_bytes(b"x")
    assert base_model.provenance_of(bare) is None


def test_a_cached_base_is_reused_without_training(tmp_path, monkeypatch):
    final = tmp_path / "models" / f"rtmdet-tiny-generic-{base_model.stamp()}"
    ckpt = _fake_base(final)
    monkeypatch.setattr(base_model, "_pretrain", lambda *a, **k: pytest.fail("pre-trained again"))
    assert base_model.ensure(tmp_path, log=lambda m: None) == ckpt


def _finetune_args(path: Path, env: dict | None = None):
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "FinetuneJob")
    body = {**doc, "metadata": {"uid": "u", "generation": 1, **doc["metadata"]}}
    return finetunejob.finetune_args(Context(body, [], [], from_env(env or {}), dt.datetime(2026, 1, 1,
                                                                                           tzinfo=dt.timezone.utc)))


def _demo_store_env(demo, endpoint="http://10.99.0.1:8333") -> dict:
    """The operator settings the demo starts the operator with (its default store)."""
    return {"EDGETUNE_ARTIFACTS_S3": json.dumps({"endpoint": endpoint, "bucket": demo.BUCKET, "prefix": demo.PREFIX,
                                                 "credentialsSecret": {"name": demo.S3_SECRET}})}


def _demo():
    spec = importlib.util.spec_from_file_location("edgetune_demo", ROOT / "scripts" / "demo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_examples_start_from_the_base_in_the_store_locally_and_from_coco_on_a_cluster():
    demo = _demo()
    local = _finetune_args(ROOT / "examples" / "local" / "01-finetunejob.yaml", _demo_store_env(demo))
    # where the demo puts the cached base model is where the step reads it
    assert local.checkpoint == "s3://edgetune/demo/models/rtmdet_tiny_generic.pth"
    assert local.checkpoint == f"s3://{demo.BUCKET}/{demo.PREFIX}/{demo.BASE_MODEL_DIR}/{base_model.NAME}.pth"
    # the same example in the PVC mode (no object storage set): a path on the volume
    pvc = _finetune_args(ROOT / "examples" / "local" / "01-finetunejob.yaml")
    assert pvc.checkpoint == f"{names.ARTIFACT_MOUNT}/{demo.BASE_MODEL_DIR}/{base_model.NAME}.pth"
    cluster = _finetune_args(ROOT / "examples" / "cluster" / "01-finetunejob.yaml")
    assert cluster.checkpoint.startswith("https://download.openmmlab.com/mmdetection/v3.0/rtmdet/"
                                         "rtmdet_tiny_8xb32-300e_coco/")


def test_the_demo_prints_base_finetuned_converted_and_the_targets():
    demo = _demo()
    coco = lambda m: {"mAP": m, "mAP50": m + 0.2, "mAP75": m, "mAP_s": None, "mAP_m": None, "mAP_l": m}  # noqa: E731
    ft = {"metrics": {"base": coco(0.08), "finetuned": coco(0.66)},
          "provenance": {"finetune": {"dataset": {"val_images": 12}, "image_size": 192, "checkpoint_kind": "best",
                                      "checkpoint_epoch": 30, "epochs": 30, "base_eval": "class head re-initialised",
                                      "base_model": {"description": "RTMDet-tiny ... not COCO", "stamp": "s",
                                                     "pretrained_on": "generic"}}}}
    mc = {"metrics": {"converted": coco(0.655), "reference": coco(0.66), "mapDrop": 0.005},
          "provenance": {"verify": {"backend": "onnxruntime", "precision": "fp32", "images": 12}}}
    text = "\n".join(demo.accuracy_table(ft, mc))
    assert "base model    0.080" in text and "fine-tuned    0.660" in text and "converted     0.655" in text
    assert "lift base -> fine-tuned +0.580 (target >= 0.3: met)" in text
    assert "(target >= 0.6: met)" in text and "drop 0.005" in text and "12 val images" in text
    ft["metrics"]["finetuned"] = coco(0.3)
    assert "NOT met" in "\n".join(demo.accuracy_table(ft, mc))


def test_the_demo_puts_the_base_model_where_the_finetunejob_reads_it(tmp_path, object_store):
    """Through the real S3 server: the demo's upload, then the finetune step's own download
    (artifacts.transfer) of the checkpoint the example names, with its sidecar."""
    pytest.importorskip("boto3")
    from edgetune_jobs.artifacts.transfer import Transfer
    from store_fixtures import s3_env

    demo = _demo()
    ckpt = _fake_base(tmp_path / "cache")

    class Cluster:  # the one LocalCluster method the demo uses for it
        def object_store(self, buckets):
            assert demo.BUCKET in buckets
            return object_store

    demo.install_base_model(Cluster(), ckpt)
    args = _finetune_args(ROOT / "examples" / "local" / "01-finetunejob.yaml", _demo_store_env(demo, object_store.endpoint))
    args = dataclasses.replace(args, out=str(tmp_path / "step" / "out"))
    transfer = Transfer.from_env(s3_env(object_store, f"s3://{demo.BUCKET}/{demo.PREFIX}/ns/finetunejob/b/finetune",
                                        root=f"s3://{demo.BUCKET}/{demo.PREFIX}/"))
    got = transfer.fetch_inputs(args)
    assert Path(got.checkpoint).read_bytes() == ckpt.read_bytes()
    assert base_model.provenance_of(got.checkpoint)["stamp"] == "abcdef0123456789"  # the sidecar came along


def _pretraining(demo, tmp_path, script: str):
    return demo.Pretraining([sys.executable, "-c", script], tmp_path / "pretrain.log")


def test_the_demo_pretrains_in_the_background_only_when_the_base_is_not_cached(tmp_path, monkeypatch):
    demo = _demo()
    monkeypatch.setattr(base_model, "cached", lambda cache=None: tmp_path / "base.pth")
    assert demo.Pretraining.start(tmp_path / "pretrain.log") is None
    assert not (tmp_path / "pretrain.log").exists()
    started = []
    monkeypatch.setattr(base_model, "cached", lambda cache=None: None)
    monkeypatch.setattr(demo.Pretraining, "__init__", lambda self, cmd, log: started.append(cmd))
    assert demo.Pretraining.start(tmp_path / "pretrain.log") is not None
    assert started == [[sys.executable, "-m", "edgetune_jobs.training.base_model"]]


def test_a_failed_background_pretraining_is_one_error_with_its_log(tmp_path):
    demo = _demo()
    run = _pretraining(demo, tmp_path, "import sys; print('==> pre-training: epoch 3/24'); "
                                       "print('RuntimeError: out of memory'); sys.exit(3)")
    with pytest.raises(demo.DemoError) as err:
        run.wait()
    assert "exit 3" in str(err.value) and "RuntimeError: out of memory" in str(err.value)
    ok = _pretraining(demo, tmp_path, "print('done')")
    assert ok.wait() >= 0


def test_a_failed_demo_stops_the_background_pretraining_and_its_children(tmp_path):
    """The step's data loader workers are children of the pre-training: the whole process
    group goes, nothing keeps training after the demo has given up."""
    demo = _demo()
    pids = tmp_path / "pids"
    run = _pretraining(demo, tmp_path, "import os, subprocess, sys, time\n"
                                       "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
                                       f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
                                       "time.sleep(300)")
    deadline = time.monotonic() + 30
    while not (pids.exists() and pids.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    parent, child = map(int, pids.read_text().split())
    run.stop()
    assert run.proc.returncode == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)
    run.stop()  # a second stop (the finally after a finished wait) is a no-op


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def test_the_demo_says_where_its_time_went():
    demo = _demo()
    first = demo.timeline(742.4, 170.2, 561.0, 330.0, 0.42, 2)
    assert first.startswith("demo took 12 min 22 s")
    assert "ready after 2 min 50 s" in first and "pre-training 9 min 21 s, in the background" in first
    assert first.endswith("kubectl apply -> results 5 min 30 s; load average at the start 0.4 on 2 CPUs")
    assert "the base model cached" in demo.timeline(400, 120, None, 280, 0.1, 2)


def test_the_demo_warns_when_the_machine_is_busy():
    demo = _demo()
    assert demo.busy(0.9, 2) is None  # a quiet 2-core machine (make's own checks before the demo)
    warning = demo.busy(2.6, 2)
    assert "busy (load average 2.6 over the last minute on 2 CPUs)" in warning
    assert demo.busy(2.6, 16) is None


def test_bench_train_empties_only_a_folder_it_made(tmp_path):
    spec = importlib.util.spec_from_file_location("edgetune_bench_train", ROOT / "benchmarks" / "bench_train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    users = tmp_path / "home"
    users.mkdir()
    (users / "thesis.tex").write_text("years of work")
    with pytest.raises(SystemExit, match="nothing was deleted"):
        bench.fresh_out(users)
    assert (users / "thesis.tex").read_text() == "years of work"
    made = tmp_path / "new" / "bench-train"
    assert bench.fresh_out(made) == made and made.is_dir()
    (made / "base-t1-r0.log").write_text("an earlier run")
    bench.fresh_out(made)  # its own folder from an earlier run: emptied
    assert not (made / "base-t1-r0.log").exists() and made.is_dir()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bench.fresh_out(empty) == empty
