"""A synthetic, balloon-like detection dataset in VIA format.

Deterministic: image i depends only on (seed, i, size, classes), so the same arguments
give byte-identical files, and a larger set starts with the images of a smaller one.
Each image is a textured background (smooth colour blobs, grain, clutter strokes) with
1-3 shaded balloons (rotated ellipses with a specular highlight, a knot and a string);
each balloon is annotated with its outline polygon, like the balloon set's VIA files.
A detector learns it quickly, which is what the tests and benchmarks need.

    python -m edgetune_jobs.data.generate --out DIR [--images 24] [--seed 0] [--size 320]
        [--val-fraction 0.2] [--via-version 2] [--classes balloon]

writes DIR/train/ and DIR/val/ (each: images + via_region_data.json) like the balloon
zip, or DIR/ alone with --val-fraction 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

VIA_FILE = "via_region_data.json"

# hue (OpenCV 0-179) ranges: one per class when several classes are generated
_HUES = [(0, 8), (20, 30), (100, 120), (55, 75), (140, 165), (85, 95)]
_ASPECTS = [(4, 3), (3, 4), (1, 1)]


def _background(rng: Any, w: int, h: int) -> Any:
    import cv2
    import numpy as np

    base = rng.uniform(40, 215, size=3)
    blobs = rng.uniform(-60, 60, size=(max(2, h // 40), max(2, w // 40), 3))
    blobs = cv2.resize(blobs.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-40, 40, size=2)
    grad = (gx * xx / w + gy * yy / h)[..., None]
    img = base[None, None, :] + blobs + grad + rng.normal(0, 7, size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    # clutter: muted strokes and boxes (not annotated)
    for _ in range(int(rng.integers(3, 9))):
        colour = tuple(int(c) for c in np.clip(base + rng.uniform(-70, 70, 3), 0, 255))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.line(img, p1, p2, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            cv2.rectangle(img, p1, p2, colour, -1 if rng.random() < 0.3 else 2)
    return img


def _balloon(img: Any, rng: Any, cx: int, cy: int, rx: int, ry: int, angle: float,
             hue: tuple[int, int]) -> list[tuple[int, int]]:
    """Draws one balloon; returns its outline polygon."""
    import cv2
    import numpy as np

    h, w = img.shape[:2]
    hsv = np.uint8([[[int(rng.integers(hue[0], hue[1] + 1)), int(rng.integers(170, 256)),
                      int(rng.integers(150, 246))]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    # string and knot first (the balloon covers their top)
    t = np.deg2rad(angle)
    bx, by = cx - ry * np.sin(-t), cy + ry * np.cos(-t)
    sx = bx + rng.uniform(-0.4, 0.4) * rx
    cv2.line(img, (int(bx), int(by)), (int(sx), int(min(h - 1, by + rng.uniform(1.0, 2.0) * ry))),
             (70, 70, 70), 1, cv2.LINE_AA)
    knot = np.array([[bx - 3, by + 5], [bx + 3, by + 5], [bx, by - 2]], np.int32)
    cv2.fillPoly(img, [knot], tuple(float(c) * 0.7 for c in colour))
    # shaded body: brighter towards the highlight, darker at the rim
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (cx, cy), (rx, ry), angle, 0, 360, 255, -1, cv2.LINE_AA)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    hx, hy = cx - 0.35 * rx, cy - 0.4 * ry
    dist = np.sqrt(((xx - hx) / (1.6 * rx)) ** 2 + ((yy - hy) / (1.6 * ry)) ** 2)
    shade = np.clip(1.15 - 0.75 * dist, 0.35, 1.15)[..., None]
    body = np.clip(colour[None, None, :] * shade, 0, 255)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    img[:] = (img * (1 - alpha) + body * alpha).astype(np.uint8)
    # specular highlight
    hl = np.zeros((h, w), np.float32)
    cv2.ellipse(hl, (int(hx), int(hy)), (max(1, rx // 6), max(1, ry // 4)), angle - 30, 0, 360, 1.0, -1)
    hl = cv2.GaussianBlur(hl, (0, 0), max(1.0, rx / 12))[..., None] * 0.8
    img[:] = (img * (1 - hl) + 255 * hl).astype(np.uint8)
    pts = cv2.ellipse2Poly((cx, cy), (rx, ry), int(round(angle)), 0, 360, 15)
    return [(int(x), int(y)) for x, y in pts[:-1]]  # ellipse2Poly repeats the first point


def render(seed: int, index: int, size: int = 320, classes: Sequence[str] = ("balloon",)
           ) -> tuple[Any, list[tuple[str, list[tuple[int, int]]]]]:
    """Image `index` of the set `seed`: (BGR uint8 image, [(class, polygon), ...])."""
    import numpy as np

    rng = np.random.default_rng([int(seed), int(index), int(size)])
    aw, ah = _ASPECTS[int(rng.integers(len(_ASPECTS)))]
    w, h = (size, size * ah // aw) if aw >= ah else (size * aw // ah, size)
    img = _background(rng, w, h)
    placed: list[tuple[int, int, int, int]] = []
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(20):
            rx = int(rng.uniform(0.07, 0.17) * min(w, h))
            ry = int(rx * rng.uniform(1.1, 1.35))
            m = ry + 2
            if 2 * m >= min(w, h):
                continue
            cx, cy = int(rng.integers(m, w - m)), int(rng.integers(m, h - m))
            if all((cx - px) ** 2 + (cy - py) ** 2 > (0.9 * (ry + pr)) ** 2 for px, py, pr, _ in placed):
                break
        else:
            continue
        k = int(rng.integers(len(classes)))
        angle = float(rng.uniform(-20, 20))
        hue = _HUES[k % len(_HUES)] if len(classes) > 1 else (0, 179)  # one class: any colour
        poly = _balloon(img, rng, cx, cy, rx, ry, angle, hue)
        placed.append((cx, cy, ry, k))
        objects.append((classes[k], poly))
    return img, objects


def generate(out: str | os.PathLike[str], images: int = 24, seed: int = 0, size: int = 320,
             val_fraction: float = 0.2, via_version: int = 2,
             classes: Sequence[str] = ("balloon",), class_attribute: str = "class") -> dict[str, Any]:
    """Writes the set; returns {"train": n, "val": n, "objects": n, "dirs": {...}}.

    Multi-class sets name each region's class in region_attributes[class_attribute];
    a single-class set leaves region_attributes empty, like the balloon set.
    """
    return write_via(out, images, val_fraction, lambda i: render(seed, i, size, classes),
                     name=lambda i: f"balloon_{seed}_{i:04d}.jpg", via_version=via_version,
                     multi_class=len(classes) > 1, class_attribute=class_attribute)


def write_via(out: str | os.PathLike[str], images: int, val_fraction: float,
              render_image: Callable[[int], tuple[Any, list[tuple[str, list[tuple[int, int]]]]]], *,
              name: Callable[[int], str], via_version: int = 2, multi_class: bool = False,
              class_attribute: str = "class") -> dict[str, Any]:
    """Renders images 0..images-1 with render_image(i) -> (BGR image, [(class, polygon)]) and
    writes them as a VIA set: out/train + out/val (the last images are val), or out/ alone
    with val_fraction 0."""
    import cv2

    if images < 1:
        raise ValueError("images must be >= 1")
    if not 0 <= val_fraction < 1:
        raise ValueError("val_fraction must be in [0, 1)")
    if via_version not in (1, 2):
        raise ValueError("via_version must be 1 or 2")
    n_val = 0 if val_fraction == 0 else min(images - 1, max(1, round(images * val_fraction)))
    if val_fraction > 0 and n_val < 1:
        raise ValueError("need at least 2 images for a train/val split")
    out = Path(out)
    splits = {"train": range(0, images - n_val), "val": range(images - n_val, images)} if n_val else {"": range(images)}
    objects = 0
    dirs = {}
    for split, idx in splits.items():
        folder = out / split if split else out
        folder.mkdir(parents=True, exist_ok=True)
        via: dict[str, Any] = {}
        for i in idx:
            img, objs = render_image(i)
            fname = name(i)
            path = folder / fname
            ok = cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            if not ok:
                raise OSError(f"could not write {path}")
            regions = []
            for cls, poly in objs:
                regions.append({
                    "shape_attributes": {"name": "polygon",
                                         "all_points_x": [p[0] for p in poly],
                                         "all_points_y": [p[1] for p in poly]},
                    "region_attributes": {class_attribute: cls} if multi_class else {},
                })
            objects += len(regions)
            fsize = path.stat().st_size
            via[f"{fname}{fsize}"] = {
                "fileref": "", "size": fsize, "filename": fname, "base64_img_data": "",
                "file_attributes": {},
                "regions": regions if via_version == 2 else {str(j): r for j, r in enumerate(regions)},
            }
        (folder / VIA_FILE).write_text(json.dumps(via, indent=None, separators=(",", ":")))
        dirs[split or "all"] = str(folder)
    return {"train": images - n_val, "val": n_val, "objects": objects, "dirs": dirs}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgetune_jobs.data.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=320, help="longest image side in pixels")
    p.add_argument("--val-fraction", type=float, default=0.2, help="0: one folder, no split")
    p.add_argument("--via-version", type=int, choices=(1, 2), default=2)
    p.add_argument("--classes", default="balloon", help="comma-separated class names")
    a = p.parse_args(argv)
    try:
        summary = generate(a.out, a.images, a.seed, a.size, a.val_fraction, a.via_version,
                           [c.strip() for c in a.classes.split(",") if c.strip()])
    except (ValueError, OSError) as exc:
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
