"""The finetune step: prepare the data, evaluate the base model, train, evaluate the result.

    python -m edgetune_jobs.finetune --out DIR
        --dataset-source generate|url|path [--dataset-url URL] [--dataset-path PATH]
        [--generate-images N] [--generate-seed S] --dataset-format via|coco [--val-fraction F]
        --config rtmdet_tiny_8xb32-300e_coco [--checkpoint PATH_OR_URL]
        --epochs N --batch-size N --image-size N --lr F --seed N [--workers N] [--device cpu|cuda]
        [--val-interval N] [--no-eval-base]

The model config is one of mmdet's packaged configs (mmdet/.mim/configs/**/<name>.py, or a
path to a config file), adapted by adapt_config(): classes (num_classes + metainfo), the
prepared dataset, batch size, workers, image size (every pipeline's scales, scaled from the
config's test size), epochs (schedulers and the stage-2 pipeline switch scaled to the new
length), learning rate, seed. ImageNet "Pretrained" init_cfg entries are dropped (no download
at run time): without --checkpoint the model starts from random weights.

Outputs in --out: best.pth (the checkpoint with the best val bbox mAP; EMA weights; only
"meta" and "state_dict", no optimizer state), config.py (the adapted config, load_from
unset), data/ (the prepared dataset), result.json (a copy of the result document), work/
(mmengine logs). The result document (contract.py) is also written to $EDGETUNE_RESULT_PATH.
"""

from __future__ import annotations

import argparse
import colorsys
import copy
import gc
import glob
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import contract, data, progress
from .cli import StepError, run_step

STEP = "finetune"
DEFAULT_CONFIG = "rtmdet_tiny_8xb32-300e_coco"
BASE_CHECKPOINT_URL = ("https://download.openmmlab.com/mmdetection/v3.0/rtmdet/rtmdet_tiny_8xb32-300e_coco/"
                       "rtmdet_tiny_8xb32-300e_coco_20220902_112414-78e30dcc.pth")
METRIC_MAP = {"mAP": "bbox_mAP", "mAP50": "bbox_mAP_50", "mAP75": "bbox_mAP_75",
              "mAP_s": "bbox_mAP_s", "mAP_m": "bbox_mAP_m", "mAP_l": "bbox_mAP_l"}
_SCALE_KEYS = ("img_scale", "scale", "crop_size", "size")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a result document even for a bad command line
        raise StepError("InvalidInput", f"bad arguments: {message}", exit_code=2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m edgetune_jobs.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    data.add_dataset_args(p)
    p.add_argument("--config", default=DEFAULT_CONFIG, help="mmdet config name or path")
    p.add_argument("--checkpoint", default=None, help="path or URL of a checkpoint to start from")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=640)
    p.add_argument("--lr", type=float, default=0.004)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--val-interval", type=int, default=None, help="epochs between evaluations (default epochs/10)")
    p.add_argument("--no-eval-base", action="store_true", help="skip evaluating the base checkpoint")
    return p


# --- the config -----------------------------------------------------------------------------------

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


# --- running --------------------------------------------------------------------------------------

def coco_metrics(results: dict[str, Any]) -> dict[str, float | None]:
    """mmdet CocoMetric results -> contract.COCO_KEYS; -1 (no object in that size range) -> None."""
    out: dict[str, float | None] = {}
    for key in contract.COCO_KEYS:
        v = results.get(f"coco/{METRIC_MAP[key]}")
        out[key] = None if v is None or float(v) < 0 else round(float(v), 4)
    return out


def _device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise StepError("InvalidInput", "--device cuda was requested but CUDA is not available")
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def _device_name(device: str) -> str:
    import platform
    import torch

    if device.startswith("cuda"):
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu:{platform.machine()}x{os.cpu_count()}"


def resolve_checkpoint(spec: str | None, work_dir: Path) -> str | None:
    if not spec:
        return None
    if spec.startswith(("http://", "https://")):
        try:
            path = data.download(spec, work_dir / "checkpoints", timeout=120, what="checkpoint")
        except data.DataError as exc:
            raise StepError("CheckpointNotFound", exc.message) from None
    else:
        path = data.resolve_path(spec)
        if not path.is_file():
            raise StepError("CheckpointNotFound", f"checkpoint {spec} does not exist")
    import torch

    from . import mmcompat

    mmcompat.allow_mmengine_checkpoints()
    try:
        ckpt = torch.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise StepError("InvalidCheckpoint", f"{spec} is not a loadable checkpoint: {exc}") from None
    if not isinstance(ckpt, dict):
        raise StepError("InvalidCheckpoint", f"{spec} is not an mmengine/PyTorch checkpoint dict")
    return str(path)


def _new_runner(cfg, hook_phase: str, progress_hook: bool = True):
    """A Runner with its own experiment name (several run in one process) and the
    progress hook."""
    import uuid

    from mmengine.runner import Runner

    cfg.experiment_name = f"{hook_phase}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
    runner = Runner.from_cfg(cfg)
    if not progress_hook:
        return runner
    runner.register_hook(progress.make_progress_hook(eval_phase=hook_phase))
    return runner


def evaluate(cfg, checkpoint: str, work_dir: Path, phase: str) -> dict[str, float | None]:
    """COCO bbox metrics of checkpoint on the val set (mmengine test loop, CocoMetric)."""
    c = copy.deepcopy(cfg)
    c.load_from = checkpoint
    c.work_dir = str(work_dir)
    progress.emit(phase=phase, percent=0.0)
    runner = _new_runner(c, phase)
    results = runner.test()
    del runner
    return coco_metrics(results)


def strip_checkpoint(src: str, dst: Path) -> dict[str, Any]:
    """Keep only meta + state_dict (the EMA weights) of an mmengine checkpoint."""
    import torch

    ckpt = torch.load(src, map_location="cpu")
    meta = dict(ckpt.get("meta") or {})
    meta = {k: v for k, v in meta.items() if k in ("epoch", "iter", "mmengine_version", "dataset_meta",
                                                 "seed", "experiment_name", "time")}
    tmp = dst.with_suffix(".tmp")
    torch.save({"meta": meta, "state_dict": ckpt["state_dict"]}, tmp)
    os.replace(tmp, dst)
    return meta


def versions() -> dict[str, str]:
    import mmcv
    import mmdet
    import mmengine
    import torch

    return {"torch": torch.__version__, "mmcv": mmcv.__version__, "mmdet": mmdet.__version__,
            "mmengine": mmengine.__version__}


def run(a: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    for name, value, low in (("--epochs", a.epochs, 1), ("--batch-size", a.batch_size, 1),
                             ("--workers", a.workers, 0), ("--image-size", a.image_size, 64)):
        if value < low:
            raise StepError("InvalidInput", f"{name} must be >= {low}, got {value}")
    if a.image_size % 32:
        raise StepError("InvalidInput", f"--image-size must be a multiple of 32, got {a.image_size}")
    if not a.lr > 0:
        raise StepError("InvalidInput", f"--lr must be > 0, got {a.lr}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    for stale in ("train", "eval", "eval-base"):  # a retried Job starts clean
        shutil.rmtree(work / stale, ignore_errors=True)

    # 1. data (no heavy imports: a bad dataset fails in a second)
    progress.emit(phase="data", percent=0.0)
    summary = data.fetch_and_prepare(
        out / "data", source=a.dataset_source, url=a.dataset_url, path=a.dataset_path,
        fmt=a.dataset_format, val_fraction=a.val_fraction, seed=a.split_seed, class_name=a.class_name,
        category_attribute=a.category_attribute, work_dir=work / "dataset",
        generate_images=a.generate_images, generate_seed=a.generate_seed, generate_size=a.generate_size)
    progress.emit(phase="data", percent=100.0, train_images=summary["train_images"],
                  val_images=summary["val_images"])

    # 2. config and checkpoint
    device = _device(a.device)
    from . import mmcompat

    mmcompat.allow_mmengine_checkpoints()
    cfg, cfg_path = load_config(a.config)
    checkpoint = resolve_checkpoint(a.checkpoint, work)
    iters_per_epoch = -(-summary["train_images"] // a.batch_size)  # upper bound (empty images filtered)
    adapt_config(cfg, data_root=out / "data", classes=summary["classes"], epochs=a.epochs,
                 batch_size=a.batch_size, image_size=a.image_size, lr=a.lr, seed=a.seed, workers=a.workers,
                 val_interval=a.val_interval, iters_per_epoch=iters_per_epoch, work_dir=work / "train",
                 checkpoint=checkpoint, device=device)
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)

    # 3. the base model
    base = None
    if checkpoint and not a.no_eval_base:
        base = evaluate(cfg, checkpoint, work / "eval-base", "eval-base")
        progress.emit(phase="eval-base", percent=100.0, mAP=base["mAP"])

    # 4. training
    runner = _new_runner(cfg, "val")
    t_train = time.monotonic()
    runner.train()
    train_seconds = time.monotonic() - t_train
    iterations = runner.iter
    del runner
    gc.collect()  # data loader workers go now, not during the evaluation
    best = sorted(glob.glob(str(work / "train" / "best_coco_bbox_mAP_epoch_*.pth")))
    kind = "best"
    if not best:
        best = sorted(glob.glob(str(work / "train" / f"epoch_{a.epochs}.pth")))
        kind = "final"
    if not best:
        raise StepError("Failed", f"training wrote no checkpoint in {work / 'train'}")
    meta = strip_checkpoint(best[-1], out / "best.pth")
    for f in glob.glob(str(work / "train" / "*.pth")):
        os.unlink(f)  # the full checkpoints (optimizer state) are not kept

    # 5. the fine-tuned model, and the artifacts
    dump = copy.deepcopy(cfg)
    dump.load_from = None
    dump.work_dir = None
    dump.pop("experiment_name", None)
    object.__setattr__(dump, "_format_python_code", True)  # the artifact is for people too
    dump.dump(str(out / "config.py"))
    finetuned = evaluate(cfg, str(out / "best.pth"), work / "eval", "eval")
    progress.emit(phase="done", percent=100.0, mAP=finetuned["mAP"])

    provenance = {
        "dataset": {k: summary[k] for k in ("source", "format", "train_images", "val_images", "classes")},
        "epochs": a.epochs, "iterations": iterations, "batch_size": a.batch_size,
        "image_size": a.image_size, "seed": a.seed, "lr": a.lr, "device": _device_name(device),
        "seconds": round(time.monotonic() - started, 1), "train_seconds": round(train_seconds, 1),
        "versions": versions(), "config": a.config, "base_checkpoint": a.checkpoint,
        "init": "checkpoint" if checkpoint else "random",
        "checkpoint_kind": kind, "checkpoint_epoch": meta.get("epoch"),
        "test_cfg": test_cfg_of(cfg),
    }
    doc = contract.make_result(
        STEP, True, message=f"bbox mAP {base['mAP'] if base else 'n/a'} -> {finetuned['mAP']}",
        metrics={"base": base, "finetuned": finetuned},
        artifacts={"checkpoint": "best.pth", "config": "config.py", "dataset": "data"},
        provenance=provenance)
    (out / "result.json").write_text(json.dumps(doc, indent=2))
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    def body() -> dict[str, Any]:
        return run(build_parser().parse_args(argv))

    return run_step(STEP, body)


def _hide_gpus_for_cpu_runs(argv: Sequence[str]) -> None:
    """`--device cpu` on a GPU node: hide the GPUs before torch is imported, so that no
    library (mmengine picks cuda whenever it is available) places anything on them.
    Only for the command line: an in-process caller owns its environment."""
    args = list(argv)
    if "--device=cpu" in args or any(a == "--device" and args[i + 1:i + 2] == ["cpu"] for i, a in enumerate(args)):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


if __name__ == "__main__":
    _hide_gpus_for_cpu_runs(sys.argv[1:])
    sys.exit(main())
