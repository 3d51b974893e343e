"""Distributed and resumable fine-tuning with the real step on the CPU: torchrun with two
processes (gloo), mmengine's pytorch launcher, rank 0 alone reporting; and a run killed
mid-training that resumes from its last complete checkpoint when started again."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ml_fixtures import ROOT, TINY_TRAIN_ARGS, run_finetune

from edgetune_contract.progress import PROGRESS_PREFIX

pytestmark = pytest.mark.ml


def dataset_args(dataset: Path) -> list[str]:
    return ["--dataset-source", "path", "--dataset-path", str(dataset), "--dataset-format", "via"]


def with_epochs(n: int) -> list[str]:
    args = list(TINY_TRAIN_ARGS)
    args[args.index("--epochs") + 1] = str(n)
    return args


def test_two_processes_train_with_torchrun_and_rank_0_reports(generated_via_dataset, tmp_path):
    out = tmp_path / "ft"
    code, result, log = run_finetune(out, *dataset_args(generated_via_dataset), *TINY_TRAIN_ARGS,
                                     "--nproc-per-node", "2", "--master-port", "29561", timeout=1200)
    assert code == 0, log[-4000:]
    # rank 0 evaluated the result (6 iterations make no detector: the figure may be 0 or
    # None, "no detection at all"; accuracy is test_base_model's business)
    assert result["ok"] and "mAP" in result["metrics"]["finetuned"]
    assert isinstance(json.loads((out / "detections.json").read_text()), list)
    dist = result["provenance"]["distributed"]
    assert (dist["world_size"], dist["backend"], dist["global_batch"]) == (2, "gloo", 4)
    assert dist["lr"] == pytest.approx(2 * 0.004) and result["provenance"]["lr"] == pytest.approx(0.008)
    # both ranks ran to the end and wrote their own documents; only rank 0 has figures
    ranks = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in (out / "work" / "ranks").glob("rank-*.json")}
    assert sorted(ranks) == [0, 1] and all(d["ok"] for d in ranks.values())
    assert ranks[1]["message"].startswith("rank 1: trained") and ranks[1].get("metrics", {}).get("finetuned") is None
    # each rank took half of every epoch: 2 epochs of ceil(images / global batch) iterations
    train_images = result["provenance"]["dataset"]["train_images"]
    assert result["provenance"]["iterations"] <= 2 * -(-train_images // 4)
    # progress came from one process: the percentages of the log only rise
    pct = [json.loads(ln[ln.index(PROGRESS_PREFIX) + len(PROGRESS_PREFIX):])["percent"]
           for ln in log.splitlines() if PROGRESS_PREFIX in ln]
    assert pct and pct == sorted(pct) and pct[-1] == 100.0
    assert (out / "best.pth").is_file() and (out / "detections.json").is_file()


def test_a_killed_run_resumes_from_its_last_checkpoint(generated_via_dataset, tmp_path):
    """Epochs of one checkpoint each; the process is killed (SIGKILL, as a lost node) once
    epoch 3 is under way, then the same command runs again, as the Job's retried Pod would."""
    out = tmp_path / "ft"
    args = [sys.executable, "-m", "edgetune_jobs.steps.finetune", "--out", str(out),
            *dataset_args(generated_via_dataset), *with_epochs(4), "--checkpoint-interval", "1",
            "--val-interval", "1"]
    env = dict(os.environ, EDGETUNE_PROGRESS_INTERVAL="0", PYTHONUNBUFFERED="1",
               EDGETUNE_RESULT_PATH=str(tmp_path / "first.json"))
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen, deadline = [], time.monotonic() + 900
    for line in proc.stdout:
        seen.append(line)
        if PROGRESS_PREFIX in line and json.loads(line[line.index(PROGRESS_PREFIX) + len(PROGRESS_PREFIX):]) \
                .get("epoch") == 3:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline, "".join(seen[-50:])
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-50:])
    marker = (out / "work" / "train" / "last_checkpoint").read_text().strip()
    assert Path(marker).name in ("epoch_2.pth", "epoch_3.pth"), marker

    code, result, log = run_finetune(out, *args[args.index("--out") + 2:], timeout=900)
    assert code == 0, log[-4000:]
    resumed = result["provenance"]["resumed_from_epoch"]
    assert resumed in (2, 3) and f"resumed from epoch {resumed}" in result["message"]
    assert "resuming from" in log
    # the second run trained only the epochs after the checkpoint
    epochs = {json.loads(ln[ln.index(PROGRESS_PREFIX) + len(PROGRESS_PREFIX):]).get("epoch")
              for ln in log.splitlines() if PROGRESS_PREFIX in ln} - {None}
    assert min(epochs) == resumed + 1 and max(epochs) == 4, epochs
    assert result["provenance"]["checkpoint_interval"] == 1
    assert not list((out / "work" / "train").glob("*.pth")) and (out / "best.pth").is_file()
