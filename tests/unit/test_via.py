"""VIA -> COCO conversion on hand-made cases (standard library only, fast)."""

import json
import struct
import zlib

import pytest

from edgetune_jobs.data import coco_via
from edgetune_jobs.data.coco_via import ViaError, convert, polygon_area


def sizes(mapping):
    return lambda name: mapping[name]


# A VIA 1.x export: regions is an object keyed "0", "1", ...
VIA1 = {
    "a.jpg1234": {
        "fileref": "", "size": 1234, "filename": "a.jpg", "base64_img_data": "", "file_attributes": {},
        "regions": {
            "1": {"shape_attributes": {"name": "rect", "x": 5, "y": 6, "width": 10, "height": 20},
                  "region_attributes": {}},
            "0": {"shape_attributes": {"name": "polygon", "all_points_x": [10, 30, 30, 20, 10],
                                       "all_points_y": [10, 10, 30, 40, 30]},
                  "region_attributes": {}},
        },
    },
    "b.jpg99": {"fileref": "", "size": 99, "filename": "b.jpg", "base64_img_data": "",
                "file_attributes": {}, "regions": {}},
}

# A VIA 2.x export: regions is a list; classes in a region attribute
VIA2 = {
    "c.png10": {
        "filename": "c.png", "size": 10, "file_attributes": {},
        "regions": [
            {"shape_attributes": {"name": "polygon", "all_points_x": [0, 4, 0], "all_points_y": [0, 0, 3]},
             "region_attributes": {"kind": "kite"}},
            {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 2, "height": 2},
             "region_attributes": {"kind": {"balloon": True, "kite": False}}},
        ],
    },
}


def test_via1_polygon_and_rect_exact():
    coco, stats = convert(VIA1, sizes({"a.jpg": (100, 80), "b.jpg": (50, 50)}), class_name="balloon")
    assert coco["categories"] == [{"id": 1, "name": "balloon", "supercategory": "balloon"}]
    assert coco["images"] == [
        {"id": 1, "file_name": "a.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "b.jpg", "width": 50, "height": 50},
    ]
    poly, rect = coco["annotations"]  # regions in key order "0", "1"
    # pentagon (10,10) (30,10) (30,30) (20,40) (10,30): square 20x20 + triangle 20*10/2
    assert poly == {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30], "area": 500,
                    "segmentation": [[10, 10, 30, 10, 30, 30, 20, 40, 10, 30]], "iscrowd": 0}
    assert rect["bbox"] == [5, 6, 10, 20]
    assert rect["area"] == 200
    assert rect["segmentation"] == [[5, 6, 15, 6, 15, 26, 5, 26]]
    assert stats.images == 2 and stats.annotations == 2 and stats.skipped == {}


def test_via2_list_regions_and_category_attribute():
    coco, _ = convert(VIA2, sizes({"c.png": (10, 10)}), category_attribute="kind", class_name=None)
    assert [c["name"] for c in coco["categories"]] == ["balloon", "kite"]  # sorted, ids 1..K
    tri, box = coco["annotations"]
    assert tri["category_id"] == 2 and tri["bbox"] == [0, 0, 4, 3] and tri["area"] == 6
    assert box["category_id"] == 1 and box["bbox"] == [1, 1, 2, 2] and box["area"] == 4


def test_fixed_categories_keep_order_and_reject_unknown():
    coco, _ = convert(VIA2, sizes({"c.png": (10, 10)}), category_attribute="kind",
                      categories=["kite", "balloon", "dog"])
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "kite"), (2, "balloon"), (3, "dog")]
    assert [a["category_id"] for a in coco["annotations"]] == [1, 2]
    with pytest.raises(ViaError, match="not among the known classes"):
        convert(VIA2, sizes({"c.png": (10, 10)}), category_attribute="kind", categories=["kite"])


def test_via2_project_form_uses_image_id_list_order():
    project = {
        "_via_settings": {"ui": {}},
        "_via_img_metadata": {"k2": dict(VIA1["b.jpg99"]), "k1": dict(VIA1["a.jpg1234"])},
        "_via_attributes": {"region": {}, "file": {}},
        "_via_image_id_list": ["k1", "k2"],
    }
    coco, _ = convert(project, sizes({"a.jpg": (100, 80), "b.jpg": (50, 50)}), file_prefix="train/")
    assert [i["file_name"] for i in coco["images"]] == ["train/a.jpg", "train/b.jpg"]
    assert len(coco["annotations"]) == 2


def test_clipping_degenerate_and_unsupported_shapes():
    doc = {"x.jpg1": {"filename": "x.jpg", "regions": [
        # sticks out of the 20x20 image: clipped to it
        {"shape_attributes": {"name": "polygon", "all_points_x": [-5, 25, 25, -5],
                              "all_points_y": [2, 2, 12, 12]}, "region_attributes": {}},
        {"shape_attributes": {"name": "polygon", "all_points_x": [1, 5, 9], "all_points_y": [1, 1, 1]},
         "region_attributes": {}},  # zero height
        {"shape_attributes": {"name": "point", "cx": 3, "cy": 3}, "region_attributes": {}},
    ]}}
    coco, stats = convert(doc, sizes({"x.jpg": (20, 20)}))
    (ann,) = coco["annotations"]
    assert ann["bbox"] == [0, 2, 20, 10] and ann["area"] == 200
    assert stats.skipped == {"degenerate": 1, "shape:point": 1}


def test_circle_and_ellipse_become_polygons():
    doc = {"x.jpg1": {"filename": "x.jpg", "regions": [
        {"shape_attributes": {"name": "circle", "cx": 50, "cy": 50, "r": 10}, "region_attributes": {}},
        {"shape_attributes": {"name": "ellipse", "cx": 50, "cy": 50, "rx": 20, "ry": 10},
         "region_attributes": {}},
    ]}}
    coco, _ = convert(doc, sizes({"x.jpg": (100, 100)}))
    circle, ellipse = coco["annotations"]
    assert circle["bbox"] == pytest.approx([40, 40, 20, 20], abs=0.01)
    assert len(circle["segmentation"][0]) == 64
    assert circle["area"] == pytest.approx(3.14159 * 100, rel=0.01)  # 32-gon ~ circle
    assert ellipse["bbox"] == pytest.approx([30, 40, 40, 20], abs=0.01)


def test_errors():
    with pytest.raises(ViaError, match="JSON object"):
        convert([1, 2], sizes({}))
    with pytest.raises(ViaError, match="no 'filename'"):
        convert({"a": {"regions": []}}, sizes({}))
    with pytest.raises(ViaError, match="VIA 3"):
        convert({"project": {}, "file": {}, "config": {}}, sizes({}))
    bad = {"a1": {"filename": "a", "regions": [{"shape_attributes": {"name": "polygon", "all_points_x": [1, 2],
                                                                     "all_points_y": [1]}}]}}
    with pytest.raises(ViaError, match="x and"):
        convert(bad, sizes({"a": (5, 5)}))
    two = {"a1": {"filename": "a", "regions": [{"shape_attributes": {"name": "rect", "x": 0, "y": 0, "width": 1,
                                                                     "height": 1},
                                                "region_attributes": {"k": {"p": True, "q": True}}}]}}
    with pytest.raises(ViaError, match="exactly one"):
        convert(two, sizes({"a": (5, 5)}), category_attribute="k")


def test_polygon_area_shoelace():
    assert polygon_area([(0, 0), (4, 0), (4, 3)]) == 6
    assert polygon_area([(0, 0), (0, 3), (4, 0)]) == 6  # orientation does not matter
    # concave "L": 3x3 square minus 2x2 corner
    assert polygon_area([(0, 0), (3, 0), (3, 1), (1, 1), (1, 3), (0, 3)]) == 5


def _png(w, h):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    raw = b"".join(b"\x00" + b"\x00\x00\x00" * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _jpeg_header(w, h):
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\x08" + struct.pack(">HH", h, w) + b"\x03" + b"\x01\x11\x00\x02\x11\x00\x03\x11\x00"
    return (b"\xff\xd8" + b"\xff\xe0" + struct.pack(">H", len(app0) + 2) + app0
            + b"\xff\xc0" + struct.pack(">H", len(sof0) + 2) + sof0 + b"\xff\xd9")


def test_read_image_size(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(7, 5))
    (tmp_path / "b.jpg").write_bytes(_jpeg_header(640, 427))
    (tmp_path / "c.txt").write_text("hello")
    assert coco_via.read_image_size(tmp_path / "a.png") == (7, 5)
    assert coco_via.read_image_size(tmp_path / "b.jpg") == (640, 427)
    with pytest.raises(ValueError):
        coco_via.read_image_size(tmp_path / "c.txt")


def test_output_is_json_serialisable():
    coco, _ = convert(VIA1, sizes({"a.jpg": (100, 80), "b.jpg": (50, 50)}))
    assert json.loads(json.dumps(coco)) == coco
