"""A synthetic "generic objects" detection set in VIA format: the pre-training set of the
base model (training.base_model), the stand-in for COCO that cannot be downloaded here.

Deliberately unlike the balloon-like set (data.generate): six classes of flat or shaded
polygons - block, triangle, star, cross, hexagon, arrow - in any colour, 1 to 6 per image,
from 9 % to 45 % of the image's shorter side, rotated, partly overlapping, some outlined,
on varied backgrounds (textured colour fields, stripes, checkerboards, noise, gradients).
No ellipses, no highlights, no strings: nothing in it is a balloon. Each object is
annotated with its outline polygon and its class in region_attributes["class"].

Deterministic: image i depends only on (VERSION, seed, i, size), so the same arguments give
byte-identical files. VERSION is part of the base model's cache stamp: change it whenever
the images change.

    python -m edgetune_jobs.data.generic_objects --out DIR [--images 240] [--seed 0] [--size 192]
        [--val-fraction 0.1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

from .generate import _background, write_via

VERSION = 1
CLASSES = ("block", "triangle", "star", "cross", "hexagon", "arrow")
CLASS_ATTRIBUTE = "class"


def _outline(kind: str, rng: Any) -> list[tuple[float, float]]:
    """The shape's polygon in unit coordinates (about [-1, 1]^2), not yet rotated."""
    if kind == "block":
        a = rng.uniform(0.45, 1.0)  # aspect
        return [(-1, -a), (1, -a), (1, a), (-1, a)]
    if kind == "triangle":
        apex = rng.uniform(-0.6, 0.6)
        return [(apex, -1), (1, 0.8), (-1, 0.8)]
    if kind == "star":
        inner = rng.uniform(0.38, 0.55)
        n = int(rng.integers(5, 7))
        return [((1 if i % 2 == 0 else inner) * math.sin(math.pi * i / n),
                 -(1 if i % 2 == 0 else inner) * math.cos(math.pi * i / n)) for i in range(2 * n)]
    if kind == "cross":
        t = rng.uniform(0.25, 0.4)
        return [(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t), (t, 1), (-t, 1), (-t, t), (-1, t),
                (-1, -t), (-t, -t)]
    if kind == "hexagon":
        return [(math.cos(math.pi / 3 * i), math.sin(math.pi / 3 * i)) for i in range(6)]
    if kind == "arrow":
        s, h = rng.uniform(0.2, 0.35), rng.uniform(0.55, 0.8)
        return [(-1, -s), (0.1, -s), (0.1, -h), (1, 0), (0.1, h), (0.1, s), (-1, s)]
    raise ValueError(kind)


def _canvas(rng: Any, w: int, h: int) -> Any:
    import cv2
    import numpy as np

    style = int(rng.integers(5))
    if style <= 1:  # the textured field the balloon set uses too (any camera sees such things)
        return _background(rng, w, h)
    c1, c2 = rng.uniform(30, 225, size=3), rng.uniform(30, 225, size=3)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if style == 2:  # stripes
        period, ang = rng.uniform(6, 40), rng.uniform(0, math.pi)
        m = (np.sin((xx * math.cos(ang) + yy * math.sin(ang)) * 2 * math.pi / period) > 0)[..., None]
    elif style == 3:  # checkerboard
        cell = int(rng.integers(8, 40))
        m = (((xx // cell) + (yy // cell)) % 2 == 0)[..., None]
    else:  # smooth gradient
        gx, gy = rng.uniform(-1, 1, size=2)
        m = np.clip(0.5 + (gx * (xx / w - 0.5) + gy * (yy / h - 0.5)), 0, 1)[..., None]
    img = c1 * m + c2 * (1 - m) + rng.normal(0, rng.uniform(2, 12), size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    return img


def _draw(img: Any, rng: Any, kind: str, cx: float, cy: float, r: float) -> list[tuple[int, int]]:
    """Draws one object (flat or shaded fill, sometimes an outline); returns its polygon."""
    import cv2
    import numpy as np

    h, w = img.shape[:2]
    t = rng.uniform(0, 2 * math.pi)
    ct, st = math.cos(t), math.sin(t)
    pts = np.array([[cx + r * (x * ct - y * st), cy + r * (x * st + y * ct)] for x, y in _outline(kind, rng)])
    poly = np.round(pts).astype(np.int32)
    hsv = np.uint8([[[int(rng.integers(0, 180)), int(rng.integers(60, 256)), int(rng.integers(60, 256))]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [poly], 255, cv2.LINE_AA)
    alpha = (mask.astype(np.float32) / 255.0)[..., None]
    if rng.random() < 0.5:  # linear shading across the object
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        gx, gy = rng.uniform(-1, 1, size=2)
        shade = np.clip(1 + 0.4 * (gx * (xx - cx) + gy * (yy - cy)) / max(r, 1), 0.5, 1.4)[..., None]
        body = np.clip(colour[None, None, :] * shade, 0, 255)
    else:
        body = colour[None, None, :]
    img[:] = (img * (1 - alpha) + body * alpha).astype(np.uint8)
    if rng.random() < 0.35:
        edge = tuple(float(c) for c in np.clip(colour * rng.uniform(0.2, 0.6), 0, 255))
        cv2.polylines(img, [poly], True, edge, int(rng.integers(1, 3)), cv2.LINE_AA)
    poly[:, 0] = np.clip(poly[:, 0], 0, w - 1)
    poly[:, 1] = np.clip(poly[:, 1], 0, h - 1)
    return [(int(x), int(y)) for x, y in poly]


def render(seed: int, index: int, size: int = 192, classes: Sequence[str] = CLASSES
           ) -> tuple[Any, list[tuple[str, list[tuple[int, int]]]]]:
    """Image `index` of the set `seed`: (BGR uint8 image, [(class, polygon), ...])."""
    import numpy as np

    rng = np.random.default_rng([VERSION, int(seed), int(index), int(size), 0x6E4E])
    aspect = [(4, 3), (3, 4), (1, 1), (16, 9)][int(rng.integers(4))]
    aw, ah = aspect
    w, h = (size, size * ah // aw) if aw >= ah else (size * aw // ah, size)
    img = _canvas(rng, w, h)
    placed: list[tuple[float, float, float]] = []
    objects = []
    for _ in range(int(rng.integers(1, 7))):
        for _attempt in range(20):
            r = rng.uniform(0.045, 0.225) * min(w, h)  # half-size: objects 9-45 % of the shorter side
            cx, cy = rng.uniform(r * 0.6, w - r * 0.6), rng.uniform(r * 0.6, h - r * 0.6)
            # overlap allowed, but each object stays mostly visible
            if all(math.hypot(cx - px, cy - py) > 0.75 * (r + pr) for px, py, pr in placed):
                break
        else:
            continue
        kind = classes[int(rng.integers(len(classes)))]
        objects.append((kind, _draw(img, rng, kind, cx, cy, r)))
        placed.append((cx, cy, r))
    if rng.random() < 0.25:  # some camera noise over everything
        img[:] = np.clip(img + rng.normal(0, rng.uniform(3, 10), size=img.shape), 0, 255).astype(np.uint8)
    return img, objects


def generate(out: str | os.PathLike[str], images: int = 240, seed: int = 0, size: int = 192,
             val_fraction: float = 0.1) -> dict[str, Any]:
    """Writes the set (DIR/train + DIR/val, VIA 2 with region_attributes["class"]); returns
    the summary of data.generate.write_via plus the classes."""
    summary = write_via(out, images, val_fraction, lambda i: render(seed, i, size),
                        name=lambda i: f"objects_{seed}_{i:05d}.jpg", multi_class=True,
                        class_attribute=CLASS_ATTRIBUTE)
    summary["classes"] = list(CLASSES)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgetune_jobs.data.generic_objects",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=192, help="longest image side in pixels")
    p.add_argument("--val-fraction", type=float, default=0.1)
    a = p.parse_args(argv)
    try:
        summary = generate(a.out, a.images, a.seed, a.size, a.val_fraction)
    except (ValueError, OSError) as exc:
        print(f"generic_objects: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
