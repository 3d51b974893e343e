"""The mmdet model config of a fine-tuning run: one of mmdet's packaged configs (by name, e.g.
rtmdet_tiny_8xb32-300e_coco, or a path), adapted to the prepared dataset and the training
settings by adapt_config(): classes (num_classes + metainfo), data paths, batch size, workers,
image size (every pipeline's scales, scaled from the config's test size), epochs (schedulers
and the stage-2 pipeline switch scaled to the new length), learning rate, seed. ImageNet
"Pretrained" init_cfg entries are dropped (no download at run time): without a checkpoint the
model starts from random weights.
"""

from __future__ import annotations

import colorsys
import glob
import os
from pathlib import Path
from typing import Any, Sequence

from edgetune_contract.args import DEFAULT_CONFIG
from edgetune_contract.results import COCO_KEYS

from ..cli import StepError

METRIC_MAP = {"mAP": "bbox_mAP", "mAP50": "bbox_mAP_50", "mAP75": "bbox_mAP_75",
              "mAP_s": "bbox_mAP_s", "mAP_m": "bbox_mAP_m", "mAP_l": "bbox_mAP_l"}
_SCALE_KEYS = ("img_scale", "scale", "crop_size", "size")


def find_config(name: str) -> Path:
    """A packaged mmdet config by name (or a path to a config file)."""
    if name.endswith(".py") and os.path.isfile(name):
        return Path(name)
    import importlib.util

    spec = importlib.util.find_spec("mmdet")  # without importing it (and mmcv)
    if spec is None or not spec.submodule_search_locations:
        raise StepError("InvalidInput", "mmdet is not installed: no packaged configs")
    root = Path(list(spec.submodule_search_locations)[0]) / ".mim" / "configs"
    stem = name[:-3] if name.endswith(".py") else name
    hits = sorted(glob.glob(str(root / "**" / f"{stem}.py"), recursive=True))
    if not hits:
        raise StepError("InvalidInput", f"unknown config {name!r}: no such file and not one of mmdet's "
                        f"packaged configs (e.g. {DEFAULT_CONFIG})")
    return Path(hits[0])


def _walk(obj: Any, fn) -> None:
    if isinstance(obj, dict):
        fn(obj)
        for v in list(obj.values()):
            _walk(v, fn)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _walk(v, fn)


def _test_scale(cfg) -> int:
    for t in cfg.test_dataloader.dataset.pipeline:
        if t.get("type") == "Resize" and t.get("scale"):
            s = t["scale"]
            return int(max(s) if isinstance(s, (list, tuple)) else s)
    return 640


def adapt_config(cfg, *, data_root: str | os.PathLike[str], classes: Sequence[str], epochs: int,
                 batch_size: int, image_size: int, lr: float, seed: int, workers: int,
                 val_interval: int | None = None, iters_per_epoch: int | None = None,
                 work_dir: str | os.PathLike[str] | None = None, checkpoint: str | None = None,
                 device: str = "cpu"):
    """The packaged config adapted to the dataset and the training settings (in place; returned)."""
    from mmengine.config import ConfigDict

    data_root = str(Path(data_root).resolve()) + "/"
    classes = tuple(classes)
    palette = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / len(classes), 0.85, 0.9))
               for i in range(len(classes))]
    metainfo = dict(classes=classes, palette=palette)
    orig_epochs = int(cfg.train_cfg.get("max_epochs", epochs))
    orig_lr = float(cfg.optim_wrapper.optimizer.lr)

    # model: classes, plain BN (single device), no download of ImageNet weights
    def model_fix(d: dict) -> None:
        if "num_classes" in d:
            d["num_classes"] = len(classes)
        if d.get("type") in ("SyncBN", "SyncBatchNorm") and "requires_grad" not in d:
            d["type"] = "BN"
        init = d.get("init_cfg")
        if isinstance(init, dict) and init.get("type") == "Pretrained":
            d["init_cfg"] = None
    _walk(cfg.model, model_fix)

    # image size: every transform's scales, relative to the config's test size
    factor = image_size / _test_scale(cfg)

    def scale_fix(d: dict) -> None:
        if "type" not in d:
            return
        for k in _SCALE_KEYS:
            v = d.get(k)
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v):
                d[k] = tuple(int(round(x * factor)) for x in v)
    for key in [k for k in cfg.keys() if k != "model"]:
        _walk(cfg[key], scale_fix)

    # data
    for name, split, train in (("train_dataloader", "train", True), ("val_dataloader", "val", False),
                               ("test_dataloader", "val", False)):
        dl = cfg[name]
        ds = dl.dataset
        while "dataset" in ds and ds.get("type") != "CocoDataset":  # RepeatDataset & co.
            ds = ds.dataset
        ds.data_root = data_root
        ds.ann_file = f"annotations/{split}.json"
        ds.data_prefix = dict(img="images/")
        ds.metainfo = metainfo
        dl.num_workers = workers
        dl.persistent_workers = workers > 0
        if train:
            dl.batch_size = batch_size
        dl.pin_memory = device.startswith("cuda")
    for name in ("val_evaluator", "test_evaluator"):
        ev = cfg[name]
        evs = ev if isinstance(ev, list) else [ev]
        for e in evs:
            e.ann_file = data_root + "annotations/val.json"
            e.metric = "bbox"
            e.format_only = False
            e.classwise = False

    # schedule
    val_interval = val_interval or max(1, epochs // 10)
    cfg.train_cfg = ConfigDict(type="EpochBasedTrainLoop", max_epochs=epochs, val_interval=val_interval)
    stage2 = None
    for hook in cfg.get("custom_hooks", []):
        if hook.get("type") == "PipelineSwitchHook":
            orig_stage2 = orig_epochs - int(hook["switch_epoch"])
            stage2 = max(1, int(round(orig_stage2 * epochs / orig_epochs))) if orig_stage2 > 0 else 0
            hook["switch_epoch"] = max(0, epochs - stage2)
    total_iters = epochs * iters_per_epoch if iters_per_epoch else None
    scheds = cfg.get("param_scheduler") or []
    for s in (scheds if isinstance(scheds, list) else [scheds]):
        if s.get("by_epoch", True):
            for k in ("begin", "end", "T_max"):
                if isinstance(s.get(k), int):
                    s[k] = max(0 if k == "begin" else 1, int(round(s[k] * epochs / orig_epochs)))
            if s.get("end", 0) > epochs:
                s["end"] = epochs
        elif total_iters and isinstance(s.get("end"), int):  # iteration-based warm-up
            s["end"] = max(1, min(s["end"], total_iters // 10))
        if isinstance(s.get("eta_min"), (int, float)):
            s["eta_min"] = s["eta_min"] * lr / orig_lr
    cfg.optim_wrapper.optimizer.lr = lr

    # hooks, run time
    cfg.default_hooks.checkpoint = ConfigDict(type="CheckpointHook", interval=val_interval, max_keep_ckpts=1,
                                              save_best="coco/bbox_mAP", rule="greater", save_last=True)
    cfg.default_hooks.logger = ConfigDict(type="LoggerHook",
                                          interval=max(1, min(50, iters_per_epoch or 50)))
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.load_from = checkpoint
    cfg.resume = False
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    cfg.launcher = "none"
    if isinstance(cfg.get("visualizer"), dict):
        cfg.visualizer.pop("name", None)  # one visualizer per runner (named after the experiment)
    cfg.edgetune = dict(classes=list(classes), epochs=epochs, batch_size=batch_size, image_size=image_size,
                        lr=lr, seed=seed, stage2_epochs=stage2, val_interval=val_interval)
    return cfg


def load_config(name: str):
    from mmengine.config import Config

    path = find_config(name)
    try:
        cfg = Config.fromfile(str(path))
    except Exception as exc:  # noqa: BLE001
        raise StepError("InvalidInput", f"config {name!r} cannot be loaded: {exc}") from None
    # Every Runner pretty-prints its config up to 4 times (log, work_dir dump, visualizer,
    # ...) through yapf: seconds each on 2 cores. Plain text instead (mmengine 0.10.7's
    # fromfile ignores its own format_python_code argument for .py configs).
    object.__setattr__(cfg, "_format_python_code", False)
    return cfg, path


def test_cfg_of(cfg) -> dict[str, Any]:
    """The post-processing settings of the model (export must match them)."""
    tc = cfg.model.get("test_cfg") or {}
    if "rcnn" in tc:
        tc = tc["rcnn"]
    nms = tc.get("nms") or {}
    return {"score_thr": tc.get("score_thr"), "nms_iou": nms.get("iou_threshold"),
            "nms_type": nms.get("type"), "max_per_img": tc.get("max_per_img"),
            "nms_pre": tc.get("nms_pre")}


def coco_metrics(results: dict[str, Any]) -> dict[str, float | None]:
    """mmdet CocoMetric results -> COCO_KEYS; -1 (no object in that size range) -> None."""
    out: dict[str, float | None] = {}
    for key in COCO_KEYS:
        v = results.get(f"coco/{METRIC_MAP[key]}")
        out[key] = None if v is None or float(v) < 0 else round(float(v), 4)
    return out
