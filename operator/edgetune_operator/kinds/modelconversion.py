"""ModelConversion: export (GPU node) -> build-engine (target device) -> verify (optional, target
device). Its source is a FinetuneJob (waited for) or a checkpoint + config; status gets the
sizes, the build time, and the converted and reference COCO figures with their drop. Whether
the drop is acceptable is the verify step's verdict (edgetune_contract.results.accuracy_gate),
recorded here as it is.
"""

from __future__ import annotations

import posixpath
from typing import Any, Mapping

from edgetune_contract import names
from edgetune_contract.args import BuildEngineArgs, ExportArgs, VerifyArgs
from edgetune_contract.cliargs import StepArgs
from edgetune_contract.results import BuildEngineResult, ExportResult, StepResult, VerifyResult

from ..observe import fmt_time, get_condition
from . import modelconversion_fleet as fleet
from .common import Context, Plan, coco_status, num

KIND = "ModelConversion"
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgetune_conversion_map_ratio": ("COCO bbox mAP of a converted model or its PyTorch reference (0-1).",
                                      ("namespace", "name", "model", "backend", "precision", "which")),
    "edgetune_conversion_map_drop_ratio": ("mAP(PyTorch) - mAP(converted) of a ModelConversion.",
                                           ("namespace", "name", "model", "backend", "precision")),
}


def related_key(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    ref = ((body.get("spec") or {}).get("source") or {}).get("finetuneJob")
    return ("FinetuneJob", body["metadata"]["namespace"], ref) if ref else None


def _config_name(config: str) -> str:
    base = posixpath.basename(config.rstrip("/"))
    return base[:-3] if base.endswith(".py") else base


def resolve_source(c: Context, related: Mapping[str, Any] | None) -> tuple[bool, str, str, dict]:
    """(ready, reason, message, resolved) of a ModelConversion's source."""
    src = c.spec["source"]
    if "model" in src:
        m = src["model"]
        resolved = {"checkpoint": m["checkpoint"], "config": m["config"],
                    "model": m.get("name") or _config_name(m["config"])}
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
        if c.path(arts[k]) is None:
            return False, "SourceInAnotherStore", (f"FinetuneJob {ref!r} artifacts are in another store "
                                                    f"({arts[k]}); use the same spec.artifacts"), {}
    model = rst.get("model") or ((related.get("spec") or {}).get("model") or {}).get("config") or ref
    resolved = {"finetuneJob": ref, "checkpoint": arts["checkpoint"], "config": arts["config"], "model": model}
    if arts.get("dataset"):
        resolved["valDataset"] = arts["dataset"]
    return True, "SourceReady", f"FinetuneJob {ref!r} succeeded", resolved


def step_args(c: Context, step: str, part: str | None = None) -> StepArgs | str:
    """The step's arguments from the spec, the source and the artifacts recorded so far, or
    the reason it cannot start (an input the previous step did not leave); part: a device
    group's build (its own folder)."""
    spec, source, arts = c.spec, c.status["source"], c.status.get("artifacts") or {}
    val = c.in_pod(source.get("valDataset"))
    if step == "export":
        pp = spec.get("postprocess", {})
        device = (spec.get("export") or {}).get("device")
        inputs = {"checkpoint": c.in_pod(source.get("checkpoint")), "config": c.in_pod(source.get("config"))}
        make = lambda: ExportArgs(  # noqa: E731
            out=c.out(step), backend=spec["backend"], image_size=spec["imageSize"], dynamic=bool(spec.get("dynamic")),
            score_threshold=pp.get("scoreThreshold"), iou_threshold=pp.get("iouThreshold"),
            max_detections=pp.get("maxDetections"), val_dataset=val,
            device=device if device in ("cpu", "cuda") else "cpu", **inputs)
    elif step == "build-engine":
        cal = spec.get("calibration") or {}
        calibration = cal.get("images")
        inputs = {"onnx": c.path(arts.get("onnx")), "meta": c.path(arts.get("meta"))}
        make = lambda: BuildEngineArgs(  # noqa: E731
            out=c.out(step, 1, part), backend=spec["backend"], precision=spec["precision"],
            calibration_images=c.spec_path(calibration),
            calibration_method=cal.get("method", "minmax"), calibration_max_images=cal.get("maxImages", 200),
            workspace_mib=(spec.get("build") or {}).get("workspaceMiB", 1024), **inputs)
    else:
        inputs = {"model": c.path(arts.get("engine") or arts.get("model")), "meta": c.path(arts.get("meta")),
                  "val_dataset": val}
        make = lambda: VerifyArgs(  # noqa: E731
            out=c.out(step), backend=spec["backend"], max_map_drop=(spec.get("verify") or {}).get("maxMapDrop"),
            **inputs)
    missing = [k for k, v in inputs.items() if v is None]
    return f"cannot start {step}: no {', '.join(missing)} from the previous step" if missing else make()


def record_figures(c: Context, result: StepResult) -> None:
    """A step's figures in status.metrics (also those of a failed verify)."""
    figs = dict(c.status.get("metrics") or {})
    if isinstance(result, ExportResult) and num(result.onnx_bytes) is not None:
        figs["onnxBytes"] = num(result.onnx_bytes)
    elif isinstance(result, BuildEngineResult):
        for value, key in ((result.engine_bytes, "engineBytes"), (result.build_seconds, "buildSeconds")):
            if num(value) is not None:
                figs[key] = num(value)
    elif isinstance(result, VerifyResult):
        for which in ("converted", "reference"):
            if coco_status(getattr(result, which)):
                figs[which] = coco_status(getattr(result, which))
        if num(result.map_drop) is not None:
            figs["mapDrop"] = round(num(result.map_drop), 6)
    if figs:
        c.status["metrics"] = figs


def plan(c: Context, related: Mapping[str, Any] | None, progress: Any = None) -> Plan:
    st, spec = c.status, c.spec
    started = bool(c.prev_step("export")) or names.job_name(c.name, "export") in c.jobs
    if started and st.get("source"):  # the source was resolved when the export started
        prev_cond = get_condition(c.prev, "SourceReady") or {}
        message = prev_cond.get("message") if prev_cond.get("status") == "True" else None
        ok, reason, message, resolved = True, "SourceReady", message or "source resolved when the export started", None
    else:
        ok, reason, message, resolved = resolve_source(c, related)
    c.upstream("SourceReady", ok, reason, message)
    if not ok:
        if reason == "SourceFailed":  # nothing to convert: failed too, naming the upstream message
            st["stage"] = "Failed"
            return c.finish("Failed", reason, message)
        st["stage"] = "Waiting"
        return c.finish("Pending", reason, message, progressing_reason="Waiting")
    if resolved is not None:
        st["model"] = resolved.pop("model")
        st["source"] = resolved
    steps = names.KIND_STEPS[KIND] if spec["verify"]["enabled"] else ("export", "build-engine")
    for step in steps:
        if step == "build-engine" and fleet.is_fleet(spec):  # one engine per device group
            obs = fleet.build(c, lambda group: step_args(c, step, group))
            fleet.record(c, obs)
            if obs["phase"] != "Succeeded":
                st["stage"] = step
                return c.finish_step(step, obs)
            continue
        obs = c.observe(step)
        if obs["phase"] == "NotCreated":
            args = step_args(c, step)
            if isinstance(args, str):
                obs = {"phase": "Failed", "job": names.job_name(c.name, step), "reason": "MissingArtifact",
                       "message": args, "completionTime": fmt_time(c.now)}
            else:  # a per-group build's verify runs on a node of the group it measures
                obs = c.create(args, node_labels=fleet.verify_labels(c) if fleet.is_fleet(spec) else None)
        result = obs.get("result")
        if result is not None and not obs.get("sticky"):
            record_figures(c, result)
            if obs["phase"] == "Succeeded":
                c.artifacts_from(step, result)
        c.record_step(step, obs)
        if obs["phase"] != "Succeeded":
            st["stage"] = step
            c.scheduled_from(obs)
            return c.finish_step(step, obs)
    st["stage"] = "Done"
    m = st.get("metrics") or {}
    msg = f"converted to {spec['backend']} {spec['precision']}"
    if "mapDrop" in m:
        msg += f": mAP {m.get('converted', {}).get('mAP', float('nan')):.3f}, drop {m['mapDrop']:.4f}"
    return c.finish("Succeeded", "Succeeded", msg)


def samples(body: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """Metric samples (name, labels, value) of one ModelConversion, from its status."""
    meta, st, spec = body.get("metadata") or {}, body.get("status") or {}, body.get("spec") or {}
    base = {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "model": str(st.get("model") or ""),
            "backend": str(spec.get("backend") or ""), "precision": str(spec.get("precision") or "")}
    m = st.get("metrics") or {}
    out = [("edgetune_conversion_map_ratio", {**base, "which": which}, num((m.get(which) or {}).get("mAP")))
           for which in ("converted", "reference")]
    out.append(("edgetune_conversion_map_drop_ratio", base, num(m.get("mapDrop"))))
    return [s for s in out if s[2] is not None]
