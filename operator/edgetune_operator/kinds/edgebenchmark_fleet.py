"""A fleet EdgeBenchmark (spec.fleet): one `benchmark` Job per node its target selects, each
pinned to its node (jobspec.build_job node=), so one resource measures a model on every device
of a fleet. status.devices gets one row per node (the node, its device group -- the values of
spec.fleet.deviceLabels on it --, the device and runtime versions the step itself recorded,
p50/p99/mean, FPS, phase, reason) and status.fleet the summary (how many devices, the worst
p99 and on which node).

Which nodes: every node whose labels match the target's nodeSelector. Those that cannot run
the benchmark now get a row with the reason and no Job -- not Ready (NodeNotReady, with the
kubelet's last word), cordoned (NodeUnschedulable), a taint the target does not tolerate
(UntoleratedTaint), no engine built for its device group (NoEngineForDevice), a TensorRT
engine built for another device group (EngineNotPortable) -- and the rest run. The set of rows
is fixed when the first Jobs are created (as a sweep's selection); a node that joins later is
not measured by this resource. Without any node that can run it the benchmark waits
(NoMatchingNodes / NoReadyNodes) and looks again on every node event.

Engines: a TensorRT engine belongs to its GPU and TensorRT version, so a ModelConversion with
spec.fleet builds one per device group (status.engines, see modelconversion_fleet); each node
runs the engine of its group. A portable model (onnxruntime, openvino) serves every node.

Phase: Running while any row is Pending/Running; then Succeeded when at least one device was
measured (condition AllDevicesMeasured says whether all were, with a Warning Event naming the
others), Failed when none was.
"""

from __future__ import annotations

from typing import Any, Mapping

from edgetune_contract.args import BenchmarkArgs
from edgetune_contract.results import BenchmarkResult, device_label

from .. import jobspec, schema
from ..observe import fmt_time, parse_time
from .common import FINAL, Context, Plan, latency_status, num

ROW_FINAL = ("Succeeded", "Failed", "Skipped")
LIVE_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready", "node.kubernetes.io/unschedulable")
LABELS = ("namespace", "name", "model", "backend", "precision", "node", "device")
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgetune_benchmark_device_latency_seconds": (
        "Pipeline latency of each device (node) of a fleet EdgeBenchmark (quantile 0.5, 0.9, 0.99 or mean).",
        LABELS + ("quantile",)),
    "edgetune_benchmark_device_throughput_fps": ("Frames per second of each device (node) of a fleet EdgeBenchmark.",
                                                 LABELS),
}
QUANTILES = {"p50Ms": "0.5", "p90Ms": "0.9", "p99Ms": "0.99", "meanMs": "mean"}


def is_fleet(spec: Mapping[str, Any]) -> bool:
    return spec.get("fleet") is not None


def device_group(labels: Mapping[str, str], keys: list[str]) -> dict[str, str]:
    """The values of the device-group label keys on a node (absent keys left out)."""
    return {k: labels[k] for k in keys if k in labels}


def group_text(group: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(group.items())) or "(no device labels)"


def tolerated(taint: Mapping[str, str], tolerations: list[Mapping[str, Any]]) -> bool:
    """Whether a NoSchedule/NoExecute taint is tolerated (core/v1 toleration matching)."""
    for t in tolerations or []:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t["key"] == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def candidates(c: Context, step: str = "benchmark") -> list[dict]:
    """The nodes the step's nodeSelector matches, by name: each with why it cannot run now
    (None: it can)."""
    place = jobspec.resolve_placement(c.kind, c.spec, step, c.settings)
    want = place["nodeSelector"] or {}
    out = []
    for name, info in sorted(c.nodes.items()):
        labels = info.get("labels") or {}
        if any(labels.get(k) != v for k, v in want.items()):
            continue
        why = None
        if info.get("ready") != "True":
            why = ("NodeNotReady", f"node {name} is not Ready since {info.get('since') or '?'}: "
                                   f"{info.get('reason') or 'Unknown'}: {info.get('message') or 'no heartbeat'}")
        elif info.get("unschedulable"):
            why = ("NodeUnschedulable", f"node {name} is cordoned (spec.unschedulable)")
        else:
            bad = [t for t in info.get("taints") or [] if t.get("effect") in ("NoSchedule", "NoExecute")
                   and t.get("key") not in LIVE_TAINTS and not tolerated(t, place["tolerations"] or [])]
            if bad:
                t = bad[0]
                why = ("UntoleratedTaint", f"node {name} has the taint {t.get('key')}={t.get('value', '')}:"
                                           f"{t.get('effect')}, which target.tolerations does not tolerate")
        out.append({"name": name, "labels": labels, "why": why})
    return out


def model_for(c: Context, conv: Mapping[str, Any], model: Mapping[str, Any], node: Mapping[str, Any]) \
        -> tuple[dict | None, tuple[str, str] | None]:
    """(the inputs for this node, or None with (reason, message)): its device group's engine
    from a per-group ModelConversion (status.engines), else the one model -- refused for a
    TensorRT engine built on a node of another device group."""
    keys = c.spec["fleet"]["deviceLabels"]
    cst = conv.get("status") or {}
    cspec = schema.apply_defaults("ModelConversion", conv.get("spec") or {})
    ref = conv["metadata"]["name"]
    engines = cst.get("engines")
    if engines:
        ckeys = (cspec.get("fleet") or {}).get("deviceLabels") or keys
        mine = device_group(node["labels"], ckeys)
        for e in engines:
            if e.get("labels") == mine and e.get("phase") == "Succeeded" and (e.get("engine") or e.get("model")):
                path = c.path(e.get("engine") or e.get("model"))
                if path:
                    return {**model["inputs"], "model": path, "engine_uri": e.get("engine") or e.get("model")}, None
        return None, ("NoEngineForDevice", f"ModelConversion {ref!r} built no engine for device group "
                                           f"{group_text(mine)} of node {node['name']}")
    if cspec["backend"] == "tensorrt":
        built_on = next((s.get("node") for s in cst.get("steps") or [] if s.get("name") == "build-engine"), None)
        info = c.nodes.get(built_on) if built_on else None
        if info is not None:
            theirs, mine = device_group(info.get("labels") or {}, keys), device_group(node["labels"], keys)
            if theirs != mine:
                return None, ("EngineNotPortable", f"the TensorRT engine of ModelConversion {ref!r} was built on "
                                                   f"node {built_on} ({group_text(theirs)}), node {node['name']} is "
                                                   f"{group_text(mine)}; set the ModelConversion's spec.fleet to "
                                                   f"build one engine per device group")
    return dict(model["inputs"]), None


def _args(c: Context, inputs: Mapping[str, str], node: str) -> BenchmarkArgs:
    spec = c.spec
    kw = dict(out=c.out("benchmark", 1, node), model=inputs["model"], meta=inputs["meta"], backend=inputs["backend"],
              warmup=spec.get("warmup"), iterations=spec.get("iterations"), duration=spec.get("durationSeconds"),
              images=c.spec_path(spec.get("images")) or inputs.get("images"), threads=spec.get("threads"))
    return BenchmarkArgs(**{k: v for k, v in kw.items() if v is not None})


def _start(c: Context, conv: Mapping[str, Any], model: Mapping[str, Any]) -> Plan | None:
    """Choose the fleet and create its Jobs (None: done, rows written); or the waiting Plan."""
    st, keys = c.status, c.spec["fleet"]["deviceLabels"]
    nodes = candidates(c)
    if not nodes:
        sel = jobspec.resolve_placement(c.kind, c.spec, "benchmark", c.settings)["nodeSelector"] or {}
        msg = f"no node matches the target's nodeSelector {group_text(sel)}; waiting for one to join"
        c.upstream("DevicesReady", False, "NoMatchingNodes", msg)
        return c.finish("Waiting", "NoMatchingNodes", msg, progressing_reason="Waiting")
    rows, runs = [], []
    for n in nodes:
        row: dict[str, Any] = {"node": n["name"], "deviceLabels": device_group(n["labels"], keys)}
        why, inputs = n["why"], None
        if why is None:
            inputs, why = model_for(c, conv, model, n)
        if why is None and len(runs) >= c.spec["fleet"]["maxNodes"]:
            why = ("FleetLimit", f"more than spec.fleet.maxNodes={c.spec['fleet']['maxNodes']} nodes can run it")
        if why is not None:
            row.update(phase="Skipped", reason=why[0], message=why[1][:1024])
        else:
            row["model"] = inputs.pop("engine_uri", None) or (conv.get("status") or {}).get("artifacts", {}).get(
                "engine") or (conv.get("status") or {}).get("artifacts", {}).get("model")
            runs.append((row, inputs))
        rows.append(row)
    if not runs:
        msg = "no selected node can run the benchmark now: " + "; ".join(
            f"{r['node']}: {r['reason']}" for r in rows)
        c.upstream("DevicesReady", False, "NoReadyNodes", msg[:1024])
        return c.finish("Waiting", "NoReadyNodes", msg[:1024], progressing_reason="Waiting")
    c.upstream("DevicesReady", True, "DevicesSelected",
               f"{len(runs)} of {len(rows)} selected node(s) run the benchmark")
    for row, inputs in runs:
        obs = c.create(_args(c, inputs, row["node"]), part=row["node"], node=row["node"])
        row.update(job=obs["job"], phase="Pending", reason=obs["reason"], message=obs["message"])
    for row in rows:
        if row["phase"] == "Skipped":
            c.plan.events.append(("Warning", row["reason"], f"device {row['node']} not benchmarked: {row['message']}"))
    st["devices"] = rows
    st["run"] = 1
    return None


def _apply(c: Context, row: dict, obs: dict, result: BenchmarkResult) -> None:
    pipe = latency_status(result.latency.get("pipeline")) or {}
    for k in ("p50Ms", "p90Ms", "p99Ms", "meanMs"):
        if k in pipe:
            row[k] = pipe[k]
    for key, value in (("throughputFps", result.fps), ("peakRssMiB", result.peak_rss_mib)):
        if num(value) is not None:
            row[key] = num(value)
    prov = result.provenance or {}
    if prov.get("device"):
        row["device"] = device_label(prov["device"])
    vers = prov.get("versions")
    if isinstance(vers, Mapping) and vers:
        row["versions"] = {str(k): str(v) for k, v in vers.items()}
    arts = {k: c.store.artifact_uri(c.ns, c.kind, c.name, "benchmark", rel, 1, row["node"])
            for k, rel in result.artifacts.items() if rel}
    if arts:
        row["artifacts"] = arts
    if prov:
        c.status["provenance"] = {**(c.status.get("provenance") or {}), f"benchmark@{row['node']}": prov}


def _observe_row(c: Context, row: dict, model: Mapping[str, Any]) -> None:
    """Follow one device's Job: the row's phase, reason and figures, transition Events."""
    prev = dict(row)
    obs = c.observe("benchmark", part=row["node"], prev=prev, health=False)
    if obs.get("sticky"):
        return
    if obs["phase"] == "NotCreated":  # not in the index yet, or deleted under us: ask for it (again)
        if not model.get("inputs"):
            obs = {"phase": "Failed", "reason": "ModelGone", "completionTime": fmt_time(c.now),
                   "message": f"Job {row['job']} is gone and the model to measure is no longer ready"}
        else:
            inputs = dict(model["inputs"])
            if row.get("model") and c.path(row["model"]):
                inputs["model"] = c.path(row["model"])
            obs = c.create(_args(c, inputs, row["node"]), part=row["node"], node=row["node"])
    phase = {"Finishing": "Running"}.get(obs["phase"], obs["phase"])
    result = obs.get("result")
    if phase == "Succeeded" and isinstance(result, BenchmarkResult):
        _apply(c, row, obs, result)
    row.update(phase=phase, reason=obs.get("reason", ""), message=(obs.get("message") or "")[:1024])
    for k in ("jobUID", "recreated"):
        if obs.get(k):
            row[k] = obs[k]
    if obs.get("startTime"):
        row["startTime"] = fmt_time(parse_time(obs["startTime"]))
    if phase in FINAL:
        row["completionTime"] = fmt_time(parse_time(obs.get("completionTime")) or c.now)
    info = c.nodes.get(row["node"])
    if phase in ("Pending", "Running") and info is not None and info.get("ready") != "True":
        row.update(reason="NodeNotReady", message=(
            f"node {row['node']} is not Ready since {info.get('since') or '?'}: {info.get('reason') or 'Unknown'}: "
            f"{info.get('message') or 'no heartbeat'}; the step waits for it, and Kubernetes evicts its Pod when "
            f"its toleration of the node's taint ends")[:1024])
    if phase != prev.get("phase") or row["reason"] != prev.get("reason"):
        if phase == "Running" and prev.get("phase") != "Running":
            c.step_event("benchmark", phase, on=row["node"])
        elif phase in ("Succeeded", "Failed"):
            c.step_event("benchmark", phase, where=f" on {row['node']}", message=row["message"], reason=row["reason"])
    if row["reason"] == "NodeNotReady" and prev.get("reason") != "NodeNotReady":
        c.plan.events.append(("Warning", "NodeNotReady", row["message"]))
    if obs["phase"] == "Finishing":
        c.plan.requeue(2.0)


def summary(rows: list[dict]) -> dict:
    """status.fleet: counts, the worst p99 and where, one line for `kubectl get`."""
    count = {p: sum(1 for r in rows if r.get("phase") == p) for p in ("Succeeded", "Failed", "Skipped")}
    out: dict[str, Any] = {"devices": len(rows), "measured": count["Succeeded"], "failed": count["Failed"],
                           "skipped": count["Skipped"],
                           "pending": len(rows) - sum(count.values())}
    measured = [r for r in rows if r.get("phase") == "Succeeded" and num(r.get("p99Ms")) is not None]
    text = f"{count['Succeeded']}/{len(rows)} measured"
    if measured:
        worst = max(measured, key=lambda r: r["p99Ms"])
        out.update(worstP99Ms=worst["p99Ms"], worstNode=worst["node"])
        if worst.get("device"):
            out["worstDevice"] = worst["device"]
        text += f", worst p99 {worst['p99Ms']:.1f} ms on {worst['node']}"
    out["summary"] = text
    return out


def plan(c: Context, conv: Mapping[str, Any] | None, ok: bool, reason: str, message: str, model: dict) -> Plan:
    st = c.status
    started = bool(st.get("devices"))
    if not started:
        if reason == "ModelConversionFailed":
            return c.finish("Failed", reason, message)
        if not ok:
            return c.finish("Waiting", reason, message, progressing_reason="Waiting")
        st.update(model["info"])
        waiting = _start(c, conv or {}, model)
        if waiting is not None:
            return waiting
    rows = [dict(r) for r in st["devices"]]
    for row in rows:
        if started and row.get("phase") not in ROW_FINAL:  # (Jobs just planned are not in the index yet)
            _observe_row(c, row, model)
    st["devices"] = rows
    st["fleet"] = fl = summary(rows)
    live = [r for r in rows if r.get("phase") not in ROW_FINAL]
    unplaced = [r for r in live if r.get("reason") == "Unschedulable"]
    if unplaced:
        c.cond("Scheduled", "False", "Unschedulable", "; ".join(f"{r['node']}: {r['message']}" for r in unplaced)[:1024])
    elif live:
        c.cond("Scheduled", "True" if all(r["phase"] == "Running" for r in live) else "Unknown",
               "Scheduled" if all(r["phase"] == "Running" for r in live) else "WaitingForPod",
               f"{len(live)} device Job(s) not finished")
    if live:
        running = any(r["phase"] == "Running" for r in live)
        return c.finish("Running" if running else "Pending", "StepRunning" if running else "Pending",
                        f"fleet: {fl['summary']}, {len(live)} device(s) still running")
    if not st.get("lastRunTime") and fl["measured"]:
        st["lastRunTime"] = fmt_time(c.now)
    missed = [r for r in rows if r["phase"] != "Succeeded"]
    if missed:
        text = "; ".join(f"{r['node']}: {r['phase']} ({r.get('reason')}): {r.get('message', '')}" for r in missed)
        c.upstream("AllDevicesMeasured", False, "DevicesNotMeasured",
                   f"{len(missed)} of {len(rows)} device(s) not measured: {text}"[:2048])
    else:
        c.cond("AllDevicesMeasured", "True", "AllMeasured", f"all {len(rows)} device(s) measured")
    if not fl["measured"]:
        return c.finish("Failed", "NoDeviceMeasured", f"fleet: no device was measured: {text}"[:2048])
    return c.finish("Succeeded", "Succeeded", f"fleet: {fl['summary']}")


def samples(body: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    out = []
    for row in st.get("devices") or []:
        if row.get("phase") != "Succeeded":
            continue
        lbl = {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "model": str(st.get("model") or ""),
               "backend": str(st.get("backend") or ""), "precision": str(st.get("precision") or ""),
               "node": row["node"], "device": str(row.get("device") or "")}
        for key, q in QUANTILES.items():
            if num(row.get(key)) is not None:
                out.append(("edgetune_benchmark_device_latency_seconds", {**lbl, "quantile": q}, row[key] / 1000.0))
        if num(row.get("throughputFps")) is not None:
            out.append(("edgetune_benchmark_device_throughput_fps", lbl, num(row["throughputFps"])))
    return out
