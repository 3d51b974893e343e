"""The data step on the generated set, fetched from a URL served by a local http.server."""

import json
import shutil
import subprocess
import sys

import pytest

from edgetune_jobs.data import prepare as data
from edgetune_jobs.cli import StepError

pytestmark = pytest.mark.ml


def test_zip_from_url_balloon_layout(generated_via_dataset, serve_directory, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    # the balloon zip's layout: balloon/train/..., balloon/val/...
    shutil.make_archive(str(site / "balloon_dataset"), "zip", generated_via_dataset.parent, "balloon")
    url = serve_directory(site) + "/balloon_dataset.zip"
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "edgetune_jobs.data", "--out", str(out), "--dataset-source", "url",
                           "--dataset-url", url, "--work-dir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert (summary["train_images"], summary["val_images"]) == (9, 3)
    assert summary["annotation_files"] == {"train": "balloon/train/via_region_data.json",
                                           "val": "balloon/val/via_region_data.json"}
    train = json.loads((out / "annotations" / "train.json").read_text())
    assert train["annotations"] and all((out / "images" / i["file_name"]).is_file() for i in train["images"])
    assert (tmp_path / "work" / "download" / "balloon_dataset.zip").is_file()


def test_url_errors_are_one_clear_line(serve_directory, tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "notazip.zip").write_text("hello")
    base = serve_directory(tmp_path / "site")
    with pytest.raises(StepError) as err:
        data.fetch_and_prepare(tmp_path / "o", source="url", url=base + "/missing.zip")
    assert err.value.reason == "DatasetNotFound"
    assert err.value.message == f"could not download the dataset from {base}/missing.zip: HTTP 404 File not found"
    with pytest.raises(StepError, match="not a zip or tar archive"):
        data.fetch_and_prepare(tmp_path / "o", source="url", url=base + "/notazip.zip")
    with pytest.raises(StepError, match="could not download") as err:
        data.fetch_and_prepare(tmp_path / "o", source="url", url="http://127.0.0.1:9/x.zip")
    assert err.value.reason == "DatasetNotFound"


def test_generate_source_and_coco_roundtrip(tmp_path, prepared_dataset):
    s = data.fetch_and_prepare(tmp_path / "gen", source="generate", generate_images=6, generate_size=96,
                               work_dir=tmp_path / "w")
    assert s["source"] == "generate" and s["train_images"] + s["val_images"] == 6
    # a prepared dataset is itself a valid COCO input
    s2 = data.prepare(prepared_dataset, tmp_path / "again", fmt="coco")
    assert (s2["train_images"], s2["val_images"]) == (9, 3)
    for split in ("train", "val"):
        a = json.loads((prepared_dataset / "annotations" / f"{split}.json").read_text())
        b = json.loads((tmp_path / "again" / "annotations" / f"{split}.json").read_text())
        assert a["annotations"] == b["annotations"]
        assert [i["file_name"] for i in b["images"]] == [f"{split}/{i['file_name']}" for i in a["images"]]
