"""The finetune step: prepare the data, evaluate the base model, train, evaluate the result.

    python -m edgetune_jobs.steps.finetune --out DIR
        --dataset-source generate|url|path [--dataset-url URL] [--dataset-path PATH]
        [--generate-images N] [--generate-seed S] --dataset-format via|coco [--val-fraction F]
        --config rtmdet_tiny_8xb32-300e_coco [--checkpoint PATH_OR_URL]
        --epochs N --batch-size N --image-size N --lr F --seed N [--workers N] [--device cpu|cuda]
        [--val-interval N] [--no-eval-base]                  (edgetune_contract.args.FinetuneArgs)

The model config is adapted by training.mmdet_config. Progress lines (training.progress_hook)
give the whole job's percentage: preparing data, evaluating the base model, training (with
validation), evaluating the fine-tuned model.

Outputs in --out: best.pth (the checkpoint with the best val bbox mAP; EMA weights; only
"meta" and "state_dict", no optimizer state), config.py (the adapted config, load_from
unset), data/ (the prepared dataset), detections.json (the fine-tuned model's detections on
the val set that its figures were computed from, COCO results format), result.json (a copy
of the result document), work/ (mmengine logs).

A checkpoint path with a sidecar <name>.provenance.json (training.base_model: the generated
base model) puts what the sidecar says into provenance.base_model; provenance.base_eval
says whether the base model was evaluated with its own class head or a re-initialised one.
The result document is also written to $EDGETUNE_RESULT_PATH.
"""

from __future__ import annotations

import copy
import gc
import glob
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from edgetune_contract.args import FinetuneArgs
from edgetune_contract.progress import ProgressPlan
from edgetune_contract.results import FinetuneResult

from ..cli import StepError, entry_point
from ..data import fetch, prepare
from ..inference.device import versions
from ..training.mmdet_config import adapt_config, coco_metrics, load_config, test_cfg_of
from ..training import distributed, resume
from ..training.progress_hook import Reporter, make_progress_hook


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
            path = fetch.download(spec, work_dir / "checkpoints", timeout=120, what="checkpoint")
        except fetch.DataError as exc:
            raise StepError("CheckpointNotFound", exc.message) from None
    else:
        path = fetch.resolve_path(spec)
        if not path.is_file():
            raise StepError("CheckpointNotFound", f"checkpoint {spec} does not exist")
    import torch

    from ..inference.mmcompat import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    try:
        ckpt = torch.load(str(path), map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise StepError("InvalidCheckpoint", f"{spec} is not a loadable checkpoint: {exc}") from None
    if not isinstance(ckpt, dict):
        raise StepError("InvalidCheckpoint", f"{spec} is not an mmengine/PyTorch checkpoint dict")
    return str(path)


def _flush_denormal(device: str) -> bool:
    """On CPU, denormal floats are flushed to zero. Training can produce them (tiny learning
    rates at the start of the warm-up, weights decaying towards zero), and on some CPUs
    (measured on this project's Intel Xeon with AVX-512) a convolution over denormal values
    runs ~50x slower: 3 forward+backward passes of a 96-channel 3x3 conv, 0.44 s normal,
    22 s with denormal weights, 0.29 s flushed. Values below 1.2e-38 change no figure that
    matters. Returns whether flushing is on (provenance.flush_denormal)."""
    if not device.startswith("cpu"):
        return False
    import torch

    return bool(torch.set_flush_denormal(True))


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def checkpoint_classes(path: str) -> Optional[list]:
    """The class names a checkpoint was trained on (mmdet's meta.dataset_meta), if recorded."""
    import torch

    meta = torch.load(path, map_location="cpu").get("meta") or {}
    classes = (meta.get("dataset_meta") or {}).get("classes")
    return list(classes) if classes else None


def base_provenance(checkpoint: Optional[str], base_classes: Optional[list], classes) -> Dict[str, Any]:
    """What the starting checkpoint is: its sidecar (training.base_model.provenance_of) as
    base_model, and how its classes relate to the dataset's (base_eval)."""
    if not checkpoint:
        return {}
    from ..training.base_model import provenance_of

    out: Dict[str, Any] = {}
    side = provenance_of(checkpoint)
    if side:
        out["base_model"] = side
    if base_classes is None:
        out["base_eval"] = "checkpoint records no classes"
    elif list(base_classes) != list(classes):
        out["base_eval"] = (f"class head re-initialised: the checkpoint's {len(base_classes)} classes are not the "
                            f"dataset's {len(classes)}; the rest of the network as trained")
    else:
        out["base_eval"] = "same classes as the dataset: the checkpoint as it is"
    return out


def _new_runner(cfg, hook_phase: str, reporter: Optional[Reporter] = None):
    """A Runner with its own experiment name (several run in one process) and, with a
    reporter, the progress hook."""
    import uuid

    from mmengine.runner import Runner

    cfg.experiment_name = f"{hook_phase}_{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
    runner = Runner.from_cfg(cfg)
    if reporter is None:
        return runner
    runner.register_hook(make_progress_hook(reporter, eval_phase=hook_phase))
    return runner


def evaluate(cfg, checkpoint: str, work_dir: Path, phase: str,
             reporter: Optional[Reporter] = None) -> Dict[str, Optional[float]]:
    """COCO bbox metrics of checkpoint on the val set (mmengine test loop, CocoMetric). The
    detections it scored are kept in work_dir/detections.bbox.json (COCO results format, the
    val set's image and category ids): anyone can recompute the figures with pycocotools."""
    c = copy.deepcopy(cfg)
    c.load_from = checkpoint
    c.work_dir = str(work_dir)
    c.resume, c.launcher = False, "none"  # one process, whatever the training was
    c.pop("model_wrapper_cfg", None)
    for ev in (c.test_evaluator if isinstance(c.test_evaluator, list) else [c.test_evaluator]):
        ev.outfile_prefix = str(work_dir / "detections")
    if reporter is not None:
        reporter.emit(phase, 0.0)
    runner = _new_runner(c, phase, reporter)
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


def _check_args(a: FinetuneArgs) -> None:
    for name, value, low in (("--epochs", a.epochs, 1), ("--batch-size", a.batch_size, 1),
                             ("--workers", a.workers, 0), ("--image-size", a.image_size, 64),
                             ("--nnodes", a.nnodes, 1), ("--nproc-per-node", a.nproc_per_node, 1),
                             ("--checkpoint-interval", a.checkpoint_interval or 1, 1)):
        if value < low:
            raise StepError("InvalidInput", f"{name} must be >= {low}, got {value}")
    if a.image_size % 32:
        raise StepError("InvalidInput", f"--image-size must be a multiple of 32, got {a.image_size}")
    if not a.lr > 0:
        raise StepError("InvalidInput", f"--lr must be > 0, got {a.lr}")
    if a.nnodes > 1 and not a.master_addr:
        raise StepError("InvalidInput", "--nnodes > 1 needs --master-addr (node 0's stable DNS name)")


def _plan(a: FinetuneArgs) -> ProgressPlan:
    return ProgressPlan(skip=() if a.checkpoint and a.eval_base else ("eval-base",))


def run(a: FinetuneArgs) -> FinetuneResult:
    """One process (train here), a distributed launcher (prepare, then torchrun) or one of
    its workers (train one rank)."""
    _check_args(a)
    if distributed.is_worker():
        data_dir, summary = distributed.worker_inputs()
        return train(a, data_dir, summary)
    reporter = Reporter(_plan(a))
    own = distributed.node_dir(Path(a.out))
    own.mkdir(parents=True, exist_ok=True)
    # 1. data (no heavy imports: a bad dataset fails in a second)
    reporter.emit("data", 0.0)
    summary = prepare.fetch_and_prepare(
        own / "data", source=a.dataset_source, url=a.dataset_url, path=a.dataset_path,
        fmt=a.dataset_format, val_fraction=a.val_fraction, seed=a.split_seed, class_name=a.class_name,
        category_attribute=a.category_attribute, work_dir=own / "work" / "dataset",
        generate_images=a.generate_images, generate_seed=a.generate_seed, generate_size=a.generate_size)
    reporter.emit("data", 1.0)
    if distributed.world_size(a) > 1:
        return distributed.launch(a, own / "data", summary)
    return train(a, own / "data", summary, reporter)


def _base_figures(a: FinetuneArgs, cfg, checkpoint: Optional[str], work: Path, resumed: bool,
                  reporter: Optional[Reporter]) -> Optional[Dict[str, Optional[float]]]:
    """The base model's figures: measured once (a resumed run reads the first run's)."""
    if not (checkpoint and a.eval_base):
        return None
    saved = work / "base.json"
    if resumed and saved.is_file():
        return json.loads(saved.read_text())
    base = evaluate(cfg, checkpoint, work / "eval-base", "eval-base", reporter)
    saved.write_text(json.dumps(base))
    return base


def train(a: FinetuneArgs, data_dir: Path, summary: Dict[str, Any],
          reporter: Optional[Reporter] = None) -> FinetuneResult:
    """Evaluate the base model, train, evaluate the result: the whole job in one process, or
    one rank of a distributed run (rank 0 evaluates, reports and writes the artifacts)."""
    started = time.monotonic()
    is_dist, rank0 = distributed.is_worker(), distributed.rank() == 0
    if reporter is None and rank0:
        reporter = Reporter(_plan(a))
    out = Path(a.out)
    work = distributed.node_dir(out) / "work"
    device = _device(a.device)
    flush_denormal = _flush_denormal(device)
    from ..inference.mmcompat import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    remote = resume.remote_from_env() if a.checkpoint_interval else None
    resume_from = resume.find(out / "work" / "train", work / "train", remote) if a.checkpoint_interval else None
    if resume_from is None and distributed.local_rank() == 0:
        for stale in ("train", "eval", "eval-base"):  # a retried Job without a checkpoint starts clean
            shutil.rmtree(work / stale, ignore_errors=True)
    cfg, _ = load_config(a.config)
    checkpoint = resolve_checkpoint(a.checkpoint, work)
    scale = distributed.scale(a)
    iters_per_epoch = -(-summary["train_images"] // scale["global_batch"])  # upper bound (empty images filtered)
    adapt_config(cfg, data_root=data_dir, classes=summary["classes"], epochs=a.epochs,
                 batch_size=a.batch_size, image_size=a.image_size, lr=scale["lr"], seed=a.seed, workers=a.workers,
                 val_interval=a.val_interval, iters_per_epoch=iters_per_epoch, work_dir=work / "train",
                 checkpoint=checkpoint, device=device)
    resumed_epoch = None
    if a.checkpoint_interval:
        cfg.default_hooks.checkpoint.interval = a.checkpoint_interval
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, str(resume_from)
        resumed_epoch = resume.epoch_of(resume_from)
        print(f"finetune: resuming from {resume_from.name} (epoch {resumed_epoch})", file=sys.stderr, flush=True)
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)

    # 3. the base model (rank 0 alone: the others wait in the rendezvous meanwhile)
    base_classes = checkpoint_classes(checkpoint) if checkpoint else None
    base = _base_figures(a, cfg, checkpoint, work, resume_from is not None, reporter) if rank0 else None

    # 4. training
    backend = distributed.init_process_group(device) if is_dist else None
    if is_dist:
        distributed.distribute_config(cfg, device)
    runner = _new_runner(cfg, "val", reporter if rank0 else None)
    if remote is not None and rank0:
        runner.register_hook(resume.make_upload_hook(remote))
    t_train = time.monotonic()
    runner.train()
    train_seconds = time.monotonic() - t_train
    iterations = runner.iter
    del runner
    gc.collect()  # data loader workers go now, not during the evaluation
    if is_dist:
        distributed.close_process_group()
    dist_prov = {"distributed": {**scale, "backend": backend}} if is_dist else {}
    print(f"finetune: rank {distributed.rank()}: trained {iterations} iterations", file=sys.stderr, flush=True)
    if not rank0:
        return FinetuneResult(message=f"rank {distributed.rank()}: trained {iterations} iterations",
                              provenance={**dist_prov, "rank": distributed.rank()})
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
    (work / "train" / resume.MARKER).unlink(missing_ok=True)

    # 5. the fine-tuned model, and the artifacts
    dump = copy.deepcopy(cfg)
    dump.load_from = None
    dump.work_dir = None
    dump.resume = False
    dump.launcher = "none"
    for key in ("experiment_name", "model_wrapper_cfg"):
        dump.pop(key, None)
    object.__setattr__(dump, "_format_python_code", True)  # the artifact is for people too
    dump.dump(str(out / "config.py"))
    finetuned = evaluate(dump, str(out / "best.pth"), work / "eval", "eval", reporter)
    shutil.copyfile(work / "eval" / "detections.bbox.json", out / "detections.json")
    if remote is not None:
        remote.clear()  # the resume set is of no use once the step succeeded
    if reporter is not None:
        reporter.emit("done", 1.0)

    provenance = {
        "dataset": {k: summary[k] for k in ("source", "format", "train_images", "val_images", "classes")},
        "epochs": a.epochs, "iterations": iterations, "batch_size": a.batch_size,
        "image_size": a.image_size, "seed": a.seed, "lr": scale["lr"], "device": _device_name(device),
        "torch_threads": _torch_threads(), "flush_denormal": flush_denormal,
        "seconds": round(time.monotonic() - started, 1), "train_seconds": round(train_seconds, 1),
        "versions": versions("torch", "mmcv", "mmdet", "mmengine"), "config": a.config, "base_checkpoint": a.checkpoint,
        "init": "checkpoint" if checkpoint else "random",
        **base_provenance(checkpoint, base_classes, summary["classes"]),
        "checkpoint_kind": kind, "checkpoint_epoch": meta.get("epoch"),
        "test_cfg": test_cfg_of(cfg), **dist_prov,
        **({"checkpoint_interval": a.checkpoint_interval} if a.checkpoint_interval else {}),
        **({"resumed_from_epoch": resumed_epoch} if resume_from is not None else {}),
    }
    resumed = f" (resumed from epoch {resumed_epoch})" if resume_from is not None else ""
    result = FinetuneResult(
        message=f"bbox mAP {base['mAP'] if base else 'n/a'} -> {finetuned['mAP']}{resumed}",
        base=base, finetuned=finetuned,
        artifacts={"checkpoint": "best.pth", "config": "config.py", "dataset": "data",
                   "detections": "detections.json"},
        provenance=provenance)
    (out / "result.json").write_text(json.dumps(result.to_doc(), indent=2))
    return result


main = entry_point(FinetuneArgs, run)


if __name__ == "__main__":
    distributed.hide_gpus_for_cpu_runs(sys.argv[1:])
    sys.exit(main(result_path=distributed.worker_result_path() if distributed.is_worker() else None))
