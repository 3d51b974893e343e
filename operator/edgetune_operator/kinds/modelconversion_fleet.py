"""A ModelConversion with spec.fleet: the build-engine step runs once per device group among the
Ready nodes its target selects (a device group: the values of spec.fleet.deviceLabels on a node,
by default nvidia.com/gpu.product and nvidia.com/jetpack.version), because a TensorRT engine
runs only on the GPU model and TensorRT version it was built with.

Each group's Job (`<name>-build-engine-<group>`, folder `build-engine@<group>`, label
edgetune.io/device-group) is placed with the target's nodeSelector plus the group's labels, so
any Ready node of the group builds it. status.engines gets one entry per group (its labels, its
nodes, the engine, size, build time, the node that built it, phase, reason); a fleet
EdgeBenchmark runs on each node the engine of the node's group. status.artifacts.engine is the
first built group's engine, and the verify step measures that one, on a node of that group
(status.engines[].verified says which). The groups are fixed when the build Jobs are created.

The conversion succeeds when at least one group's engine was built (condition AllGroupsBuilt
says whether all were, with a Warning Event naming the others) and fails when none was.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from edgetune_contract import names
from edgetune_contract.cliargs import StepArgs
from edgetune_contract.results import BuildEngineResult

from ..observe import fmt_time, parse_time
from .common import FINAL, Context, num
from .edgebenchmark_fleet import candidates, device_group, group_text

STEP = "build-engine"


def is_fleet(spec: Mapping[str, Any]) -> bool:
    return spec.get("fleet") is not None


def group_id(labels: Mapping[str, str]) -> str:
    """A device group's name in Job names, folders and labels (names.part_label of its values)."""
    return names.part_label("-".join(v for _, v in sorted(labels.items())) or "unlabelled")


def _groups(c: Context) -> tuple[list[dict], list[str]]:
    """(the device groups among the Ready nodes the target selects, the nodes left out and why)."""
    keys = c.spec["fleet"]["deviceLabels"]
    groups: dict[str, dict] = {}
    left = []
    for n in candidates(c, STEP):
        if n["why"] is not None:
            left.append(f"{n['name']}: {n['why'][0]}")
            continue
        labels = device_group(n["labels"], keys)
        g = groups.setdefault(group_id(labels), {"group": group_id(labels), "labels": labels, "nodes": []})
        g["nodes"].append(n["name"])
    return sorted(groups.values(), key=lambda g: g["group"]), left


def verify_labels(c: Context) -> dict[str, str] | None:
    """The device group whose engine the verify step measures (a node of it runs the verify)."""
    for e in c.status.get("engines") or []:
        if e.get("verified"):
            return dict(e["labels"])
    return None


def _observe(c: Context, entry: dict, args_for: Callable[[str], StepArgs | str]) -> None:
    prev = dict(entry)
    obs = c.observe(STEP, part=entry["group"], prev=prev, health=False)
    if obs.get("sticky"):
        return
    if obs["phase"] == "NotCreated":
        args = args_for(entry["group"])
        obs = {"phase": "Failed", "reason": "MissingArtifact", "message": args, "completionTime": fmt_time(c.now)} \
            if isinstance(args, str) else c.create(args, part=entry["group"], node_labels=entry["labels"])
    phase = {"Finishing": "Running"}.get(obs["phase"], obs["phase"])
    result = obs.get("result")
    if phase == "Succeeded" and isinstance(result, BuildEngineResult):
        for key, rel in result.artifacts.items():
            if key in ("engine", "model") and rel:
                entry[key] = c.store.artifact_uri(c.ns, c.kind, c.name, STEP, rel, 1, entry["group"])
        for value, key in ((result.engine_bytes, "engineBytes"), (result.build_seconds, "buildSeconds")):
            if num(value) is not None:
                entry[key] = num(value)
        if result.provenance:
            c.status["provenance"] = {**(c.status.get("provenance") or {}), f"{STEP}@{entry['group']}":
                                      result.provenance}
    entry.update(phase=phase, reason=obs.get("reason", ""), message=(obs.get("message") or "")[:1024])
    for k in ("jobUID", "recreated", "node"):
        if obs.get(k):
            entry[k] = obs[k]
    if phase in FINAL:
        entry["completionTime"] = fmt_time(parse_time(obs.get("completionTime")) or c.now)
    where = f" for device group {group_text(entry['labels'])}"
    if phase != prev.get("phase"):
        c.step_event(STEP, phase, where=where, on=entry.get("node"), message=entry["message"], reason=entry["reason"])
    if obs["phase"] == "Finishing":
        c.plan.requeue(2.0)


def build(c: Context, args_for: Callable[[str], StepArgs | str]) -> dict:
    """Run (or follow) the per-group builds; their state as one step observation."""
    st = c.status
    started = bool(st.get("engines"))
    if not started:
        groups, left = _groups(c)
        if not groups:
            return {"phase": "Pending", "reason": "NoReadyNodes", "job": None,
                    "message": "no Ready node the target selects to build an engine on"
                               + (f" ({'; '.join(left)})" if left else "") + "; waiting for one"}
        limit = c.spec["fleet"]["maxGroups"]
        if len(groups) > limit:
            left += [f"{', '.join(g['nodes'])}: more than spec.fleet.maxGroups={limit} device groups"
                     for g in groups[limit:]]
            groups = groups[:limit]
        for g in groups:
            args = args_for(g["group"])
            if isinstance(args, str):
                g.update(phase="Failed", reason="MissingArtifact", message=args)
                continue
            obs = c.create(args, part=g["group"], node_labels=g["labels"])
            g.update(job=obs["job"], phase="Pending", reason=obs["reason"], message=obs["message"])
        st["engines"] = groups
        if left:
            c.plan.events.append(("Warning", "NodesLeftOut", "no engine is built for " + "; ".join(left)[:900]))
    engines = [dict(e) for e in st["engines"]]
    for e in engines:
        if started and e.get("phase") not in FINAL:
            _observe(c, e, args_for)
    built = [e for e in engines if e.get("phase") == "Succeeded" and (e.get("engine") or e.get("model"))]
    live = [e for e in engines if e.get("phase") not in FINAL]
    if built and not any(e.get("verified") for e in engines) and not live:
        built[0]["verified"] = True
    st["engines"] = engines
    text = f"{len(built)} of {len(engines)} device group(s) built"
    if live:
        running = [e for e in live if e.get("phase") == "Running"]
        return {"phase": "Running" if running else "Pending", "reason": live[0].get("reason") or "Pending",
                "message": f"{text}, {len(live)} building", "job": None}
    failed = [e for e in engines if e not in built]
    if failed:
        why = "; ".join(f"{group_text(e['labels'])}: {e.get('reason')}: {e.get('message', '')}" for e in failed)
        c.upstream("AllGroupsBuilt", False, "GroupsNotBuilt", f"{text}: {why}"[:2048])
    else:
        c.cond("AllGroupsBuilt", "True", "AllBuilt", f"an engine for each of {len(engines)} device group(s)")
    if not built:
        return {"phase": "Failed", "reason": failed[0].get("reason") or "BuildFailed", "job": None,
                "message": f"no device group's engine was built: {why}"[:2048], "completionTime": fmt_time(c.now)}
    first = built[0]
    key = "engine" if first.get("engine") else "model"
    st["artifacts"] = {**(st.get("artifacts") or {}), key: first[key]}
    figs = dict(st.get("metrics") or {})
    figs.update({k: first[k] for k in ("engineBytes", "buildSeconds") if k in first})
    st["metrics"] = figs
    return {"phase": "Succeeded", "reason": "Succeeded", "job": None,
            "message": f"{text}: " + ", ".join(group_text(e["labels"]) for e in built)[:900]}


def record(c: Context, obs: dict) -> None:
    """The build-engine step's one entry in status.steps (the groups' own are status.engines)."""
    steps = [s for s in c.status.get("steps") or [] if s.get("name") != STEP]
    steps.append({"name": STEP, "phase": obs["phase"], "reason": obs.get("reason", ""),
                  "message": obs.get("message", "")})
    order = {s: i for i, s in enumerate(names.KIND_STEPS[c.kind])}
    c.status["steps"] = sorted(steps, key=lambda s: order.get(s.get("name"), 99))
