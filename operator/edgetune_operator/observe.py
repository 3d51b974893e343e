"""Pure helpers: compact summaries of Jobs and Pods (what the operator keeps in memory), the
state of one step as seen from its Job and Pods, conditions and time formatting."""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from edgetune_contract import names, results


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def fmt_time(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(dt.timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: Any) -> dt.datetime | None:
    if not s:
        return None
    if isinstance(s, dt.datetime):
        return s if s.tzinfo else s.replace(tzinfo=dt.timezone.utc)
    text = str(s).replace("Z", "+00:00")
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def owner_key_from_labels(namespace: str, labels: Mapping[str, str] | None) -> tuple[str, str, str] | None:
    labels = labels or {}
    kind, name = labels.get(names.LABEL_KIND), labels.get(names.LABEL_RESOURCE)
    if not kind or not name or labels.get(names.LABEL_MANAGED_BY) != names.MANAGED_BY:
        return None
    return (kind, namespace, name)


def _run_of(labels: Mapping[str, str]) -> int:
    try:
        return int(labels.get(names.LABEL_RUN, "1"))
    except ValueError:
        return 1


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
NODE_LOST_DISRUPTION = "DeletionByTaintManager"  # the DisruptionTarget reason of a Pod evicted from a lost node


def summarize_job(job: Mapping[str, Any]) -> dict:
    meta = job.get("metadata") or {}
    labels = meta.get("labels") or {}
    st = job.get("status") or {}
    conds = {c.get("type"): {"status": c.get("status"), "reason": c.get("reason") or "",
                             "message": c.get("message") or "", "time": c.get("lastTransitionTime")}
             for c in st.get("conditions") or [] if c.get("type")}
    return {
        "name": meta.get("name"), "uid": meta.get("uid"),
        "step": labels.get(names.LABEL_STEP), "run": _run_of(labels),
        "created": meta.get("creationTimestamp"), "deleting": bool(meta.get("deletionTimestamp")),
        "active": st.get("active") or 0, "succeeded": st.get("succeeded") or 0, "failed": st.get("failed") or 0,
        "startTime": st.get("startTime"), "completionTime": st.get("completionTime"),
        "conditions": conds,
    }


def summarize_pod(pod: Mapping[str, Any]) -> dict:
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    spec = pod.get("spec") or {}
    st = pod.get("status") or {}
    sched = ready = disruption = None
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled":
            sched = {"status": c.get("status"), "reason": c.get("reason") or "", "message": c.get("message") or ""}
        elif c.get("type") == "Ready":
            ready = c.get("status")
        elif c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            # set before the Pod is deleted for it: by the taint manager when its node is lost,
            # by preemption, by an eviction
            disruption = {"reason": c.get("reason") or "", "message": c.get("message") or ""}
    container: dict[str, Any] = {}
    for cs in st.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "terminated" in state and state["terminated"] is not None:
            t = state["terminated"]
            container = {"state": "terminated", "exitCode": t.get("exitCode"), "reason": t.get("reason") or "",
                         "message": t.get("message") or "", "startedAt": t.get("startedAt"),
                         "finishedAt": t.get("finishedAt")}
        elif "running" in state and state["running"] is not None:
            container = {"state": "running", "startedAt": state["running"].get("startedAt")}
        elif "waiting" in state and state["waiting"] is not None:
            w = state["waiting"]
            container = {"state": "waiting", "reason": w.get("reason") or "", "message": w.get("message") or ""}
    return {
        "name": meta.get("name"), "uid": meta.get("uid"),
        "job": labels.get("batch.kubernetes.io/job-name") or labels.get("job-name"),
        "step": labels.get(names.LABEL_STEP), "run": _run_of(labels),
        "created": meta.get("creationTimestamp"), "deleting": bool(meta.get("deletionTimestamp")),
        "phase": st.get("phase") or "Pending", "node": spec.get("nodeName"),
        "reason": st.get("reason") or "", "message": st.get("message") or "",
        "scheduled": sched, "container": container, "ready": ready, "disruption": disruption,
        # an Indexed Job's replica (its rank); None for a plain Job
        "index": labels.get(COMPLETION_INDEX) or (meta.get("annotations") or {}).get(COMPLETION_INDEX),
    }


def summarize_node(node: Mapping[str, Any]) -> dict:
    """What the operator keeps of a Node: whether it is Ready, and the kubelet's or the node
    lifecycle controller's word on it; its labels, taints and cordon (what a fleet benchmark
    selects nodes and device groups by)."""
    meta = node.get("metadata") or {}
    spec = node.get("spec") or {}
    ready = {}
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            ready = c
    taints = [{k: t[k] for k in ("key", "value", "effect") if t.get(k)} for t in spec.get("taints") or []]
    return {"name": meta.get("name"), "ready": ready.get("status") or "Unknown",
            "reason": ready.get("reason") or "", "message": ready.get("message") or "",
            "since": ready.get("lastTransitionTime"),
            "unreachable": any(t.get("key") == UNREACHABLE_TAINT for t in taints),
            "labels": dict(meta.get("labels") or {}), "taints": taints,
            "unschedulable": bool(spec.get("unschedulable"))}


# --- conditions -------------------------------------------------------------------------------


def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str,
                  now: dt.datetime, generation: int | None) -> list[dict]:
    """Set one metav1.Condition (lastTransitionTime changes only when status changes)."""
    out = []
    found = False
    for c in conditions:
        if c.get("type") == type_:
            found = True
            ltt = c.get("lastTransitionTime") if c.get("status") == status else fmt_time(now)
            c = {"type": type_, "status": status, "reason": reason, "message": message[:32768],
                 "lastTransitionTime": ltt or fmt_time(now)}
            if generation is not None:
                c["observedGeneration"] = generation
        out.append(c)
    if not found:
        c = {"type": type_, "status": status, "reason": reason, "message": message[:32768],
             "lastTransitionTime": fmt_time(now)}
        if generation is not None:
            c["observedGeneration"] = generation
        out.append(c)
    return out


def get_condition(status: Mapping[str, Any] | None, type_: str) -> dict | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


# --- steps ------------------------------------------------------------------------------------


def human(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def one_line(text: str, limit: int = 1024) -> str:
    """The last non-empty line of a text (a traceback's last line is the error), trimmed."""
    lines = [ln.strip() for ln in (text or "").strip().splitlines() if ln.strip()]
    line = lines[-1] if lines else ""
    return line[:limit]


def result_of(pod: Mapping[str, Any] | None) -> tuple[results.StepResult | None, str]:
    """(the step's typed result or None, error/fallback text) from a terminated Pod summary."""
    if not pod:
        return None, ""
    msg = (pod.get("container") or {}).get("message") or ""
    if not msg.strip():
        return None, ""
    try:
        return results.decode(msg), ""
    except results.ResultError as exc:
        return None, one_line(msg) or str(exc)


# Waiting reasons of a container that is on its way (not stuck): pulling an image, mounting.
STARTING = ("ContainerCreating", "PodInitializing")


def step_observation(job: Mapping[str, Any] | None, pods: list[Mapping[str, Any]],
                     now: dt.datetime, result_grace: float = 30.0, waiting_timeout: float | None = None) -> dict:
    """What a step's Job and Pods say: phase (NotCreated, Pending, Running, Succeeded, Failed,
    Finishing), the result document, the scheduling state, the node. A Pod stuck waiting (not
    merely starting) for longer than waiting_timeout fails the step with the kubelet's reason
    (obs["stuck"]: the Job is to be deleted); until then obs["stuck_in"] says how long is left."""
    if job is None:
        return {"phase": "NotCreated"}
    pods = sorted((p for p in pods if p.get("job") in (None, job["name"])),
                  key=lambda p: (p.get("created") or "", p.get("name") or ""))
    latest = pods[-1] if pods else None
    obs: dict[str, Any] = {"job": job["name"], "jobUID": job.get("uid"),
                           "startTime": job.get("startTime") or job.get("created"),
                           "completionTime": job.get("completionTime")}
    if latest is not None:
        # several Pods at once (an Indexed Job's replicas): one the scheduler cannot place
        # speaks for the step; results come from replica 0
        unplaced = [p for p in pods if (p.get("scheduled") or {}).get("status") == "False"
                    and p.get("phase") == "Pending" and not p.get("deleting")]
        shown = unplaced[-1] if unplaced else latest
        obs["pod"] = shown["name"]
        obs["pod_created"] = shown.get("created")
        obs["node"] = shown.get("node")
        obs["scheduled"] = shown.get("scheduled")
        live = [p for p in pods if not p.get("deleting") and p.get("phase") in ("Pending", "Running")]
        obs["running_pods"] = len({p.get("index") or p["name"] for p in live if p.get("phase") == "Running"})
        obs["first_pod_created"] = min((p.get("created") for p in pods if p.get("created")), default=None)
        evicted = [{"pod": p["name"], "node": p.get("node"), "message": p["disruption"].get("message") or ""}
                   for p in pods if (p.get("disruption") or {}).get("reason") == NODE_LOST_DISRUPTION]
        if evicted:
            obs["evicted"] = evicted
    conds = job.get("conditions") or {}
    # FailureTarget / SuccessCriteriaMet: the Job controller's decision, set before its Pods have
    # terminated (Failed / Complete follow then); a Pod on a lost node never terminates
    def true(*types: str) -> str | None:
        return next((t for t in types if (conds.get(t) or {}).get("status") == "True"), None)
    complete_type, failed_type = true("Complete", "SuccessCriteriaMet"), true("Failed", "FailureTarget")
    complete, failed = bool(complete_type), bool(failed_type) and not complete_type
    terminated = [p for p in pods if (p.get("container") or {}).get("state") == "terminated"
                  or p.get("phase") in ("Succeeded", "Failed")]
    if complete or failed:
        want_ok = complete
        cand = [p for p in terminated if ((p.get("container") or {}).get("exitCode") == 0) == want_ok] or terminated
        cand = [p for p in cand if p.get("index") in (None, "0")] or cand  # replica 0 reports
        pod = cand[-1] if cand else None
        doc, fallback = result_of(pod)
        obs["node"] = (pod or {}).get("node") or obs.get("node")
        cond = conds.get(failed_type if failed else complete_type) or {}
        finished = parse_time(job.get("completionTime")) or parse_time(cond.get("time")) or now
        # the Pod's final status not seen yet: after Complete, or after FailureTarget (set before the
        # Pods have terminated) unless a Pod was evicted from a lost node (it never terminates)
        waiting = complete or (failed_type == "FailureTarget" and not obs.get("evicted"))
        pod_pending = (pod is None and waiting) or \
            (pod is not None and (pod.get("container") or {}).get("state") != "terminated")
        if doc is None and not fallback and pod_pending and (now - finished).total_seconds() < result_grace:
            obs["phase"] = "Finishing"  # the Pod's final status has not been seen yet
            return obs
        if not obs.get("completionTime"):
            # failed Jobs have no completionTime: take the Failed condition's time, else the Pod's end
            obs["completionTime"] = cond.get("time") or ((pod or {}).get("container") or {}).get("finishedAt") \
                or fmt_time(now)
        if complete:
            if doc is None:
                obs.update(phase="Failed", reason="InvalidResult",
                           message=f"the step exited 0 but wrote no result document ({fallback or 'empty'})")
            elif not doc.ok:
                obs.update(phase="Failed", reason=doc.reason, message=doc.message, result=doc)
            else:
                obs.update(phase="Succeeded", reason=doc.reason, message=doc.message, result=doc)
        else:
            if doc is not None:
                obs.update(phase="Failed", reason=doc.reason if not doc.ok else "JobFailed",
                           message=doc.message or cond.get("message", ""), result=doc)
            else:
                container = (pod or {}).get("container") or {}
                exit_code = container.get("exitCode")
                reason = cond.get("reason") or "JobFailed"
                message = fallback or cond.get("message") or "the step's Job failed"
                if exit_code not in (None, 0) and fallback:
                    message = f"exit code {exit_code}: {fallback}"
                if obs.get("evicted") and not container:
                    # the node stopped responding, the taint manager evicted the Pod, and the
                    # Job's backoffLimit allowed no replacement
                    lost = obs["evicted"][-1]
                    reason = "NodeLost"
                    message = (f"node {lost['node'] or '?'} stopped responding while the step ran: its Pod "
                               f"{lost['pod']} was evicted ({lost['message'] or 'taint-based eviction'}); "
                               f"{cond.get('message') or 'the Job failed'}; raise spec.run.backoffLimit to "
                               f"retry the step when the node returns")
                elif container.get("reason") == "OOMKilled":
                    # the kernel killed it: the step had no chance to write a result document
                    reason = "OOMKilled"
                    message = (f"the step's container on node {obs.get('node') or '?'} was killed for exceeding "
                               f"its memory limit (exit code {exit_code}); raise resources.limits.memory "
                               f"of the step's placement" + (f"; last output: {fallback}" if fallback else ""))
                obs.update(phase="Failed", reason=reason, message=message)
        return obs
    # still active
    if latest is None:
        obs.update(phase="Pending", reason="JobCreated", message=f"Job {job['name']} created, waiting for its Pod")
        return obs
    sched = latest.get("scheduled") or {}
    c = latest.get("container") or {}
    if latest.get("phase") == "Running" or c.get("state") == "running" or obs.get("running_pods"):
        obs.update(phase="Running", reason="StepRunning", message=f"Pod {latest['name']} running on {latest.get('node')}")
    elif sched.get("status") == "False":
        obs.update(phase="Pending", reason=sched.get("reason") or "Unschedulable",
                   message=sched.get("message") or "the Pod cannot be scheduled")
    elif c.get("state") == "waiting" and c.get("reason"):
        obs.update(phase="Pending", reason=c["reason"], message=c.get("message") or c["reason"])
        since = parse_time(latest.get("created"))
        if c["reason"] not in STARTING and waiting_timeout is not None and since is not None:
            waited = (now - since).total_seconds()
            if waited >= waiting_timeout:
                obs.update(phase="Failed", stuck=True, completionTime=fmt_time(now),
                           message=f"{obs['message']} (Pod {latest['name']} on {latest.get('node') or 'no node'} "
                                   f"waited {human(waited)}, the waiting timeout is {human(waiting_timeout)})")
            else:
                obs["stuck_in"] = waiting_timeout - waited
    elif latest.get("phase") in ("Succeeded", "Failed"):
        obs.update(phase="Running", reason="StepFinishing", message=f"Pod {latest['name']} finished")
    else:
        obs.update(phase="Pending", reason="PodPending",
                   message=f"Pod {latest['name']} pending" + (f" on {latest['node']}" if latest.get("node") else ""))
    return obs
