"""The synthetic VIA dataset: deterministic, well-formed, convertible."""

import json

import pytest

pytest.importorskip("numpy")
pytest.importorskip("cv2")

from edgetune_jobs.data import coco_via, generate  # noqa: E402
from support import tree_digest  # noqa: E402


digest = tree_digest


def test_deterministic_and_seed_dependent(tmp_path):
    a = generate.generate(tmp_path / "a", images=5, seed=3, size=96)
    b = generate.generate(tmp_path / "b", images=5, seed=3, size=96)
    c = generate.generate(tmp_path / "c", images=5, seed=4, size=96)
    assert a["train"] == b["train"] == c["train"] == 4 and a["val"] == b["val"] == c["val"] == 1
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_prefix_property_and_layout(tmp_path):
    generate.generate(tmp_path / "small", images=3, seed=1, size=96, val_fraction=0)
    generate.generate(tmp_path / "big", images=6, seed=1, size=96, val_fraction=0)
    for i in range(3):
        name = f"balloon_1_{i:04d}.jpg"
        assert (tmp_path / "small" / name).read_bytes() == (tmp_path / "big" / name).read_bytes()
    assert (tmp_path / "small" / generate.VIA_FILE).is_file()
    assert not (tmp_path / "small" / "train").exists()


@pytest.mark.parametrize("via_version", [1, 2])
def test_annotations_convert_to_valid_coco(tmp_path, via_version):
    info = generate.generate(tmp_path, images=4, seed=0, size=128, via_version=via_version)
    doc = json.loads((tmp_path / "train" / generate.VIA_FILE).read_text())
    regions = next(iter(doc.values()))["regions"]
    assert isinstance(regions, dict if via_version == 1 else list)
    coco, stats = coco_via.convert(
        doc, lambda n: coco_via.read_image_size(tmp_path / "train" / n), class_name="balloon")
    assert stats.skipped == {}
    assert len(coco["images"]) == info["train"]
    assert coco["annotations"], "every image has 1-3 balloons"
    for ann in coco["annotations"]:
        img = coco["images"][ann["image_id"] - 1]
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"]
        assert 0 < ann["area"] < w * h  # an ellipse fills ~pi/4 of its box
        assert ann["area"] == pytest.approx(0.785 * w * h, rel=0.08)
        assert max(img["width"], img["height"]) == 128


def test_multiclass_names_classes_in_region_attributes(tmp_path):
    generate.generate(tmp_path, images=6, seed=0, size=96, val_fraction=0, classes=["balloon", "ball"])
    doc = json.loads((tmp_path / generate.VIA_FILE).read_text())
    names = {r["region_attributes"]["class"] for e in doc.values() for r in e["regions"]}
    assert names <= {"balloon", "ball"} and names


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate.generate(tmp_path, images=0)
    with pytest.raises(ValueError):
        generate.generate(tmp_path, images=1, val_fraction=0.5)
    assert generate.main(["--out", str(tmp_path / "x"), "--images", "0"]) == 2
