"""The planner: a pure function from (resource, its Jobs and Pods, the resource it refers to,
the time) to a Plan (Jobs to create/delete, the new status, Events to emit, when to look again).

Level-triggered: the same inputs always give the same plan, so any number of re-runs (after a
restart, on every Job/Pod event) converge on one Job per step and one status. A step whose
result has been recorded in status (Succeeded/Failed) is final ("sticky"), so the figures do
not depend on Pods still existing.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import posixpath
from typing import Any, Mapping

from edgetune_jobs import contract

from . import builders, schema
from .cron import Cron, CronError
from .observe import (fmt_time, get_condition, human_duration, parse_time, set_condition,
                      step_observation)
from .settings import Settings

FINAL = ("Succeeded", "Failed")
FINISHING_REQUEUE = 2.0
MAX_REQUEUE = 3600.0


@dataclasses.dataclass
class Plan:
    status: dict
    create: list[dict] = dataclasses.field(default_factory=list)
    delete: list[str] = dataclasses.field(default_factory=list)
    events: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (type, reason, message)
    requeue_after: float | None = None
    failed_steps: list[str] = dataclasses.field(default_factory=list)

    def requeue(self, seconds: float) -> None:
        seconds = max(0.5, min(float(seconds), MAX_REQUEUE))
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def _camel_coco(m: Mapping[str, Any] | None) -> dict | None:
    if not isinstance(m, Mapping):
        return None
    out = {k: float(m[k]) for k in contract.COCO_KEYS if isinstance(m.get(k), (int, float))
           and not isinstance(m.get(k), bool)}
    return out or None


def _camel_latency(m: Mapping[str, Any] | None) -> dict | None:
    if not isinstance(m, Mapping):
        return None
    out = {}
    for key in contract.LATENCY_STATS:  # mean_ms -> meanMs
        v = m.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key.split("_")[0] + "Ms"] = round(float(v), 4)
    return out or None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class _Ctx:
    def __init__(self, body: Mapping[str, Any], jobs: list[dict], pods: list[dict], settings: Settings,
                 now: dt.datetime):
        self.body = body
        self.kind = body["kind"]
        meta = body["metadata"]
        self.name, self.ns = meta["name"], meta["namespace"]
        self.generation = meta.get("generation")
        self.spec = schema.apply_defaults(self.kind, body.get("spec") or {})
        self.prev = copy.deepcopy(body.get("status") or {})
        self.status = copy.deepcopy(self.prev)
        self.settings = settings
        self.now = now
        self.jobs = {j["name"]: j for j in jobs if j.get("name")}
        self.pods = pods
        self.claim = builders.claim_of(self.spec, settings)
        self.plan = Plan(status=self.status)

    # --- steps ---
    def prev_step(self, step: str) -> dict | None:
        for s in self.prev.get("steps") or []:
            if s.get("name") == step:
                return s
        return None

    def observe(self, step: str, run: int = 1) -> dict:
        jname = builders.job_name(self.name, step, run)
        prev = self.prev_step(step)
        if prev and prev.get("job") == jname and prev.get("phase") in FINAL:
            return {"phase": prev["phase"], "sticky": True, "job": jname, "reason": prev.get("reason", ""),
                    "message": prev.get("message", ""), "node": prev.get("node")}
        job = self.jobs.get(jname)
        pods = [p for p in self.pods if p.get("job") == jname or (p.get("job") is None and p.get("step") == step
                                                                  and p.get("run") == run)]
        obs = step_observation(job, pods, self.now)
        obs.setdefault("job", jname)
        return obs

    def create(self, step: str, inputs: Mapping[str, Any], run: int = 1) -> dict:
        job = builders.build_job(self.body, step, self.settings, inputs, run=run)
        self.plan.create.append(job)  # the runtime announces it (Event JobCreated) once the API server took it
        if not self.status.get("startTime"):
            self.status["startTime"] = fmt_time(self.now)
        return {"phase": "Pending", "job": job["metadata"]["name"], "reason": "JobCreated",
                "message": f"Job {job['metadata']['name']} created, waiting for its Pod", "new": True}

    def record_step(self, step: str, obs: dict) -> None:
        """Write the step's entry in status.steps and emit transition Events."""
        if obs.get("sticky"):
            return
        phase = {"Finishing": "Running"}.get(obs["phase"], obs["phase"])
        prev = self.prev_step(step) or {}
        same_job = prev.get("job") == obs.get("job")
        entry = {"name": step, "job": obs.get("job"), "phase": phase,
                 "reason": obs.get("reason", ""), "message": obs.get("message", "")}
        if obs.get("node"):
            entry["node"] = obs["node"]
        start = obs.get("startTime") or (prev.get("startTime") if same_job else None)
        if start:
            entry["startTime"] = fmt_time(parse_time(start))
        if phase in FINAL:
            end = obs.get("completionTime") or fmt_time(self.now)
            entry["completionTime"] = fmt_time(parse_time(end))
            t0, t1 = parse_time(entry.get("startTime")), parse_time(entry["completionTime"])
            if t0 and t1:
                entry["durationSeconds"] = round(max(0.0, (t1 - t0).total_seconds()), 3)
        steps = [s for s in self.status.get("steps") or [] if s.get("name") != step]
        steps.append(entry)
        order = {s: i for i, s in enumerate(builders.KIND_STEPS[self.kind])}
        steps.sort(key=lambda s: order.get(s.get("name"), 99))
        self.status["steps"] = steps
        prev_phase = prev.get("phase") if same_job else None
        if phase != prev_phase:
            if phase == "Running":
                self.plan.events.append(("Normal", "StepRunning",
                                         f"Step {step} running" + (f" on {obs['node']}" if obs.get("node") else "")))
            elif phase == "Succeeded":
                self.plan.events.append(("Normal", "StepSucceeded", f"Step {step} succeeded: {obs.get('message') or 'ok'}"))
            elif phase == "Failed":
                self.plan.events.append(("Warning", "StepFailed", f"Step {step} failed ({obs.get('reason')}): "
                                                                  f"{obs.get('message')}"))
                self.plan.failed_steps.append(step)
        if obs["phase"] == "Finishing":
            self.plan.requeue(FINISHING_REQUEUE)

    def artifacts_from(self, step: str, result: Mapping[str, Any], run: int = 1) -> dict:
        arts = {}
        for key, rel in (result.get("artifacts") or {}).items():
            if isinstance(rel, str) and rel:
                arts[key] = builders.artifact_uri(self.claim, self.ns, self.kind, self.name, step, rel, run)
        if arts:
            self.status["artifacts"] = {**(self.status.get("artifacts") or {}), **arts}
        prov = result.get("provenance") or {}
        if prov:
            self.status["provenance"] = {**(self.status.get("provenance") or {}), step: prov}
        return arts

    def path(self, uri: str | None) -> str | None:
        return builders.uri_to_path(uri, self.claim) if uri else None

    # --- conditions ---
    def cond(self, type_: str, status: str, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(self.status.get("conditions") or [], type_, status, reason,
                                                  message, self.now, self.generation)

    def scheduled_from(self, obs: dict | None) -> None:
        if not obs or obs.get("sticky") or obs["phase"] == "NotCreated":
            return
        sched = obs.get("scheduled")
        if sched is None:
            if obs["phase"] in FINAL:
                return
            self.cond("Scheduled", "Unknown", "WaitingForPod", f"step {obs.get('job')}: no Pod yet")
        elif sched.get("status") == "True":
            node = obs.get("node")
            self.cond("Scheduled", "True", "Scheduled",
                      f"Pod {obs.get('pod')} scheduled" + (f" on {node}" if node else ""))
        else:
            prev = get_condition(self.prev, "Scheduled")
            self.cond("Scheduled", "False", sched.get("reason") or "Unschedulable",
                      sched.get("message") or "the Pod cannot be scheduled")
            if not prev or prev.get("status") != "False":
                self.plan.events.append(("Warning", sched.get("reason") or "Unschedulable",
                                         f"Pod {obs.get('pod')}: {sched.get('message')}"))

    def finish(self, phase: str, reason: str, message: str, *, progressing_reason: str | None = None) -> Plan:
        st = self.status
        prev_phase = self.prev.get("phase")
        st["phase"] = phase
        st["message"] = message
        if self.generation is not None:
            st["observedGeneration"] = self.generation
        if phase in FINAL:
            st.setdefault("completionTime", fmt_time(self.now))
        else:
            st.pop("completionTime", None)
        if phase == "Succeeded":
            self.cond("Ready", "True", "Succeeded", message)
            self.cond("Progressing", "False", "Succeeded", message)
            self.cond("Failed", "False", "NoFailure", "")
        elif phase == "Failed":
            self.cond("Ready", "False", reason, message)
            self.cond("Progressing", "False", "Failed", message)
            self.cond("Failed", "True", reason, message)
        else:
            self.cond("Ready", "False", reason, message)
            if phase in ("Running", "Pending") and progressing_reason != "Waiting":
                self.cond("Progressing", "True", reason, message)
            else:
                self.cond("Progressing", "False", reason, message)
            self.cond("Failed", "False", "NoFailure", "")
        if phase != prev_phase:
            if phase == "Succeeded":
                self.plan.events.append(("Normal", "Succeeded", message))
            elif phase == "Failed":
                self.plan.events.append(("Warning", reason or "Failed", message))
        return self.plan


# --- FinetuneJob --------------------------------------------------------------------------------


def _progress_status(rec: Mapping[str, Any], now: dt.datetime) -> dict:
    out: dict[str, Any] = {"updateTime": fmt_time(now)}
    mapping = {"percent": "percent", "epoch": "epoch", "epochs": "epochs", "iter": "iteration",
               "iters": "iterations", "loss": "loss", "eta_seconds": "etaSeconds"}
    for src, dst in mapping.items():
        v = rec.get(src)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[dst] = int(v) if dst in ("epoch", "epochs", "iteration", "iterations") else round(float(v), 4)
    if "percent" not in out and out.get("iterations"):
        out["percent"] = round(100.0 * out.get("iteration", 0) / out["iterations"], 2)
    pct = out.get("percent")
    text = f"{pct:.0f}%" if pct is not None else "running"
    if out.get("etaSeconds") is not None:
        text += f" ETA {human_duration(out['etaSeconds'])}"
    out["text"] = text
    return out


def plan_finetunejob(c: _Ctx, progress: Mapping[str, Any] | None) -> Plan:
    st = c.status
    st["model"] = c.spec["model"]["config"]
    obs = c.observe("finetune")
    if obs["phase"] == "NotCreated":
        obs = c.create("finetune", {})
    if obs["phase"] == "Succeeded" and not obs.get("sticky"):
        res = obs["result"]
        metrics = res.get("metrics") or {}
        figures = {}
        for which in ("base", "finetuned"):
            m = _camel_coco(metrics.get(which))
            if m:
                figures[which] = m
        if figures:
            st["metrics"] = figures
        c.artifacts_from("finetune", res)
    c.record_step("finetune", obs)
    c.scheduled_from(obs)
    phase = obs["phase"]
    if phase == "Succeeded":
        prog = dict(st.get("progress") or {})
        prog.update(percent=100.0, etaSeconds=0.0, text="100%", updateTime=prog.get("updateTime") or fmt_time(c.now))
        st["progress"] = prog
        m = (st.get("metrics") or {}).get("finetuned") or {}
        msg = "fine-tuned" + (f": mAP {m['mAP']:.3f}" if "mAP" in m else "")
        if "mAP50" in m:
            msg += f", mAP50 {m['mAP50']:.3f}"
        return c.finish("Succeeded", "Succeeded", msg)
    if phase == "Failed":
        return c.finish("Failed", obs.get("reason") or "Failed", f"finetune: {obs.get('message')}")
    if phase in ("Running", "Finishing"):
        if progress:
            st["progress"] = _progress_status(progress, c.now)
        elif "progress" not in st:
            st["progress"] = {"percent": 0.0, "text": "0%", "updateTime": fmt_time(c.now)}
        c.plan.requeue(c.settings.progress_interval)
        text = (st.get("progress") or {}).get("text", "")
        return c.finish("Running", "StepRunning", f"finetune: {text}".strip())
    return c.finish("Pending", obs.get("reason") or "Pending", f"finetune: {obs.get('message')}")


# --- ModelConversion ------------------------------------------------------------------------------


def _config_name(config: str) -> str:
    base = posixpath.basename(config.rstrip("/"))
    return base[:-3] if base.endswith(".py") else base


def resolve_source(c: _Ctx, related: Mapping[str, Any] | None) -> tuple[bool, str, str, dict]:
    """(ready, reason, message, resolved) of a ModelConversion's source."""
    src = c.spec["source"]
    if "model" in src:
        m = src["model"]
        resolved = {"checkpoint": m["checkpoint"], "config": m["config"], "model": m.get("name") or _config_name(m["config"])}
        if m.get("valDataset"):
            resolved["valDataset"] = m["valDataset"]
        return True, "SourceReady", "checkpoint and config given", resolved
    ref = src["finetuneJob"]
    if related is None:
        return False, "SourceNotFound", f"FinetuneJob {ref!r} not found in namespace {c.ns}", {}
    rst = related.get("status") or {}
    phase = rst.get("phase") or "Pending"
    if phase == "Failed":
        return False, "SourceFailed", f"FinetuneJob {ref!r} failed: {rst.get('message', '')}", {}
    if phase != "Succeeded":
        return False, "WaitingForSource", f"waiting for FinetuneJob {ref!r} to succeed (phase {phase})", {}
    arts = rst.get("artifacts") or {}
    missing = [k for k in ("checkpoint", "config") if not arts.get(k)]
    if missing:
        return False, "SourceArtifactsMissing", f"FinetuneJob {ref!r} records no {', '.join(missing)} artifact", {}
    for k in ("checkpoint", "config"):
        if builders.uri_to_path(arts[k], c.claim) is None:
            return False, "SourceOnAnotherClaim", (f"FinetuneJob {ref!r} artifacts are on another volume "
                                                   f"({arts[k]}); use the same artifacts.claimName"), {}
    model = rst.get("model") or ((related.get("spec") or {}).get("model") or {}).get("config") or ref
    resolved = {"finetuneJob": ref, "checkpoint": arts["checkpoint"], "config": arts["config"], "model": model}
    if arts.get("dataset"):
        resolved["valDataset"] = arts["dataset"]
    return True, "SourceReady", f"FinetuneJob {ref!r} succeeded", resolved


def _in_pod(c: _Ctx, value: str | None) -> str | None:
    if value is None:
        return None
    if value.startswith(f"{contract.ARTIFACT_SCHEME}://"):
        return c.path(value)
    return builders.volume_path(value)


def plan_modelconversion(c: _Ctx, related: Mapping[str, Any] | None) -> Plan:
    st = c.status
    spec = c.spec
    steps = ["export", "build-engine"] + (["verify"] if spec["verify"]["enabled"] else [])
    started = bool(c.prev_step("export")) or builders.job_name(c.name, "export") in c.jobs
    if started and st.get("source"):
        ok, reason, message, resolved = True, "SourceReady", "source resolved when the export started", None
        prev_cond = get_condition(c.prev, "SourceReady")
        if prev_cond and prev_cond.get("status") == "True":
            message = prev_cond.get("message") or message
    else:
        ok, reason, message, resolved = resolve_source(c, related)
    prev_src = get_condition(c.prev, "SourceReady")
    c.cond("SourceReady", "True" if ok else "False", reason, message)
    if not ok:
        if not prev_src or prev_src.get("reason") != reason:
            c.plan.events.append(("Warning", reason, message))
        st["stage"] = "Waiting"
        return c.finish("Pending", reason, message, progressing_reason="Waiting")
    if resolved is not None:
        st["model"] = resolved.pop("model")
        st["source"] = resolved
    source = st["source"]
    current = None
    for step in steps:
        obs = c.observe(step)
        if obs["phase"] == "NotCreated":
            arts = st.get("artifacts") or {}
            if step == "export":
                inputs = {"checkpoint": _in_pod(c, source.get("checkpoint")),
                          "config": _in_pod(c, source.get("config")),
                          "val_dataset": _in_pod(c, source.get("valDataset"))}
            elif step == "build-engine":
                inputs = {"onnx": c.path(arts.get("onnx")), "meta": c.path(arts.get("meta"))}
            else:
                inputs = {"model": c.path(arts.get("engine") or arts.get("model")), "meta": c.path(arts.get("meta")),
                          "val_dataset": _in_pod(c, source.get("valDataset"))}
            missing = [k for k, v in inputs.items() if v is None and k != "val_dataset"]
            if step == "verify" and inputs["val_dataset"] is None:
                missing.append("val_dataset")
            if missing:
                obs = {"phase": "Failed", "job": builders.job_name(c.name, step), "reason": "MissingArtifact",
                       "message": f"cannot start {step}: no {', '.join(missing)} from the previous step",
                       "completionTime": fmt_time(c.now)}
            else:
                obs = c.create(step, inputs)
        if obs.get("result") and not obs.get("sticky"):  # figures also from a failed step (verify)
            res = obs["result"]
            m = res.get("metrics") or {}
            figs = dict(st.get("metrics") or {})
            if step == "export":
                if _num(m.get("onnx_bytes")) is not None:
                    figs["onnxBytes"] = _num(m["onnx_bytes"])
            elif step == "build-engine":
                for src, dst in (("engine_bytes", "engineBytes"), ("build_seconds", "buildSeconds")):
                    if _num(m.get(src)) is not None:
                        figs[dst] = _num(m[src])
            else:
                for which in ("converted", "reference"):
                    cm = _camel_coco(m.get(which))
                    if cm:
                        figs[which] = cm
                drop = _num(m.get("map_drop"))
                if drop is None and figs.get("converted", {}).get("mAP") is not None \
                        and figs.get("reference", {}).get("mAP") is not None:
                    drop = figs["reference"]["mAP"] - figs["converted"]["mAP"]
                if drop is not None:
                    figs["mapDrop"] = round(drop, 6)
                    limit = spec["verify"]["maxMapDrop"]
                    if drop > limit + 1e-9 and obs["phase"] == "Succeeded":
                        obs = dict(obs, phase="Failed", reason="AccuracyDropTooLarge",
                                   message=f"mAP drop {drop:.4f} exceeds verify.maxMapDrop {limit:.4f}")
            if figs:
                st["metrics"] = figs
            if obs["phase"] == "Succeeded":
                c.artifacts_from(step, res)
        c.record_step(step, obs)
        if obs["phase"] != "Succeeded":
            current = (step, obs)
            break
    if current is None:
        st["stage"] = "Done"
        m = st.get("metrics") or {}
        msg = f"converted to {spec['backend']} {spec['precision']}"
        if "mapDrop" in m:
            msg += f": mAP {m.get('converted', {}).get('mAP', float('nan')):.3f}, drop {m['mapDrop']:.4f}"
        return c.finish("Succeeded", "Succeeded", msg)
    step, obs = current
    st["stage"] = step
    c.scheduled_from(obs)
    if obs["phase"] == "Failed":
        return c.finish("Failed", obs.get("reason") or "Failed", f"{step}: {obs.get('message')}")
    if obs["phase"] in ("Running", "Finishing"):
        return c.finish("Running", "StepRunning", f"{step}: {obs.get('message')}")
    return c.finish("Pending", obs.get("reason") or "Pending", f"{step}: {obs.get('message')}")


# --- EdgeBenchmark ------------------------------------------------------------------------------


def model_of(c: _Ctx, conv: Mapping[str, Any] | None) -> tuple[bool, str, str, dict]:
    ref = c.spec["modelConversion"]
    if conv is None:
        return False, "SourceNotFound", f"ModelConversion {ref!r} not found in namespace {c.ns}", {}
    cst = conv.get("status") or {}
    phase = cst.get("phase") or "Pending"
    if phase == "Failed":
        return False, "ModelConversionFailed", f"ModelConversion {ref!r} failed: {cst.get('message', '')}", {}
    if phase != "Succeeded":
        return False, "WaitingForModel", f"waiting for ModelConversion {ref!r} to succeed (phase {phase})", {}
    arts = cst.get("artifacts") or {}
    model = arts.get("engine") or arts.get("model")
    if not model or not arts.get("meta"):
        return False, "ModelArtifactsMissing", f"ModelConversion {ref!r} records no engine/model or meta", {}
    if c.path(model) is None or c.path(arts["meta"]) is None:
        return False, "SourceOnAnotherClaim", f"ModelConversion {ref!r} artifacts are on another volume", {}
    cspec = schema.apply_defaults("ModelConversion", conv.get("spec") or {})
    val = (cst.get("source") or {}).get("valDataset")
    inputs = {"model": c.path(model), "meta": c.path(arts["meta"]), "backend": cspec["backend"]}
    if val:
        vpath = _in_pod(c, val)
        if vpath:
            inputs["images"] = vpath.rstrip("/") + "/images"
    info = {"model": cst.get("model") or ref, "backend": cspec["backend"], "precision": cspec["precision"]}
    return True, "ModelReady", f"ModelConversion {ref!r} succeeded", {"inputs": inputs, "info": info}


def _apply_benchmark_result(c: _Ctx, obs: dict, run: int) -> None:
    st = c.status
    res = obs["result"]
    m = res.get("metrics") or {}
    lat = {}
    for stage in contract.STAGES:
        v = _camel_latency(m.get(stage))
        if v:
            lat[stage] = v
    if lat:
        st["latency"] = lat
    fps = _num(m.get("fps"))
    if fps is not None:
        st["throughputFps"] = fps
    prov = res.get("provenance") or {}
    device = prov.get("device") or builders.device_of(c.kind, c.spec, "benchmark", c.settings) or obs.get("node")
    if device:
        st["device"] = contract.device_label(device)
    st["lastRunTime"] = fmt_time(parse_time(obs.get("completionTime")) or c.now)
    c.artifacts_from("benchmark", res, run)


def _history_entry(c: _Ctx, obs: dict, run: int) -> dict:
    st = c.status
    entry: dict[str, Any] = {"run": run, "phase": obs["phase"], "job": obs.get("job"),
                             "message": (obs.get("message") or "")[:512]}
    step = next((s for s in st.get("steps") or [] if s.get("name") == "benchmark"), {})
    for k in ("startTime", "completionTime"):
        if step.get(k):
            entry[k] = step[k]
    if obs["phase"] == "Succeeded":
        pipe = (st.get("latency") or {}).get("pipeline") or {}
        if "p50Ms" in pipe:
            entry["p50Ms"] = pipe["p50Ms"]
        if "p99Ms" in pipe:
            entry["p99Ms"] = pipe["p99Ms"]
        if "throughputFps" in st:
            entry["throughputFps"] = st["throughputFps"]
    return entry


def plan_edgebenchmark(c: _Ctx, conv: Mapping[str, Any] | None) -> Plan:
    st = c.status
    spec = c.spec
    ok, reason, message, model = model_of(c, conv)
    prev_mr = get_condition(c.prev, "ModelReady")
    c.cond("ModelReady", "True" if ok else "False", reason, message)
    if not ok and (not prev_mr or prev_mr.get("reason") != reason):
        c.plan.events.append(("Warning" if reason != "WaitingForModel" else "Normal", reason, message))
    cron = None
    if spec.get("schedule"):
        try:
            cron = Cron(spec["schedule"])
        except CronError as exc:
            c.cond("Scheduled", "False", "InvalidSchedule", str(exc))
            return c.finish("Failed", "InvalidSchedule", f"schedule: {exc}")
    run = int(st.get("run") or 1)
    obs = c.observe("benchmark", run)
    if obs["phase"] == "NotCreated":
        if not ok:
            return c.finish("Waiting", reason, message, progressing_reason="Waiting")
        st.update(model["info"])
        st["run"] = run
        if cron is not None and not st.get("lastScheduleTime"):
            st["lastScheduleTime"] = fmt_time(c.now)
        obs = c.create("benchmark", model["inputs"], run=run)
    if obs["phase"] == "Succeeded" and not obs.get("sticky"):
        _apply_benchmark_result(c, obs, run)
    c.record_step("benchmark", obs)
    if obs["phase"] in FINAL and not obs.get("sticky"):
        hist = [h for h in st.get("history") or [] if h.get("run") != run]
        hist.insert(0, _history_entry(c, obs, run))
        st["history"] = hist[: spec["historyLimit"]]
    c.scheduled_from(obs)
    phase = obs["phase"]
    if phase in FINAL:
        # prune Jobs of runs that fell out of the history
        keep_from = run - spec["historyLimit"] + 1
        for j in c.jobs.values():
            if j.get("step") == "benchmark" and j.get("run", 1) < keep_from and not j.get("deleting"):
                c.plan.delete.append(j["name"])
        if cron is not None:
            last = parse_time(st.get("lastScheduleTime")) or parse_time(obs.get("completionTime")) or c.now
            nxt = cron.next_after(last)
            done = parse_time((next((s for s in st.get("steps") or [] if s.get("name") == "benchmark"), {})
                               ).get("completionTime"))
            if done and nxt <= done:  # ticks missed while the run was running are skipped
                nxt = cron.next_after(done)
            if c.now >= nxt and ok:
                run += 1
                st["run"] = run
                st["lastScheduleTime"] = fmt_time(c.now)
                st.pop("nextScheduleTime", None)
                st.update(model["info"])
                obs = c.create("benchmark", model["inputs"], run=run)
                c.record_step("benchmark", obs)
                c.cond("Scheduled", "Unknown", "WaitingForPod", f"run {run}: Job {obs['job']} created")
                return c.finish("Pending", "JobCreated", f"run {run}: {obs['message']}")
            st["nextScheduleTime"] = fmt_time(nxt)
            c.plan.requeue((nxt - c.now).total_seconds() + 0.5)
    if phase == "Succeeded":
        pipe = (st.get("latency") or {}).get("pipeline") or {}
        msg = f"run {run}: " if cron is not None else ""
        msg += "benchmarked"
        if "p50Ms" in pipe:
            msg += f": pipeline p50 {pipe['p50Ms']:.1f} ms, p99 {pipe.get('p99Ms', float('nan')):.1f} ms"
        if "throughputFps" in st:
            msg += f", {st['throughputFps']:.1f} FPS"
        return c.finish("Succeeded", "Succeeded", msg)
    if phase == "Failed":
        return c.finish("Failed", obs.get("reason") or "Failed", f"benchmark: {obs.get('message')}")
    if phase in ("Running", "Finishing"):
        return c.finish("Running", "StepRunning", f"benchmark: {obs.get('message')}")
    return c.finish("Pending", obs.get("reason") or "Pending", f"benchmark: {obs.get('message')}")


# --- entry points -------------------------------------------------------------------------------


def plan(body: Mapping[str, Any], jobs: list[dict], pods: list[dict], settings: Settings,
         now: dt.datetime, *, related: Mapping[str, Any] | None = None,
         progress: Mapping[str, Any] | None = None) -> Plan:
    """Everything the operator should do for one resource, given what it sees."""
    c = _Ctx(body, jobs, pods, settings, now)
    kind = c.kind
    if kind == "FinetuneJob":
        return plan_finetunejob(c, progress)
    if kind == "ModelConversion":
        return plan_modelconversion(c, related)
    if kind == "EdgeBenchmark":
        return plan_edgebenchmark(c, related)
    raise ValueError(f"unknown kind {kind!r}")


def related_key(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The (kind, namespace, name) of the resource this one depends on, if any."""
    kind = body.get("kind")
    ns = body["metadata"]["namespace"]
    spec = body.get("spec") or {}
    if kind == "ModelConversion":
        ref = (spec.get("source") or {}).get("finetuneJob")
        return ("FinetuneJob", ns, ref) if ref else None
    if kind == "EdgeBenchmark":
        ref = spec.get("modelConversion")
        return ("ModelConversion", ns, ref) if ref else None
    return None


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 JSON merge patch turning `old` into `new` (None: nothing to change)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for k in old:
        if k not in new:
            patch[k] = None
    for k, v in new.items():
        if k not in old:
            patch[k] = v
        elif isinstance(v, dict) and isinstance(old[k], dict):
            sub = merge_patch(old[k], v)
            if sub is not None:
                patch[k] = sub
        elif old[k] != v:
            patch[k] = v
    return patch or None
