"""VIA (VGG Image Annotator) -> COCO conversion. Standard library only.

Accepted VIA forms:

- VIA 1.x export: ``{"<file><size>": {"filename", "size", "regions": {"0": region, ...}}}``
- VIA 2.x export: the same, with ``regions`` a list
- VIA 2.x project (``via_project.json``): the above under ``_via_img_metadata``

A region is ``{"shape_attributes": {...}, "region_attributes": {...}}``; shapes:

- ``polygon`` / ``polyline``: ``all_points_x`` / ``all_points_y``
- ``rect``: ``x, y, width, height``
- ``circle`` (``cx, cy, r``) and ``ellipse`` (``cx, cy, rx, ry[, theta]``) become 32-point polygons
- ``point`` and anything else are skipped (counted in the stats)

COCO fields, per region:

- ``segmentation``: ``[[x0, y0, x1, y1, ...]]``, the points as drawn, clipped to the image
  (no +0.5 pixel-centre shift: VIA stores the clicked coordinates in pixel units);
- ``bbox``: ``[x_min, y_min, x_max - x_min, y_max - y_min]`` from the (clipped) points'
  extents, as COCO and mmdet's balloon tutorial do;
- ``area``: the polygon's own area (shoelace formula). COCO defines ``area`` as the area of
  the segmentation mask for non-crowd objects, and COCOeval uses it for the S/M/L
  ranges; the bbox area (used by mmdet's balloon tutorial) overstates a balloon by ~27 %
  (an ellipse fills pi/4 of its box) and shifts objects between size ranges;
- ``category_id``: one class for everything (``class_name``), or the value of a region
  attribute (``category_attribute``): a string, or a VIA checkbox/dropdown dict
  ``{"balloon": true}`` with exactly one true key.

Degenerate regions (fewer than 3 distinct points, zero width or height) are skipped and
counted.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence


class ViaError(ValueError):
    """The input is not a usable VIA annotation file."""


@dataclass
class ConversionStats:
    images: int = 0
    annotations: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.skipped[why] = self.skipped.get(why, 0) + 1


# --- reading VIA ------------------------------------------------------------------------------

def via_entries(doc: Any) -> list[dict[str, Any]]:
    """The per-image records of a VIA 1.x/2.x export or a VIA 2.x project, in file order."""
    if not isinstance(doc, dict):
        raise ViaError(f"VIA annotations must be a JSON object, got {type(doc).__name__}")
    if "_via_img_metadata" in doc:
        meta = doc["_via_img_metadata"]
        if not isinstance(meta, dict):
            raise ViaError("_via_img_metadata must be an object")
        order = doc.get("_via_image_id_list")
        if isinstance(order, list) and set(order) == set(meta):
            return [meta[k] for k in order]
        return list(meta.values())
    if "_via_settings" in doc or "_via_data_format_version" in doc or "project" in doc and "file" in doc:
        raise ViaError("VIA 3.x projects are not supported: export annotations as VIA 2.x JSON")
    entries = []
    for key, value in doc.items():
        if not isinstance(value, dict) or "filename" not in value:
            raise ViaError(f"entry {key!r} is not a VIA image record (no 'filename')")
        entries.append(value)
    return entries


def _regions(entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    regions = entry.get("regions", [])
    if regions is None:
        return []
    if isinstance(regions, dict):  # VIA 1.x: {"0": {...}, "1": {...}}
        def order(k: str) -> tuple[int, Any]:
            return (0, int(k)) if str(k).isdigit() else (1, str(k))
        return [regions[k] for k in sorted(regions, key=order)]
    if isinstance(regions, list):  # VIA 2.x
        return list(regions)
    raise ViaError(f"{entry.get('filename')!r}: 'regions' must be a list or an object")


def _ellipse_points(cx: float, cy: float, rx: float, ry: float, theta: float = 0.0,
                    n: int = 32) -> list[tuple[float, float]]:
    ct, st = math.cos(theta), math.sin(theta)
    pts = []
    for i in range(n):
        a = 2 * math.pi * i / n
        x, y = rx * math.cos(a), ry * math.sin(a)
        pts.append((cx + x * ct - y * st, cy + x * st + y * ct))
    return pts


def shape_points(shape: Mapping[str, Any]) -> list[tuple[float, float]] | None:
    """The outline of a VIA shape as (x, y) points, or None for unsupported shapes."""
    name = shape.get("name")
    try:
        if name in ("polygon", "polyline"):
            xs, ys = shape["all_points_x"], shape["all_points_y"]
            if len(xs) != len(ys):
                raise ViaError(f"polygon has {len(xs)} x and {len(ys)} y coordinates")
            return [(float(x), float(y)) for x, y in zip(xs, ys)]
        if name == "rect":
            x, y, w, h = (float(shape[k]) for k in ("x", "y", "width", "height"))
            return [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        if name == "circle":
            r = float(shape["r"])
            return _ellipse_points(float(shape["cx"]), float(shape["cy"]), r, r)
        if name == "ellipse":
            return _ellipse_points(float(shape["cx"]), float(shape["cy"]), float(shape["rx"]),
                                   float(shape["ry"]), float(shape.get("theta", 0.0)))
    except (KeyError, TypeError) as exc:
        raise ViaError(f"{name} shape is missing or has a bad field: {exc}") from None
    return None


def polygon_area(points: Sequence[tuple[float, float]]) -> float:
    """Shoelace formula: the area enclosed by a simple polygon."""
    n = len(points)
    s = 0.0
    for i in range(n):
        x0, y0 = points[i]
        x1, y1 = points[(i + 1) % n]
        s += x0 * y1 - x1 * y0
    return abs(s) / 2.0


def _clip(points: Iterable[tuple[float, float]], width: float | None,
          height: float | None) -> list[tuple[float, float]]:
    out = []
    for x, y in points:
        if width is not None:
            x = min(max(x, 0.0), float(width))
        if height is not None:
            y = min(max(y, 0.0), float(height))
        out.append((x, y))
    return out


def _num(v: float) -> float | int:
    """Integers stay integers in the JSON (VIA points usually are)."""
    return int(v) if float(v).is_integer() else round(float(v), 3)


def region_category(region: Mapping[str, Any], attribute: str | None, class_name: str | None,
                    filename: str) -> str | None:
    """The class name of a region, or None when the region has no value for the attribute."""
    if not attribute:
        return class_name
    attrs = region.get("region_attributes") or {}
    value = attrs.get(attribute)
    if value is None or value == "":
        return class_name  # fallback (None: skipped)
    if isinstance(value, dict):  # checkbox: {"balloon": true, "kite": false}
        chosen = [k for k, v in value.items() if v]
        if len(chosen) != 1:
            raise ViaError(f"{filename}: region attribute {attribute!r} must select exactly one "
                           f"class, got {chosen}")
        return str(chosen[0])
    return str(value).strip()


def convert(
    doc: Any,
    image_size: Callable[[str], tuple[int, int]],
    *,
    class_name: str | None = "balloon",
    category_attribute: str | None = None,
    categories: Sequence[str] | None = None,
    file_prefix: str = "",
    only: Iterable[str] | None = None,
) -> tuple[dict[str, Any], ConversionStats]:
    """Convert a parsed VIA document to a COCO dict.

    image_size(filename) -> (width, height). categories fixes the class list and order
    (ids 1..K); otherwise the classes found are sorted by name (single class: [class_name]).
    file_prefix is prepended to each COCO file_name (e.g. "train/"). only restricts the
    conversion to those filenames (a split of a single folder).
    """
    if not category_attribute and not class_name:
        raise ViaError("give a class name or a category attribute")
    entries = via_entries(doc)
    keep = set(only) if only is not None else None
    stats = ConversionStats()
    images: list[dict[str, Any]] = []
    pending: list[tuple[int, str, list[tuple[float, float]]]] = []
    found: list[str] = []
    seen_files: set[str] = set()
    for entry in entries:
        filename = str(entry["filename"])
        if keep is not None and filename not in keep:
            continue
        if filename in seen_files:
            raise ViaError(f"image {filename!r} appears twice in the annotations")
        seen_files.add(filename)
        width, height = image_size(filename)
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": file_prefix + filename,
                       "width": int(width), "height": int(height)})
        for region in _regions(entry):
            if not isinstance(region, dict):
                raise ViaError(f"{filename}: a region is not an object")
            pts = shape_points(region.get("shape_attributes") or {})
            if pts is None:
                stats.skip(f"shape:{(region.get('shape_attributes') or {}).get('name')}")
                continue
            cat = region_category(region, category_attribute, class_name if not category_attribute else None,
                                  filename)
            if cat is None:
                stats.skip("no-category")
                continue
            pts = _clip(pts, width, height)
            if len(set(pts)) < 3:
                stats.skip("degenerate")
                continue
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            if max(xs) - min(xs) <= 0 or max(ys) - min(ys) <= 0 or polygon_area(pts) <= 0:
                stats.skip("degenerate")
                continue
            if cat not in found:
                found.append(cat)
            pending.append((image_id, cat, pts))
    if categories is None:
        classes = sorted(found) if category_attribute else [class_name]
    else:
        classes = list(categories)
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ViaError(f"classes {unknown} are not among the known classes {classes}")
    cat_id = {name: i + 1 for i, name in enumerate(classes)}
    annotations = []
    for image_id, cat, pts in pending:
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        x0, y0 = min(xs), min(ys)
        annotations.append({
            "id": len(annotations) + 1,
            "image_id": image_id,
            "category_id": cat_id[cat],
            "bbox": [_num(x0), _num(y0), _num(max(xs) - x0), _num(max(ys) - y0)],
            "area": _num(polygon_area(pts)),
            "segmentation": [[_num(v) for p in pts for v in p]],
            "iscrowd": 0,
        })
    stats.images = len(images)
    stats.annotations = len(annotations)
    coco = {
        "info": {"description": "converted from VIA by edgetune"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_id[n], "name": n, "supercategory": n} for n in classes],
    }
    return coco, stats


def via_filenames(doc: Any) -> list[str]:
    return [str(e["filename"]) for e in via_entries(doc)]


# --- image sizes without an imaging library ---------------------------------------------------

def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) from a PNG, JPEG, GIF or BMP header. Raises ValueError otherwise.

    EXIF orientation is not applied; data.py prefers OpenCV (what mmdet's loader uses)
    when it is importable.
    """
    with open(path, "rb") as fh:
        head = fh.read(32)
        if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
            return int(w), int(h)
        if head[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", head[6:10])
            return int(w), int(h)
        if head[:2] == b"BM":
            w, h = struct.unpack("<ii", head[18:26])
            return int(w), abs(int(h))
        if head[:2] == b"\xff\xd8":
            fh.seek(2)
            while True:
                byte = fh.read(1)
                while byte and byte != b"\xff":
                    byte = fh.read(1)
                while byte == b"\xff":
                    byte = fh.read(1)
                if not byte:
                    break
                marker = byte[0]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                    continue
                seg_len = struct.unpack(">H", fh.read(2))[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    data = fh.read(5)
                    h, w = struct.unpack(">HH", data[1:5])
                    return int(w), int(h)
                fh.seek(seg_len - 2, os.SEEK_CUR)
    raise ValueError(f"{path}: not a PNG/JPEG/GIF/BMP image or no size in its header")
