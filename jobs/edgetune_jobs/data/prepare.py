"""Fetch a detection dataset and write the prepared layout of docs/contract.md.

    <out>/annotations/train.json   COCO
    <out>/annotations/val.json     COCO
    <out>/images/train/...         file_name in the JSON is relative to images/
    <out>/images/val/...
    <out>/dataset.json             summary (source, format, sizes, classes)

Sources: "url" (a .zip / .tar[.gz] downloaded with urllib), "path" (a folder or an
archive; "pvc://CLAIM/PATH" is PATH under $EDGETUNE_PVC_MOUNT, default /artifacts, where
the operator mounts the claim), "generate" (data.generate); fetching is data.fetch.

Formats: "via" (VIA 1.x / 2.x exports and VIA 2.x projects, see coco_via) and "coco".
Splits: a train/ and a val/ annotation file (the balloon zip: balloon/train/via_region_data.json
and balloon/val/via_region_data.json), or one file split deterministically by
--val-fraction and --split-seed.

    python -m edgetune_jobs.data --out DIR --dataset-source url|path|generate
        [--dataset-url URL] [--dataset-path PATH] [--dataset-format via|coco] [--val-fraction 0.2]
        [--class-name balloon] [--category-attribute NAME] [--work-dir DIR]   (data/__main__.py)
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

from . import coco_via
from .fetch import DataError, fetch, invalid, not_found

BALLOON_URL = "https://github.com/matterport/Mask_RCNN/releases/download/v2.1/balloon_dataset.zip"
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test"}
_IGNORED_DIRS = {"__MACOSX", ".git"}


# --- locating annotation files -------------------------------------------------------------------

def _json_files(root: Path, max_depth: int = 4) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_DIRS and not d.startswith("."))
        if len(rel.parts) >= max_depth:
            dirnames[:] = []
        for f in sorted(filenames):
            if f.lower().endswith(".json") and not f.startswith("."):
                out.append(Path(dirpath) / f)
    return out


def _split_of(path: Path, root: Path) -> str | None:
    parts = [p.lower() for p in path.relative_to(root).parts]
    stem = Path(parts[-1]).stem
    for token in [stem, *reversed(parts[:-1])]:
        for piece in token.replace("-", "_").split("_"):
            if piece in SPLIT_NAMES:
                return SPLIT_NAMES[piece]
    return None


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(f"{path.name}: not readable JSON: {exc}") from None


def _looks_like(doc: Any, fmt: str) -> bool:
    if not isinstance(doc, dict):
        return False
    if fmt == "coco":
        return isinstance(doc.get("images"), list) and "annotations" in doc
    try:
        return bool(coco_via.via_entries(doc))
    except coco_via.ViaError:
        return False


def find_annotation_files(root: Path, fmt: str) -> dict[str, Path]:
    """{"train": p, "val": p} or {"all": p}."""
    if root.is_file():
        return {"all": root}
    candidates = []
    for p in _json_files(root):
        doc = _load_json(p) if p.stat().st_size < 512 << 20 else None
        if _looks_like(doc, fmt):
            candidates.append(p)
    if not candidates:
        raise invalid(f"no {fmt.upper()} annotation file found under {root}")
    by_split: dict[str, list[Path]] = {}
    for p in candidates:
        by_split.setdefault(_split_of(p, root) or "all", []).append(p)
    if "train" in by_split and "val" in by_split:
        if len(by_split["train"]) > 1 or len(by_split["val"]) > 1:
            raise invalid(f"several {fmt.upper()} files per split under {root}: "
                           f"{[str(p.relative_to(root)) for p in candidates]}")
        return {"train": by_split["train"][0], "val": by_split["val"][0]}
    if len(candidates) == 1:
        return {"all": candidates[0]}
    if "train" in by_split and len(by_split["train"]) == 1 and "val" not in by_split:
        return {"all": by_split["train"][0]}
    raise invalid(f"cannot tell the train and val annotation files apart under {root}: "
                   f"{[str(p.relative_to(root)) for p in candidates]}")


# --- image sizes ----------------------------------------------------------------------------------

def _size_reader() -> Callable[[Path], tuple[int, int]]:
    """OpenCV when importable (the same decoder, EXIF orientation included, that mmdet's
    LoadImageFromFile uses), else the header reader of coco_via."""
    try:
        import cv2
    except ImportError:
        return coco_via.read_image_size

    def read(path: Path) -> tuple[int, int]:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: OpenCV cannot read this image")
        return int(img.shape[1]), int(img.shape[0])

    return read


def _find_image(name: str, bases: Sequence[Path]) -> Path | None:
    for base in bases:
        p = base / name
        if p.is_file():
            return p
    return None


def split_names(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic split: sorted names shuffled by random.Random(seed); ceil(n*f) to val
    (at least 1, at most n-1)."""
    if not 0 < val_fraction < 1:
        raise DataError("InvalidInput", f"--val-fraction must be in (0, 1) to split one annotation set, got {val_fraction}")
    names = sorted(names)
    if len(names) < 2:
        raise invalid(f"cannot split {len(names)} image(s) into train and val")
    order = names[:]
    random.Random(seed).shuffle(order)
    n_val = min(len(names) - 1, max(1, math.ceil(len(names) * val_fraction)))
    val = set(order[:n_val])
    return [n for n in names if n not in val], [n for n in names if n in val]


# --- preparing ------------------------------------------------------------------------------------

def _copy_images(coco: dict[str, Any], sources: dict[int, Path], images_dir: Path, split: str) -> None:
    for img in coco["images"]:
        src = sources[img["id"]]
        rel = Path(split) / img["file_name"]
        dst = images_dir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
        img["file_name"] = rel.as_posix()


def _prepare_via(files: dict[str, Path], out: Path, *, val_fraction: float, seed: int,
                 class_name: str | None, category_attribute: str | None) -> dict[str, Any]:
    size_of = _size_reader()
    plans: list[tuple[str, Path, Any, list[str] | None]] = []
    if "all" in files:
        doc = _load_json(files["all"])
        names = coco_via.via_filenames(doc)
        train, val = split_names(names, val_fraction, seed)
        plans = [("train", files["all"], doc, train), ("val", files["all"], doc, val)]
    else:
        plans = [(s, files[s], _load_json(files[s]), None) for s in ("train", "val")]
    result: dict[str, Any] = {"skipped": {}}
    categories = None
    if category_attribute:  # one class list for both splits
        found: set[str] = set()
        for _, _, doc, only in plans:
            for entry in coco_via.via_entries(doc):
                if only is not None and entry["filename"] not in only:
                    continue
                for region in coco_via._regions(entry):
                    c = coco_via.region_category(region, category_attribute, None, entry["filename"])
                    if c:
                        found.add(c)
        categories = sorted(found)
    for split, path, doc, only in plans:
        base = path.parent
        bases = [base, base / "images", base.parent / "images" / split]
        located: dict[str, Path] = {}

        def size(filename: str, bases=bases, located=located, path=path) -> tuple[int, int]:
            p = _find_image(filename, bases)
            if p is None:
                raise invalid(f"{path.name}: image {filename!r} not found next to the annotations")
            located[filename] = p
            try:
                return size_of(p)
            except ValueError as exc:
                raise invalid(str(exc)) from None

        try:
            coco, stats = coco_via.convert(doc, size, class_name=class_name,
                                           category_attribute=category_attribute,
                                           categories=categories, only=only)
        except coco_via.ViaError as exc:
            raise invalid(f"{path.name}: {exc}") from None
        categories = [c["name"] for c in coco["categories"]]
        sources = {img["id"]: located[img["file_name"]] for img in coco["images"]}
        _write_split(coco, sources, out, split)
        for k, v in stats.skipped.items():
            result["skipped"][k] = result["skipped"].get(k, 0) + v
    return result


def _check_coco(coco: Any, name: str) -> None:
    if not isinstance(coco, dict):
        raise invalid(f"{name}: not a COCO object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise invalid(f"{name}: missing the {key!r} list")
    if not coco["categories"]:
        raise invalid(f"{name}: no categories")
    cat_ids = [c.get("id") for c in coco["categories"]]
    if len(set(cat_ids)) != len(cat_ids) or not all(isinstance(i, int) for i in cat_ids):
        raise invalid(f"{name}: category ids must be unique integers")
    img_ids = [i.get("id") for i in coco["images"]]
    if len(set(img_ids)) != len(img_ids):
        raise invalid(f"{name}: image ids are not unique")
    for img in coco["images"]:
        if not img.get("file_name"):
            raise invalid(f"{name}: image {img.get('id')} has no file_name")
    known_imgs, known_cats = set(img_ids), set(cat_ids)
    for ann in coco["annotations"]:
        if ann.get("image_id") not in known_imgs:
            raise invalid(f"{name}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in known_cats:
            raise invalid(f"{name}: annotation {ann.get('id')} has unknown category {ann.get('category_id')}")
        bbox = ann.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)):
            raise invalid(f"{name}: annotation {ann.get('id')} has a bad bbox {bbox!r}")


def _prepare_coco(files: dict[str, Path], out: Path, *, val_fraction: float, seed: int) -> dict[str, Any]:
    size_of = _size_reader()
    plans = []
    if "all" in files:
        coco = _load_json(files["all"])
        _check_coco(coco, files["all"].name)
        train, val = split_names([str(i["file_name"]) for i in coco["images"]], val_fraction, seed)
        for split, names in (("train", set(train)), ("val", set(val))):
            imgs = [i for i in coco["images"] if i["file_name"] in names]
            ids = {i["id"] for i in imgs}
            plans.append((split, files["all"], {**coco, "images": imgs,
                                                "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}))
    else:
        for split in ("train", "val"):
            coco = _load_json(files[split])
            _check_coco(coco, files[split].name)
            plans.append((split, files[split], coco))
    names0 = None
    for split, path, coco in plans:
        names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
        if names0 is None:
            names0 = names
        elif names != names0:
            raise invalid(f"train and val categories differ: {names0} vs {names}")
        base = path.parent
        bases = [base, base / "images", base / "images" / split, base / split,
                 base.parent / "images", base.parent / "images" / split, base.parent / split, base.parent]
        sources = {}
        images = []
        for img in coco["images"]:
            p = _find_image(str(img["file_name"]), bases)
            if p is None:
                raise invalid(f"{path.name}: image {img['file_name']!r} not found")
            img = dict(img)
            if not img.get("width") or not img.get("height"):
                img["width"], img["height"] = size_of(p)
            sources[img["id"]] = p
            images.append(img)
        anns = []
        for k, a in enumerate(coco["annotations"]):
            a = dict(a)
            a.setdefault("id", k + 1)
            a.setdefault("iscrowd", 0)
            a.setdefault("area", float(a["bbox"][2]) * float(a["bbox"][3]))
            anns.append(a)
        out_coco = {"info": coco.get("info", {}), "images": images, "annotations": anns,
                    "categories": sorted(coco["categories"], key=lambda c: c["id"])}
        _write_split(out_coco, sources, out, split)
    return {"skipped": {}}


def _write_split(coco: dict[str, Any], sources: dict[int, Path], out: Path, split: str) -> None:
    if not coco["images"]:
        raise invalid(f"the {split} set has no images")
    if not coco["annotations"]:
        raise invalid(f"the {split} set has no annotations")
    _copy_images(coco, sources, out / "images", split)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    with open(out / "annotations" / f"{split}.json", "w", encoding="utf-8") as fh:
        json.dump(coco, fh)


def prepare(root: str | os.PathLike[str], out: str | os.PathLike[str], *, fmt: str = "via",
            val_fraction: float = 0.2, seed: int = 0, class_name: str | None = "balloon",
            category_attribute: str | None = None, source: str = "path") -> dict[str, Any]:
    """Convert/validate the dataset under root into the prepared layout at out.
    Returns the summary (also written to out/dataset.json)."""
    root, out = Path(root), Path(out)
    if fmt not in ("via", "coco"):
        raise DataError("InvalidInput", f"unknown dataset format {fmt!r} (via, coco)")
    if not root.exists():
        raise not_found(f"dataset path {root} does not exist")
    files = find_annotation_files(root, fmt)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if fmt == "via":
        extra = _prepare_via(files, out, val_fraction=val_fraction, seed=seed, class_name=class_name,
                             category_attribute=category_attribute)
    else:
        extra = _prepare_coco(files, out, val_fraction=val_fraction, seed=seed)
    train = _load_json(out / "annotations" / "train.json")
    val = _load_json(out / "annotations" / "val.json")
    summary = {
        "source": source,
        "format": fmt,
        "train_images": len(train["images"]),
        "val_images": len(val["images"]),
        "train_annotations": len(train["annotations"]),
        "val_annotations": len(val["annotations"]),
        "classes": [c["name"] for c in sorted(train["categories"], key=lambda c: c["id"])],
        "split": "folders" if "all" not in files else f"val_fraction={val_fraction},seed={seed}",
        "annotation_files": {k: str(v.relative_to(root)) if root.is_dir() else v.name for k, v in files.items()},
    }
    if extra.get("skipped"):
        summary["skipped_regions"] = extra["skipped"]
    (out / "dataset.json").write_text(json.dumps(summary, indent=2))
    return summary


def fetch_and_prepare(out: str | os.PathLike[str], *, source: str, url: str | None = None,
                      path: str | None = None, fmt: str = "via", val_fraction: float = 0.2,
                      seed: int = 0, class_name: str | None = "balloon",
                      category_attribute: str | None = None, work_dir: str | os.PathLike[str] | None = None,
                      generate_images: int = 24, generate_seed: int = 0, generate_size: int = 320,
                      ) -> dict[str, Any]:
    out = Path(out)
    cleanup = work_dir is None
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="edgetune-data-"))
    try:
        root = fetch(source, url=url, path=path, work_dir=work, generate_images=generate_images,
                     generate_seed=generate_seed, generate_size=generate_size)
        return prepare(root, out, fmt="via" if source == "generate" else fmt, val_fraction=val_fraction,
                       seed=seed, class_name=class_name, category_attribute=category_attribute,
                       source=source)
    finally:
        if cleanup:
            shutil.rmtree(work, ignore_errors=True)
