"""The base model of the demo and the tests: RTMDet-tiny pre-trained here, once per machine,
on the generated "generic objects" set (data.generic_objects) - the stand-in for the
COCO-pretrained checkpoint that real fine-tuning starts from and that cannot be downloaded
on these machines. It is what it says, and its sidecar says so: not COCO, not ImageNet.

Built by the finetune step itself (random init, `python -m edgetune_jobs.steps.finetune`
in a subprocess, RECIPE below) and cached in $EDGETUNE_CACHE/models/ (default
~/.cache/edgetune) under a version stamp: a hash of the recipe, the generator's VERSION (a
unit test pins its output to it), the mmdet config, and the package versions (torch, mmcv, mmdet, mmengine, numpy,
opencv). Same stamp: reused in a second; other stamp: rebuilt (several minutes on 2 cores),
and the folders of other stamps are removed. A lock makes concurrent callers (the demo and
a test run) build it once.

    <cache>/models/rtmdet-tiny-generic-<stamp>/
        rtmdet_tiny_generic.pth                  meta + state_dict (EMA weights), like best.pth
        rtmdet_tiny_generic.provenance.json      what it is (SIDECAR_KIND): recipe, generator,
                                                 its own val mAP, versions, sha256, build time
        pretrain.log                             the finetune step's output

The finetune step reads the sidecar next to a checkpoint path (provenance_of) into its
result's provenance.base_model - checked against the checkpoint's sha256.

    python -m edgetune_jobs.training.base_model [--cache DIR] [--quiet]   # prints the .pth path
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from edgetune_contract.args import DEFAULT_CONFIG

from ..data import generic_objects
from ..inference.device import versions

NAME = "rtmdet_tiny_generic"
SIDECAR_KIND = "edgetune.io/base-model/v1"
DESCRIPTION = ("RTMDet-tiny pre-trained from random weights by edgetune on its generated generic-objects "
               "set (6 classes of shapes, not balloons): a stand-in for COCO-pretrained weights, not COCO")
# the pre-training recipe (benchmarks/notes/issue-11-recipe.md: why these values). 12 epochs,
# not the first 24: the demo's fine-tuning from either ends at 0.85-0.88, and 12 keep a first
# `make demo` (pre-training included) under 15 minutes on 2 cores
RECIPE: dict[str, Any] = dict(
    config=DEFAULT_CONFIG, images=320, val_fraction=0.1, seed=0, size=192,
    epochs=12, batch_size=8, image_size=192, lr=0.004, val_interval=6, workers=2, train_seed=0)
STAMP_PACKAGES = ("torch", "mmcv", "mmdet", "mmengine", "numpy", "opencv-python", "opencv-python-headless")


def cache_root(cache: Optional[os.PathLike[str] | str] = None) -> Path:
    base = cache or os.environ.get("EDGETUNE_CACHE") or Path.home() / ".cache" / "edgetune"
    return Path(base) / "models"


def stamp_inputs() -> dict[str, Any]:
    return {"recipe": RECIPE, "generator": {"version": generic_objects.VERSION},
            "versions": versions(*STAMP_PACKAGES)}


def stamp() -> str:
    text = json.dumps(stamp_inputs(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sidecar_path(checkpoint: os.PathLike[str] | str) -> Path:
    return Path(checkpoint).with_suffix(".provenance.json")


def sha256_of(path: os.PathLike[str] | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def provenance_of(checkpoint: os.PathLike[str] | str) -> Optional[dict[str, Any]]:
    """What the sidecar next to a checkpoint says it is, in a few hundred bytes (for a result
    document), or None without a sidecar. A sidecar whose sha256 does not match the file is
    reported as such, not believed."""
    side = sidecar_path(checkpoint)
    if not side.is_file():
        return None
    try:
        doc = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        return {"sidecar": side.name, "error": f"unreadable: {exc}"[:200]}
    if doc.get("kind") != SIDECAR_KIND:
        return {"sidecar": side.name, "error": f"unknown kind {str(doc.get('kind'))[:60]!r}"}
    if doc.get("sha256") != sha256_of(checkpoint):
        return {"sidecar": side.name, "error": "sha256 differs from the checkpoint's: not this checkpoint"}
    gen, tr = doc.get("generator") or {}, doc.get("training") or {}
    return {"description": doc.get("description"), "stamp": doc.get("stamp"),
            "classes": len(doc.get("classes") or []),
            "pretrained_on": f"{gen.get('module')} v{gen.get('version')}, {gen.get('train_images')} train images "
                             f"(seed {gen.get('seed')}, {gen.get('size')} px)",
            "pretraining": {k: tr.get(k) for k in ("epochs", "iterations", "image_size", "batch_size", "lr")},
            "own_val_mAP": (doc.get("val") or {}).get("mAP"), "sha256": str(doc.get("sha256"))[:16]}


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _pretrain(work: Path, log: Callable[[str], None], env: Optional[dict] = None) -> dict[str, Any]:
    """Generates the set and runs the finetune step on it (random init); returns its result."""
    from edgetune_contract.progress import parse_progress

    r = RECIPE
    t0 = time.monotonic()
    summary = generic_objects.generate(work / "generic", images=r["images"], seed=r["seed"], size=r["size"],
                                       val_fraction=r["val_fraction"])
    log(f"generated {summary['train']} + {summary['val']} generic-objects images ({summary['objects']} objects) "
        f"in {time.monotonic() - t0:.0f} s")
    result_path = work / "result.json"
    cmd = [sys.executable, "-m", "edgetune_jobs.steps.finetune", "--out", str(work / "run"),
           "--dataset-source", "path", "--dataset-path", str(work / "generic"), "--dataset-format", "via",
           "--category-attribute", generic_objects.CLASS_ATTRIBUTE, "--config", r["config"],
           "--epochs", str(r["epochs"]), "--batch-size", str(r["batch_size"]), "--image-size", str(r["image_size"]),
           "--lr", str(r["lr"]), "--seed", str(r["train_seed"]), "--workers", str(r["workers"]),
           "--val-interval", str(r["val_interval"]), "--device", "cpu"]
    # 1 torch thread unless EDGETUNE_PRETRAIN_THREADS says otherwise: on a 2-core machine that
    # is busy with anything else, 2 OpenMP threads wait for each other (measured: 3.4 s per
    # iteration against 0.9 s with 1 thread; benchmarks/notes/issue-11-recipe.md)
    threads = os.environ.get("EDGETUNE_PRETRAIN_THREADS", "1")
    e = dict(os.environ, EDGETUNE_RESULT_PATH=str(result_path), EDGETUNE_PROGRESS_INTERVAL="5",
             PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **(env or {}))
    last, pos = time.monotonic(), 0
    with open(work / "pretrain.log", "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=e)
        while proc.poll() is None:
            time.sleep(2)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                with open(work / "pretrain.log") as fh:
                    fh.seek(pos)
                    p = parse_progress(fh.read().splitlines())
                    pos = fh.tell()
                if p:
                    log(f"pre-training: {p.text()}")
        code = proc.returncode
    doc = json.loads(result_path.read_text()) if result_path.exists() else {}
    if code != 0 or not doc.get("ok"):
        tail = (work / "pretrain.log").read_text()[-3000:]
        raise RuntimeError(f"pre-training failed (exit {code}): {doc.get('message')}\n{tail}")
    return doc


def cached(cache: Optional[os.PathLike[str] | str] = None) -> Optional[Path]:
    """The base checkpoint of the current stamp if it is in the cache, else None."""
    ckpt = cache_root(cache) / f"rtmdet-tiny-generic-{stamp()}" / f"{NAME}.pth"
    return ckpt if ckpt.is_file() and sidecar_path(ckpt).is_file() else None


def ensure(cache: Optional[os.PathLike[str] | str] = None, log: Callable[[str], None] = print,
           env: Optional[dict] = None) -> Path:
    """The cached base checkpoint (built first when missing); returns the .pth path."""
    root = cache_root(cache)
    st = stamp()
    final = root / f"rtmdet-tiny-generic-{st}"
    ckpt = final / f"{NAME}.pth"
    if cached(cache):
        return ckpt
    with _lock(root / f".lock-{st}"):
        if ckpt.is_file() and sidecar_path(ckpt).is_file():  # built by another process meanwhile
            return ckpt
        work = root / f".build-{st}-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        log(f"pre-training the base model (RTMDet-tiny on generated generic objects, stamp {st}; "
            f"once, cached in {root})")
        t0 = time.monotonic()
        doc = _pretrain(work, log, env)
        seconds = time.monotonic() - t0
        out = work / "model"
        out.mkdir()
        shutil.copyfile(work / "run" / "best.pth", out / f"{NAME}.pth")
        shutil.copyfile(work / "pretrain.log", out / "pretrain.log")
        prov, r = doc["provenance"], RECIPE
        sidecar = {
            "kind": SIDECAR_KIND, "name": NAME, "description": DESCRIPTION, "stamp": st,
            "stamp_inputs": stamp_inputs(), "config": r["config"], "classes": list(generic_objects.CLASSES),
            "generator": {"module": "edgetune_jobs.data.generic_objects", "version": generic_objects.VERSION,
                          "images": r["images"], "train_images": prov["dataset"]["train_images"],
                          "val_images": prov["dataset"]["val_images"], "seed": r["seed"], "size": r["size"]},
            "training": {"init": "random", "epochs": r["epochs"], "iterations": prov["iterations"],
                         "batch_size": r["batch_size"], "image_size": r["image_size"], "lr": r["lr"],
                         "seed": r["train_seed"], "checkpoint_epoch": prov.get("checkpoint_epoch"),
                         "device": prov.get("device"), "torch_threads": prov.get("torch_threads"),
                         "train_seconds": prov.get("train_seconds"),
                         "seconds": round(seconds, 1)},
            "val": doc["metrics"]["finetuned"],
            "versions": prov.get("versions"),
            "sha256": sha256_of(out / f"{NAME}.pth"),
            "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        sidecar_path(out / f"{NAME}.pth").write_text(json.dumps(sidecar, indent=1))
        for old in root.glob("rtmdet-tiny-generic-*"):  # other stamps: stale
            shutil.rmtree(old, ignore_errors=True)
        os.replace(out, final)
        shutil.rmtree(work, ignore_errors=True)
        log(f"base model ready in {seconds / 60:.1f} min: mAP {sidecar['val']['mAP']} on its own generated val "
            f"set ({sidecar['generator']['val_images']} images) -> {ckpt}")
    for stale in root.glob(".build-*"):  # left by an interrupted build
        with contextlib.suppress(OSError, ValueError):
            if not _alive(int(stale.name.rsplit("-", 1)[1])):
                shutil.rmtree(stale, ignore_errors=True)
    return ckpt


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgetune_jobs.training.base_model",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", help="default: $EDGETUNE_CACHE or ~/.cache/edgetune")
    p.add_argument("--quiet", action="store_true", help="print only the checkpoint path")
    p.add_argument("--stamp", action="store_true", help="print the current stamp and exit")
    a = p.parse_args(argv)
    if a.stamp:
        print(stamp())
        return 0
    say = (lambda m: None) if a.quiet else (lambda m: print(f"==> {m}", file=sys.stderr, flush=True))
    try:
        print(ensure(a.cache, log=say))
    except RuntimeError as exc:
        print(f"base_model: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
