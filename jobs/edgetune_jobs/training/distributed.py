"""Distributed fine-tuning with torchrun, one Pod per node of an Indexed Job.

The finetune step in a Pod is the *launcher*: it prepares the dataset for its node, then runs
`python -m torch.distributed.run` (static rendezvous on node 0's stable DNS name, --node-rank
from the Job's $JOB_COMPLETION_INDEX) with this same step as the *worker* program
($EDGETUNE_DIST_WORKER=1). mmengine trains with its `pytorch` launcher: NCCL on GPUs, gloo on
CPUs; the process group is opened here (mmengine's own init would call torch.cuda.set_device
on a CPU). Global rank 0 alone evaluates the base model (before the group opens; the others
wait in the rendezvous), reports progress, keeps the checkpoints and evaluates the result
(after the group is closed); its result document reaches node 0's launcher through a file,
and node 0's launcher reports it. Every other node's launcher reports "training done" only.

Validation during training is distributed (each rank scores its shard; the results meet by
communication, not through a shared folder, since the nodes share none in S3 mode).

A lost process fails its torchrun, its Pod, and then the peers (their collectives break):
the Job controller retries the Pods (spec.run.backoffLimit) and training resumes from the
last complete checkpoint (training.resume).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from edgetune_contract.args import FinetuneArgs
from edgetune_contract.results import FinetuneResult, ResultError, decode

from ..cli import WORKER_ENV, StepError

DATA_ENV = "EDGETUNE_DIST_DATA"            # the node's prepared dataset, for its workers
SUMMARY_ENV = "EDGETUNE_DIST_SUMMARY"      # that dataset's summary (JSON), for its workers
RESULTS_ENV = "EDGETUNE_DIST_RESULTS"      # the folder of the workers' result documents
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by the Job controller in an Indexed Job's Pods


def world_size(a: FinetuneArgs) -> int:
    return a.nnodes * a.nproc_per_node


def is_worker() -> bool:
    return os.environ.get(WORKER_ENV) == "1"


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def node_rank() -> int:
    return int(os.environ.get(COMPLETION_INDEX, "0") or 0)


def node_dir(out: Path) -> Path:
    """Node 0 works in out/ (its data/ is the dataset artifact); node k in out/work/node-<k>/,
    since out/ may be one volume that every node mounts."""
    k = node_rank()
    return out if k == 0 else out / "work" / f"node-{k}"


def scale(a: FinetuneArgs) -> Dict[str, Any]:
    """The global batch and its learning rate: --lr is stated for one process's batch and
    scaled linearly (Goyal et al., 2017) to all processes."""
    n = world_size(a)
    return {"world_size": n, "nnodes": a.nnodes, "nproc_per_node": a.nproc_per_node,
            "batch_per_process": a.batch_size, "global_batch": a.batch_size * n,
            "lr_given": a.lr, "lr": a.lr * n, "lr_scaling": f"linear: {a.lr} x {n} processes" if n > 1 else "none"}


# --- the launcher ---------------------------------------------------------------------------------

def torchrun_argv(a: FinetuneArgs) -> List[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={a.nnodes}",
            f"--nproc-per-node={a.nproc_per_node}", f"--node-rank={node_rank()}",
            f"--master-addr={a.master_addr or '127.0.0.1'}", f"--master-port={a.master_port}",
            "--max-restarts=0", "-m", "edgetune_jobs.steps.finetune", *a.to_argv()]


def launch(a: FinetuneArgs, data_dir: Path, summary: Dict[str, Any]) -> FinetuneResult:
    """Run this node's workers under torchrun (their output is the Pod's) and return what the
    node reports: rank 0's result on node 0, "training done" elsewhere."""
    results = node_dir(Path(a.out)) / "work" / "ranks"
    results.mkdir(parents=True, exist_ok=True)
    for old in results.glob("*.json"):
        old.unlink()
    env = dict(os.environ, **{WORKER_ENV: "1", DATA_ENV: str(data_dir), RESULTS_ENV: str(results),
                              SUMMARY_ENV: json.dumps(summary)})
    k, n = node_rank(), a.nproc_per_node
    print(f"finetune: node {k} of {a.nnodes}: {n} worker process(es), ranks {k * n}..{k * n + n - 1} of "
          f"{world_size(a)}, rendezvous {a.master_addr or '127.0.0.1'}:{a.master_port}", file=sys.stderr, flush=True)
    proc = subprocess.run(torchrun_argv(a), env=env, stdin=subprocess.DEVNULL)
    docs = {}
    for f in sorted(results.glob("rank-*.json")):
        try:
            docs[int(f.stem.split("-")[1])] = decode(f.read_text())
        except (ResultError, ValueError, OSError):
            continue
    failed = sorted((r, d) for r, d in docs.items() if not d.ok)
    if failed:  # a worker's own failure says most
        r, d = failed[0]
        raise StepError(d.reason, f"rank {r}: {d.message}")
    if proc.returncode != 0:
        raise StepError("DistributedFailed", f"torchrun on node {node_rank()} exited with code {proc.returncode} "
                                             f"(a process of the run was lost; see the Pod logs of every replica)")
    if node_rank() == 0:
        if not isinstance(docs.get(0), FinetuneResult):
            raise StepError("InvalidResult", "rank 0 wrote no result document")
        return docs[0]
    return FinetuneResult(message=f"node {node_rank()}: training done (node 0 reports the figures)",
                          provenance={"distributed": scale(a), "node_rank": node_rank()})


# --- the workers ----------------------------------------------------------------------------------

def worker_result_path() -> Optional[str]:
    """Each worker's own result document (rank-<r>.json in the launcher's folder)."""
    folder = os.environ.get(RESULTS_ENV)
    return str(Path(folder) / f"rank-{rank()}.json") if folder else None


def worker_inputs() -> tuple[Path, Dict[str, Any]]:
    """The node's dataset and its summary, prepared by the launcher."""
    return Path(os.environ[DATA_ENV]), json.loads(os.environ[SUMMARY_ENV])


def init_process_group(device: str) -> str:
    """Open the default process group from torchrun's environment; returns the backend."""
    import datetime

    import torch
    import torch.distributed as dist

    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    if not dist.is_initialized():
        # long enough for rank 0's evaluation of the base model, which the others wait for
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    return backend


def close_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def distribute_config(cfg: Any, device: str) -> None:
    """mmengine's pytorch launcher; on a CPU DDP without device ids and plain BatchNorm;
    validation results gathered by communication."""
    cfg.launcher = "pytorch"
    if not device.startswith("cuda"):
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=False)
        # RTMDet turns its BN layers into SyncBatchNorm when the world is > 1: GPU-only
        if "use_syncbn" in cfg.model or cfg.model.get("type") == "RTMDet":
            cfg.model.use_syncbn = False
    for name in ("val_evaluator", "test_evaluator"):
        ev = cfg[name]
        for e in ev if isinstance(ev, list) else [ev]:
            e.collect_device = "gpu"  # mmengine's name for "by communication" (gloo: CPU tensors)


def hide_gpus_for_cpu_runs(argv: Sequence[str]) -> None:
    """`--device cpu` on a GPU node: hide the GPUs before torch is imported, so that no
    library (mmengine picks cuda whenever it is available) places anything on them."""
    args = list(argv)
    if "--device=cpu" in args or any(a == "--device" and args[i + 1:i + 2] == ["cpu"] for i, a in enumerate(args)):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
