"""FinetuneJob: one `finetune` Job on the GPU node; status gets the COCO figures of the base and
fine-tuned model, the artifacts, and the whole job's progress while it runs."""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from edgetune_contract import names
from edgetune_contract.args import FinetuneArgs
from edgetune_contract.progress import Progress
from edgetune_contract.results import FinetuneResult

from ..observe import fmt_time, parse_time
from .common import Context, Plan, coco_status, num

KIND = "FinetuneJob"
IOU = {"mAP": "0.50:0.95", "mAP50": "0.50", "mAP75": "0.75"}
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgetune_finetune_map_ratio": ("COCO bbox mAP of a FinetuneJob's base or fine-tuned model (0-1).",
                                    ("namespace", "name", "model", "which", "iou")),
    "edgetune_finetune_progress_ratio": ("Progress of a FinetuneJob as a whole (0-1).", ("namespace", "name")),
}


def related_key(body: Mapping[str, Any]) -> None:
    return None  # a FinetuneJob depends on no other resource


def finetune_args(c: Context) -> FinetuneArgs:
    """The finetune step's arguments from the defaulted spec."""
    ds, model, tr = c.spec["dataset"], c.spec.get("model", {}), c.spec.get("training", {})
    kw: dict[str, Any] = dict(
        out=c.out("finetune"), dataset_format=ds.get("format", "via"), config=model.get("config"),
        epochs=tr.get("epochs"), batch_size=tr.get("batchSize"), image_size=tr.get("imageSize"),
        lr=tr.get("learningRate"), seed=tr.get("seed"), workers=tr.get("workers"),
        val_interval=tr.get("valInterval"), eval_base=tr.get("evalBase", True) is not False,
        device=tr["device"] if tr.get("device") in ("cpu", "cuda") else None,
        checkpoint=c.spec_path(model.get("checkpoint")))
    if ds.get("valFraction") is not None:
        kw["val_fraction"] = ds["valFraction"]
    replicas, procs = tr.get("replicas", 1), tr.get("processesPerReplica", 1)
    kw.update(nnodes=replicas, nproc_per_node=procs, checkpoint_interval=tr.get("checkpointInterval"))
    if replicas > 1:  # replica 0 under the Job's headless Service (jobspec.headless_service)
        job = names.job_name(c.name, "finetune")
        kw["master_addr"] = f"{job}-0.{job}"
    if "url" in ds:
        kw.update(dataset_source="url", dataset_url=ds["url"])
    elif "path" in ds:
        kw.update(dataset_source="path", dataset_path=c.spec_path(ds["path"]))
    else:
        gen = ds.get("generate") or {}
        kw.update(dataset_source="generate", generate_images=gen.get("images"), generate_seed=gen.get("seed"))
    return FinetuneArgs(**{k: v for k, v in kw.items() if v is not None})


def gang_start(c: Context, obs: dict, replicas: int) -> dict:
    """All replicas or none: replicas that are not all running startTimeoutSeconds after the
    first Pod was created fail the step (their Job is deleted, so no GPU waits for the rest)."""
    first = parse_time(obs.get("first_pod_created"))
    if first is None or obs.get("running_pods", 0) >= replicas:
        return obs
    timeout = c.spec["training"].get("startTimeoutSeconds", 600)
    waited = (c.now - first).total_seconds()
    if waited < timeout:
        c.plan.requeue(timeout - waited + 0.5)
        return obs
    c.plan.delete.append(obs["job"])
    why = obs.get("message") or ""
    sched = obs.get("scheduled") or {}
    if sched.get("status") == "False":
        why = f"Pod {obs.get('pod')}: {sched.get('message') or sched.get('reason')}"
    return dict(obs, phase="Failed", reason="StartTimeout", completionTime=fmt_time(c.now),
                message=f"{obs.get('running_pods', 0)} of {replicas} replicas running {waited:.0f} s after the first "
                        f"Pod was created (startTimeoutSeconds {timeout}): {why}")


def progress_status(progress: Progress, now: dt.datetime) -> dict:
    """status.progress from the step's last progress line."""
    out: dict[str, Any] = {"updateTime": fmt_time(now), "text": progress.text()}
    for src, dst in (("percent", "percent"), ("phase", "phase"), ("epoch", "epoch"), ("epochs", "epochs"),
                     ("iter", "iteration"), ("iters", "iterations"), ("loss", "loss"),
                     ("eta_seconds", "etaSeconds")):
        v = getattr(progress, src)
        if v is not None:
            out[dst] = round(v, 4) if isinstance(v, float) else v
    return out


def plan(c: Context, related: Mapping[str, Any] | None, progress: Progress | None) -> Plan:
    st = c.status
    st["model"] = c.spec["model"]["config"]
    obs = c.observe("finetune")
    replicas = c.spec["training"].get("replicas", 1)
    if obs["phase"] == "NotCreated":
        obs = c.create(finetune_args(c), replicas=replicas)
    elif replicas > 1 and obs["phase"] in ("Pending", "Running"):
        obs = gang_start(c, obs, replicas)
    result = obs.get("result")
    if obs["phase"] == "Succeeded" and not obs.get("sticky") and isinstance(result, FinetuneResult):
        figures = {which: coco_status(getattr(result, which)) for which in ("base", "finetuned")}
        figures = {k: v for k, v in figures.items() if v}
        if figures:
            st["metrics"] = figures
        c.artifacts_from("finetune", result)
    c.record_step("finetune", obs)
    c.scheduled_from(obs)
    phase = obs["phase"]
    if phase == "Succeeded":
        prog = st.get("progress") or {}
        if (prog.get("phase"), prog.get("percent")) != ("done", 100.0):  # once: a sticky step changes nothing
            st["progress"] = {**prog, **progress_status(Progress(phase="done", percent=100.0), c.now),
                              "etaSeconds": 0.0}
        m = (st.get("metrics") or {}).get("finetuned") or {}
        msg = "fine-tuned" + (f": mAP {m['mAP']:.3f}" if "mAP" in m else "")
        if "mAP50" in m:
            msg += f", mAP50 {m['mAP50']:.3f}"
        resumed = ((st.get("provenance") or {}).get("finetune") or {}).get("resumed_from_epoch")
        if resumed:  # a retried Pod went on from its last checkpoint
            msg += f" (resumed from epoch {resumed})"
        return c.finish("Succeeded", "Succeeded", msg)
    if phase == "Failed":
        return c.finish("Failed", obs.get("reason") or "Failed", f"finetune: {obs.get('message')}")
    if phase in ("Running", "Finishing"):
        if progress is not None:
            st["progress"] = progress_status(progress, c.now)
        elif "progress" not in st:
            st["progress"] = progress_status(Progress(phase="", percent=0.0), c.now)
        c.plan.requeue(c.settings.progress_interval)
        return c.finish("Running", "StepRunning", f"finetune: {st['progress']['text']}")
    return c.finish("Pending", obs.get("reason") or "Pending", f"finetune: {obs.get('message')}")


def samples(body: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """Metric samples (name, labels, value) of one FinetuneJob, from its status."""
    meta, st, spec = body.get("metadata") or {}, body.get("status") or {}, body.get("spec") or {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    model = str(st.get("model") or (spec.get("model") or {}).get("config") or "")
    out = []
    for which in ("base", "finetuned"):
        m = (st.get("metrics") or {}).get(which) or {}
        for key, iou in IOU.items():
            if num(m.get(key)) is not None:
                out.append(("edgetune_finetune_map_ratio", {"namespace": ns, "name": name, "model": model,
                                                            "which": which, "iou": iou}, num(m[key])))
    pct = num((st.get("progress") or {}).get("percent"))
    if pct is not None:
        out.append(("edgetune_finetune_progress_ratio", {"namespace": ns, "name": name}, pct / 100.0))
    return out
