"""Resumable fine-tuning (--checkpoint-interval N): mmengine saves a full checkpoint (weights,
optimizer, schedulers, the best-checkpoint bookkeeping) every N epochs and names the newest in
its `last_checkpoint` file, written after the checkpoint itself; a retried Pod, or a restarted
process, resumes from the checkpoint that file names (mmengine `resume`), so a checkpoint cut
off mid-write is never used.

On a volume the work folder survives the Pod. With object storage it does not: rank 0 uploads
each new checkpoint to <the step's upload URI>/resume/ (the marker last) and a starting Pod
downloads the newest before training; the set is deleted once the step has succeeded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

MARKER = "last_checkpoint"
PREFIX = "resume"


def last_checkpoint(work_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint in an mmengine work folder, if any."""
    marker = work_dir / MARKER
    try:
        path = Path(marker.read_text().strip())
    except OSError:
        return None
    if not path.is_absolute():
        path = work_dir / path
    return path if path.is_file() else None


def find(shared_work: Path, own_work: Path, remote: Optional["Remote"]) -> Optional[Path]:
    """Where a (retried) run resumes: the newest complete checkpoint in node 0's work folder
    (out/work/train: the one rank 0 saves to, readable by every node on a shared volume),
    else the one uploaded to object storage (downloaded into this node's own work folder)."""
    found = last_checkpoint(shared_work)
    if found is None and remote is not None:
        found = remote.fetch(own_work)
    return found


def remote_from_env() -> Optional["Remote"]:
    """The resume set in object storage when the step runs in S3 mode, else None."""
    from edgetune_contract import store

    if os.environ.get(store.ENV_STORE) != store.S3_SCHEME:
        return None
    from ..artifacts.transfer import Transfer

    return Remote(Transfer.from_env())


def epoch_of(checkpoint: Path) -> Optional[int]:
    """The epoch a checkpoint was saved after (mmengine's meta), without loading the weights
    onto a device."""
    import torch

    from ..inference.mmcompat import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    meta = torch.load(str(checkpoint), map_location="cpu").get("meta") or {}
    epoch = meta.get("epoch")
    return int(epoch) if isinstance(epoch, int) else None


class Remote:
    """The resume set in object storage: <upload URI>/resume/<checkpoint>, then the marker."""

    def __init__(self, transfer: Any):
        from edgetune_contract.store import split_s3_uri

        self.s3 = transfer.s3
        self.bucket, key = split_s3_uri(transfer.upload_uri)
        self.prefix = f"{key}/{PREFIX}"

    def fetch(self, work_dir: Path) -> Optional[Path]:
        """Download the newest uploaded checkpoint (and its marker) into work_dir."""
        marker_key = f"{self.prefix}/{MARKER}"
        if not self.s3.exists(self.bucket, marker_key):
            return None
        name = os.path.basename(self.s3.get_bytes(self.bucket, marker_key).decode().strip())
        work_dir.mkdir(parents=True, exist_ok=True)
        self.s3.download(self.bucket, f"{self.prefix}/{name}", str(work_dir / name))
        (work_dir / MARKER).write_text(str(work_dir / name))
        return work_dir / name

    def push(self, checkpoint: Path) -> None:
        self.s3.upload(str(checkpoint), self.bucket, f"{self.prefix}/{checkpoint.name}")
        self.s3.put_bytes(self.bucket, f"{self.prefix}/{MARKER}", checkpoint.name.encode(), "text/plain")

    def clear(self) -> None:
        for obj in list(self.s3.list(self.bucket, self.prefix + "/")):
            self.s3.call(f"delete {obj['Key']}", self.bucket, self.s3.client.delete_object, Key=obj["Key"])


def make_upload_hook(remote: Remote):
    """An mmengine hook, after the CheckpointHook, that pushes each new checkpoint (rank 0)."""
    from mmengine.hooks import Hook

    class ResumeUploadHook(Hook):
        priority = "VERY_LOW"

        def __init__(self) -> None:
            self.pushed: Optional[Path] = None

        def after_train_epoch(self, runner) -> None:
            newest = last_checkpoint(Path(runner.work_dir))
            if newest is not None and newest != self.pushed:
                remote.push(newest)
                self.pushed = newest

    return ResumeUploadHook()
