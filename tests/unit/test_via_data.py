"""data.prepare / fetch on hand-made datasets (standard library only: PNG images made here)."""

import json
import struct
import zipfile
import zlib

import pytest

from edgetune_jobs.data import fetch
from edgetune_jobs.data.__main__ import main as data_tool
from edgetune_jobs.data import prepare as data
from edgetune_jobs.cli import StepError


def png(w, h):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\x00" + b"\x80\x80\x80" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def via_folder(folder, names, w=40, h=30, version=2):
    folder.mkdir(parents=True, exist_ok=True)
    doc = {}
    for i, name in enumerate(names):
        (folder / name).write_bytes(png(w, h))
        region = {"shape_attributes": {"name": "polygon", "all_points_x": [2, 12 + i, 12 + i, 2],
                                       "all_points_y": [3, 3, 13, 13]}, "region_attributes": {}}
        doc[name + "1"] = {"filename": name, "size": 1, "file_attributes": {},
                           "regions": [region] if version == 2 else {"0": region}}
    (folder / "via_region_data.json").write_text(json.dumps(doc))
    return doc


def load(path):
    return json.loads(path.read_text())


def test_balloon_zip_layout(tmp_path):
    src = tmp_path / "src"
    via_folder(src / "balloon" / "train", ["a.png", "b.png", "c.png"], version=1)
    via_folder(src / "balloon" / "val", ["a.png", "d.png"], version=2)  # same name in both splits
    (src / "__MACOSX").mkdir()
    (src / "__MACOSX" / "junk.json").write_text("{}")
    archive = tmp_path / "balloon_dataset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src))
    out = tmp_path / "out"
    summary = data.fetch_and_prepare(out, source="path", path=str(archive), work_dir=tmp_path / "work")
    assert summary["train_images"] == 3 and summary["val_images"] == 2
    assert summary["classes"] == ["balloon"] and summary["split"] == "folders"
    train, val = load(out / "annotations/train.json"), load(out / "annotations/val.json")
    assert [i["file_name"] for i in train["images"]] == ["train/a.png", "train/b.png", "train/c.png"]
    assert [i["file_name"] for i in val["images"]] == ["val/a.png", "val/d.png"]
    for coco in (train, val):
        for img in coco["images"]:
            assert (out / "images" / img["file_name"]).is_file()
            assert (img["width"], img["height"]) == (40, 30)
    assert train["annotations"][1]["bbox"] == [2, 3, 11, 10]
    assert load(out / "dataset.json") == summary


def test_single_folder_split_is_deterministic(tmp_path):
    via_folder(tmp_path / "set", [f"{i:02d}.png" for i in range(10)])
    s1 = data.prepare(tmp_path / "set", tmp_path / "o1", val_fraction=0.25, seed=7)
    s2 = data.prepare(tmp_path / "set", tmp_path / "o2", val_fraction=0.25, seed=7)
    s3 = data.prepare(tmp_path / "set", tmp_path / "o3", val_fraction=0.25, seed=8)
    # ceil(10 * 0.25), whatever the seed
    assert [(s["train_images"], s["val_images"]) for s in (s1, s2, s3)] == [(7, 3)] * 3
    names = lambda o: [i["file_name"] for i in load(tmp_path / o / "annotations/val.json")["images"]]  # noqa: E731
    assert names("o1") == names("o2") != names("o3")
    assert data.split_names(["b", "a", "c"], 0.5, 0) == data.split_names(["c", "a", "b"], 0.5, 0)
    with pytest.raises(StepError, match="val-fraction"):
        data.prepare(tmp_path / "set", tmp_path / "o4", val_fraction=0)


def test_via_project_file_and_category_attribute(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    meta = {}
    for i, (name, cls) in enumerate([("a.png", "cat"), ("b.png", "dog"), ("c.png", "cat"), ("d.png", "dog")]):
        (folder / name).write_bytes(png(20, 20))
        meta[f"k{i}"] = {"filename": name, "size": 1, "file_attributes": {}, "regions": [
            {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 5, "height": 5},
             "region_attributes": {"animal": cls}}]}
    (folder / "via_project_3Jan2026.json").write_text(json.dumps(
        {"_via_settings": {}, "_via_img_metadata": meta, "_via_attributes": {}}))
    s = data.prepare(folder, tmp_path / "out", val_fraction=0.5, category_attribute="animal", seed=1)
    assert s["classes"] == ["cat", "dog"]
    val = load(tmp_path / "out/annotations/val.json")
    assert [c["name"] for c in val["categories"]] == ["cat", "dog"]  # same list as train


def test_coco_input_is_validated_and_copied(tmp_path):
    src = tmp_path / "coco"
    (src / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (src / "images" / split).mkdir(parents=True)
        (src / "images" / split / "x.png").write_bytes(png(8, 6))
        coco = {"images": [{"id": 5, "file_name": "x.png"}],
                "annotations": [{"image_id": 5, "category_id": 3, "bbox": [1, 1, 2, 2]}],
                "categories": [{"id": 3, "name": "balloon"}]}
        (src / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    s = data.prepare(src, tmp_path / "out", fmt="coco")
    assert (s["train_images"], s["val_images"], s["classes"]) == (1, 1, ["balloon"])
    train = load(tmp_path / "out/annotations/train.json")
    assert train["images"][0] == {"id": 5, "file_name": "train/x.png", "width": 8, "height": 6}
    assert train["annotations"][0]["area"] == 4 and train["annotations"][0]["iscrowd"] == 0
    # broken: an annotation of an unknown image
    bad = load(src / "annotations/instances_val.json")
    bad["annotations"][0]["image_id"] = 99
    (src / "annotations/instances_val.json").write_text(json.dumps(bad))
    with pytest.raises(StepError, match="unknown image 99") as err:
        data.prepare(src, tmp_path / "out2", fmt="coco")
    assert err.value.reason == "InvalidDataset"


def test_errors_have_reasons(tmp_path, monkeypatch):
    with pytest.raises(StepError) as err:
        data.fetch_and_prepare(tmp_path / "o", source="path", path=str(tmp_path / "missing"))
    assert err.value.reason == "DatasetNotFound" and "does not exist" in err.value.message
    # no annotations at all
    folder = tmp_path / "empty"
    via_folder(folder, ["a.png", "b.png"])
    doc = load(folder / "via_region_data.json")
    for v in doc.values():
        v["regions"] = []
    (folder / "via_region_data.json").write_text(json.dumps(doc))
    with pytest.raises(StepError, match="no annotations") as err:
        data.prepare(folder, tmp_path / "o2")
    assert err.value.reason == "InvalidDataset"
    # an image named in the annotations is missing
    via_folder(tmp_path / "gone", ["a.png", "b.png"])
    (tmp_path / "gone" / "b.png").unlink()
    with pytest.raises(StepError, match="'b.png' not found"):
        data.prepare(tmp_path / "gone", tmp_path / "o3")
    # no annotation file
    (tmp_path / "nothing").mkdir()
    with pytest.raises(StepError, match="no VIA annotation file"):
        data.prepare(tmp_path / "nothing", tmp_path / "o4")
    # a zip that escapes its folder
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../../escape.json", "{}")
    with pytest.raises(StepError, match="unsafe path"):
        fetch.fetch("path", path=str(evil), work_dir=tmp_path / "w")


def test_pvc_path_resolves_under_the_mount(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_PVC_MOUNT", str(tmp_path))
    via_folder(tmp_path / "datasets" / "b" / "train", ["a.png"])
    via_folder(tmp_path / "datasets" / "b" / "val", ["c.png"])
    assert fetch.resolve_path("pvc://my-claim/datasets/b") == tmp_path / "datasets" / "b"
    s = data.fetch_and_prepare(tmp_path / "out", source="path", path="pvc://my-claim/datasets/b")
    assert (s["train_images"], s["val_images"]) == (1, 1)


def test_cli_exit_codes(tmp_path, capsys):
    assert data_tool(["--out", str(tmp_path / "o"), "--dataset-source", "path", "--dataset-path", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("data: DatasetNotFound: ")
