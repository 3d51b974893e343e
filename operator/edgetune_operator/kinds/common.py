"""What every kind's planner shares: the Plan (Jobs to create/delete, the new status, Events,
when to look again) and the Context a planner works in (observing its steps, creating their
Jobs, recording steps, conditions and the final phase).

Planning is a pure function of (resource, its Jobs and Pods, the resource it refers to, the
time). Level-triggered: the same inputs always give the same plan, so any number of re-runs
(after a restart, on every Job/Pod event) converge on one Job per step and one status. A step
whose result has been recorded in status (Succeeded/Failed) is final ("sticky"), so the
figures do not depend on Pods still existing.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from typing import Any, Mapping

from edgetune_contract import names
from edgetune_contract.cliargs import StepArgs
from edgetune_contract.results import COCO_KEYS, LATENCY_STATS, StepResult

from .. import jobspec, schema
from ..observe import fmt_time, get_condition, parse_time, set_condition, step_observation
from ..settings import Settings

FINAL = ("Succeeded", "Failed")
FINISHING_REQUEUE = 2.0
MAX_RECREATE = 1  # a step's Job deleted by hand is recreated once; deleted again, the step fails
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


# --- result figures -> status (camelCase, numbers only) ---------------------------------------


def num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def coco_status(m: Mapping[str, Any] | None) -> dict | None:
    """COCO figures of a result as status shows them (measured keys only)."""
    if not isinstance(m, Mapping):
        return None
    out = {k: num(m.get(k)) for k in COCO_KEYS if num(m.get(k)) is not None}
    return out or None


def latency_status(m: Mapping[str, Any] | None) -> dict | None:
    """mean_ms -> meanMs, rounded to 0.1 µs."""
    if not isinstance(m, Mapping):
        return None
    out = {key.split("_")[0] + "Ms": round(num(m[key]), 4) for key in LATENCY_STATS if num(m.get(key)) is not None}
    return out or None


class Context:
    """One resource being planned: its defaulted spec, the status being written, its steps."""

    def __init__(self, body: Mapping[str, Any], jobs: list[dict], pods: list[dict], settings: Settings,
                 now: dt.datetime, nodes: Mapping[str, dict] | None = None):
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
        self.nodes = nodes or {}  # name -> observe.summarize_node: the nodes the Pods run on (a fleet: all)
        self.store = jobspec.store_of(self.spec, settings)
        self.plan = Plan(status=self.status)
        self.recreating: dict[str, int] = {}  # Job name -> how many times it has been deleted under us

    # --- steps ---
    def prev_step(self, step: str) -> dict | None:
        for s in self.prev.get("steps") or []:
            if s.get("name") == step:
                return s
        return None

    def out(self, step: str, run: int = 1, part: str | None = None) -> str:
        """The step's artifact folder as its Pod sees it."""
        return names.out_dir(self.ns, self.kind, self.name, step, run, part)

    def observe(self, step: str, run: int = 1, *, part: str | None = None, prev: dict | None = None,
                health: bool = True) -> dict:
        """The step's state from its Job and Pods (part: one of several Jobs of the step, whose
        record `prev` is kept by the kind, e.g. a fleet's row, instead of status.steps)."""
        jname = names.job_name(self.name, step, run, part)
        prev = self.prev_step(step) if part is None else prev
        if prev and prev.get("job") == jname and prev.get("phase") in FINAL:
            return {"phase": prev["phase"], "sticky": True, "job": jname, "reason": prev.get("reason", ""),
                    "message": prev.get("message", ""), "node": prev.get("node")}
        job = self.jobs.get(jname)
        if job is None and prev and prev.get("job") == jname and prev.get("jobUID") \
                and prev.get("phase") in ("Pending", "Running"):
            # the step's Job was seen (its UID recorded) and is gone: deleted while the step ran
            deleted = int(prev.get("recreated") or 0) + 1
            if deleted > MAX_RECREATE:
                return {"phase": "Failed", "job": jname, "reason": "JobDeleted", "completionTime": fmt_time(self.now),
                        "message": f"Job {jname} was deleted while the step ran, again (it was recreated "
                                   f"{MAX_RECREATE} time); not recreating it",
                        "node": prev.get("node"), "recreated": deleted - 1}
            self.recreating[jname] = deleted
        pods = [p for p in self.pods if p.get("job") == jname or (part is None and p.get("job") is None
                                                                  and p.get("step") == step and p.get("run") == run)]
        timeout = (self.spec.get("run") or {}).get("podWaitingTimeoutSeconds") or self.settings.pod_waiting_timeout
        obs = step_observation(job, pods, self.now, waiting_timeout=timeout)
        obs.setdefault("job", jname)
        if obs.get("stuck") and not (job or {}).get("deleting"):
            self.plan.delete.append(jname)  # a stuck Pod: its Job goes, the step has failed
        elif obs.get("stuck_in") is not None:
            self.plan.requeue(obs["stuck_in"] + 0.5)  # to fail it on time, event or not
        if health:
            self.node_health(step, obs)
        return obs

    def node_health(self, step: str, obs: dict) -> None:
        """Condition NodeReady, present once a node running a step has been seen not Ready: False
        while it is (reason NodeNotReady, then PodEvicted when Kubernetes has evicted the Pod and
        the Job retries it), True again when the step's Pod runs on a Ready node."""
        if obs.get("sticky") or obs["phase"] in ("NotCreated", *FINAL):
            return
        prev = get_condition(self.prev, "NodeReady")
        node = obs.get("node")
        info = self.nodes.get(node) if node else None
        evicted = obs.get("evicted") or []
        if info is not None and info.get("ready") != "True":
            since = info.get("since") or "?"
            if obs.get("pod_created") and info.get("since") and obs["pod_created"] > info["since"]:
                # a Pod made after the node went NotReady, yet bound to it: the scheduler saw the
                # node back (its taints lifted) before our copy of it did -- wait for the node's event
                return
            self.cond("NodeReady", "False", "NodeNotReady",
                      f"node {node}, running step {step} (Pod {obs.get('pod')}), is not Ready since {since}: "
                      f"{info.get('reason') or 'Unknown'}: {info.get('message') or 'no heartbeat'}; the step "
                      f"waits for it, and Kubernetes evicts the Pod when its toleration of the node's "
                      f"{'unreachable' if info.get('unreachable') else 'not-ready'} taint ends")
        elif evicted and obs["phase"] != "Running":
            lost = evicted[-1]
            self.cond("NodeReady", "False", "PodEvicted",
                      f"Pod {lost['pod']} of step {step} was evicted from node {lost['node']} "
                      f"({lost['message'] or 'node lost'}); the Job retries the step: {obs.get('message')}")
        elif prev is not None and obs["phase"] == "Running" and info is not None:
            self.cond("NodeReady", "True", "NodeReady", f"step {step} runs on node {node}, which is Ready")
        else:
            return
        now = get_condition(self.status, "NodeReady")
        if now["status"] == "False" and (prev is None or prev.get("reason") != now["reason"]):
            self.plan.events.append(("Warning", now["reason"], now["message"]))

    def create(self, args: StepArgs, run: int = 1, replicas: int = 1, *, part: str | None = None,
               node: str | None = None, node_labels: Mapping[str, str] | None = None) -> dict:
        """Plan the Job of a step (the executor announces it, Event JobCreated, once created);
        a distributed one (replicas > 1) after its headless Service; part/node/node_labels: one
        of several Jobs of the step (jobspec.build_job)."""
        job = jobspec.build_job(self.body, args, self.settings, run=run, replicas=replicas, part=part, node=node,
                                node_labels=node_labels)
        jname = job["metadata"]["name"]
        if replicas > 1:
            self.plan.create.append(jobspec.headless_service(self.body, job))
        self.plan.create.append(job)
        if not self.status.get("startTime"):
            self.status["startTime"] = fmt_time(self.now)
        obs = {"phase": "Pending", "job": jname, "reason": "JobCreated",
               "message": f"Job {jname} created, waiting for its Pod", "new": True}
        if jname in self.recreating:
            obs.update(reason="JobRecreated", recreated=self.recreating[jname],
                       message=f"Job {jname} was deleted while the step ran: recreated it")
            self.plan.events.append(("Warning", "JobRecreated", f"Job {jname} was deleted while step {args.STEP} "
                                                                f"ran; recreated it (once: a second deletion fails "
                                                                f"the step with JobDeleted)"))
        return obs

    def record_step(self, step: str, obs: dict) -> None:
        """Write the step's entry in status.steps and emit transition Events."""
        if obs.get("sticky"):
            return
        phase = {"Finishing": "Running"}.get(obs["phase"], obs["phase"])
        prev = self.prev_step(step) or {}
        same_job = prev.get("job") == obs.get("job")
        entry = {"name": step, "job": obs.get("job"), "phase": phase,
                 "reason": obs.get("reason", ""), "message": obs.get("message", "")}
        recreated = obs.get("recreated") or (prev.get("recreated") if same_job else None)
        if recreated:
            entry["recreated"] = recreated
        uid = obs.get("jobUID") or (prev.get("jobUID") if same_job and not obs.get("new") else None)
        if uid:
            entry["jobUID"] = uid
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
        order = {s: i for i, s in enumerate(names.KIND_STEPS[self.kind])}
        steps.sort(key=lambda s: order.get(s.get("name"), 99))
        self.status["steps"] = steps
        prev_phase = prev.get("phase") if same_job else None
        if phase != prev_phase:
            self.step_event(step, phase, on=obs.get("node"), message=obs.get("message"), reason=obs.get("reason"))
        if obs["phase"] == "Finishing":
            self.plan.requeue(FINISHING_REQUEUE)

    def step_event(self, step: str, phase: str, *, where: str = "", on: str | None = None,
                   message: str | None = "", reason: str | None = "") -> None:
        """The Event of a step entering a phase (StepRunning, StepSucceeded, StepFailed); a
        failed step is also counted (edgetune_job_failures_total)."""
        if phase == "Running":
            self.plan.events.append(("Normal", "StepRunning", f"Step {step}{where} running" + (f" on {on}" if on else "")))
        elif phase == "Succeeded":
            self.plan.events.append(("Normal", "StepSucceeded", f"Step {step}{where} succeeded: {message or 'ok'}"))
        elif phase == "Failed":
            self.plan.events.append(("Warning", "StepFailed", f"Step {step}{where} failed ({reason}): {message}"))
            self.plan.failed_steps.append(step)

    def artifacts_from(self, step: str, result: StepResult, run: int = 1) -> dict:
        """Record a result's artifacts (as URIs) and provenance in status."""
        arts = {key: self.store.artifact_uri(self.ns, self.kind, self.name, step, rel, run)
                for key, rel in result.artifacts.items() if rel}
        if arts:
            self.status["artifacts"] = {**(self.status.get("artifacts") or {}), **arts}
        if result.provenance:
            self.status["provenance"] = {**(self.status.get("provenance") or {}), step: result.provenance}
        return arts

    def path(self, uri: str | None) -> str | None:
        """An artifact URI (from a status) as the step's input argument: a path under the
        mounted claim, or the s3:// URI the step downloads (None: in another store, or none)."""
        return self.store.in_pod(uri) if uri else None

    def spec_path(self, value: str | None) -> str | None:
        """A path of the spec (relative to the store's root) or a URL, as the step's argument."""
        return self.store.spec_path(value) if value else None

    def in_pod(self, value: str | None) -> str | None:
        """A status URI, or a spec path, or a URL, as the step's argument."""
        if value is None:
            return None
        if value.startswith(("pvc://", "s3://")):
            return self.path(value)
        return self.spec_path(value)

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

    def upstream(self, type_: str, ok: bool, reason: str, message: str) -> None:
        """The condition on the resource this one depends on (SourceReady, ModelReady), with an
        Event when its reason changes."""
        prev = get_condition(self.prev, type_)
        self.cond(type_, "True" if ok else "False", reason, message)
        if not ok and (not prev or prev.get("reason") != reason):
            waiting = reason.startswith("WaitingFor")
            self.plan.events.append(("Normal" if waiting else "Warning", reason, message))

    def finish_step(self, step: str, obs: dict) -> Plan:
        """The resource's phase from its step that is not done (yet)."""
        if obs["phase"] == "Failed":
            return self.finish("Failed", obs.get("reason") or "Failed", f"{step}: {obs.get('message')}")
        if obs["phase"] in ("Running", "Finishing"):
            return self.finish("Running", "StepRunning", f"{step}: {obs.get('message')}")
        return self.finish("Pending", obs.get("reason") or "Pending", f"{step}: {obs.get('message')}")

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
