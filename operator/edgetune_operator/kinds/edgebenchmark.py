"""EdgeBenchmark: a `benchmark` Job on the edge device, once or on a cron schedule (run n is Job
`<name>-benchmark-<n>`); status gets the latency per stage, throughput, the device, and the
last historyLimit runs."""

from __future__ import annotations

from typing import Any, Mapping

from edgetune_contract.args import BenchmarkArgs
from edgetune_contract.results import STAGES, BenchmarkResult, device_label

from .. import jobspec, schema
from ..cron import Cron, CronError
from ..observe import fmt_time, parse_time
from . import edgebenchmark_fleet as fleet
from . import edgebenchmark_sweep as sweep
from .common import FINAL, Context, Plan, latency_status, num

KIND = "EdgeBenchmark"
QUANTILES = {"p50Ms": "0.5", "p90Ms": "0.9", "p99Ms": "0.99", "meanMs": "mean"}
LABELS = ("namespace", "name", "model", "device", "backend", "precision")
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgetune_benchmark_latency_seconds": ("Latency of an EdgeBenchmark's last successful run per stage and "
                                           "quantile (quantile=mean is the mean).", LABELS + ("stage", "quantile")),
    "edgetune_benchmark_throughput_fps": ("Frames per second of an EdgeBenchmark's last successful run.", LABELS),
    "edgetune_benchmark_last_run_timestamp_seconds": ("Unix time of an EdgeBenchmark's last successful run.",
                                                      ("namespace", "name")),
    "edgetune_benchmark_peak_memory_bytes": ("Peak resident memory of an EdgeBenchmark's last successful run "
                                             "(a sweep: of its best row).", LABELS),
    **sweep.GAUGES,
    **fleet.GAUGES,
}


def related_key(body: Mapping[str, Any]) -> tuple[str, str, str] | None:
    ref = (body.get("spec") or {}).get("modelConversion")
    return ("ModelConversion", body["metadata"]["namespace"], ref) if ref else None


def is_selector(body: Mapping[str, Any]) -> bool:
    """A sweep: it depends on several ModelConversions (sweep.selects says which)."""
    return sweep.is_sweep(body.get("spec") or {})


selects = sweep.selects


def model_of(c: Context, conv: Mapping[str, Any] | None) -> tuple[bool, str, str, dict]:
    """(ready, reason, message, {"inputs", "info"}) of the ModelConversion to measure."""
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
        return False, "SourceInAnotherStore", (f"ModelConversion {ref!r} artifacts are in another store ({model}); "
                                                    "use the same spec.artifacts"), {}
    cspec = schema.apply_defaults("ModelConversion", conv.get("spec") or {})
    inputs = {"model": c.path(model), "meta": c.path(arts["meta"]), "backend": cspec["backend"]}
    val = c.in_pod((cst.get("source") or {}).get("valDataset"))
    if val:
        inputs["images"] = val.rstrip("/") + "/images"
    info = {"model": cst.get("model") or ref, "backend": cspec["backend"], "precision": cspec["precision"]}
    return True, "ModelReady", f"ModelConversion {ref!r} succeeded", {"inputs": inputs, "info": info}


def benchmark_args(c: Context, inputs: Mapping[str, str], run: int) -> BenchmarkArgs:
    spec = c.spec
    images = c.spec_path(spec.get("images")) or inputs.get("images")
    kw = dict(out=c.out("benchmark", run), model=inputs["model"], meta=inputs["meta"], backend=inputs["backend"],
              warmup=spec.get("warmup"), iterations=spec.get("iterations"), duration=spec.get("durationSeconds"),
              images=images, threads=spec.get("threads"))
    return BenchmarkArgs(**{k: v for k, v in kw.items() if v is not None})


def _apply_result(c: Context, obs: dict, result: BenchmarkResult, run: int) -> None:
    st = c.status
    lat = {stage: latency_status(result.latency.get(stage)) for stage in STAGES}
    lat = {k: v for k, v in lat.items() if v}
    if lat:
        st["latency"] = lat
    if num(result.fps) is not None:
        st["throughputFps"] = num(result.fps)
    for key, value in (("peakRssMiB", result.peak_rss_mib), ("peakDeviceMiB", result.peak_device_mib)):
        if num(value) is not None:
            st[key] = num(value)
        else:
            st.pop(key, None)
    device = result.provenance.get("device") or jobspec.device_of(c.kind, c.spec, "benchmark", c.settings) \
        or obs.get("node")
    if device:
        st["device"] = device_label(device)
    st["lastRunTime"] = fmt_time(parse_time(obs.get("completionTime")) or c.now)
    c.artifacts_from("benchmark", result, run)


def _history_entry(c: Context, obs: dict, run: int) -> dict:
    st = c.status
    entry: dict[str, Any] = {"run": run, "phase": obs["phase"], "job": obs.get("job"),
                             "message": (obs.get("message") or "")[:512]}
    step = next((s for s in st.get("steps") or [] if s.get("name") == "benchmark"), {})
    for k in ("startTime", "completionTime"):
        if step.get(k):
            entry[k] = step[k]
    if obs["phase"] == "Succeeded":
        pipe = (st.get("latency") or {}).get("pipeline") or {}
        for k in ("p50Ms", "p99Ms"):
            if k in pipe:
                entry[k] = pipe[k]
        for k in ("throughputFps", "peakRssMiB"):
            if k in st:
                entry[k] = st[k]
    return entry


def _schedule_next(c: Context, cron: Cron, obs: dict, run: int, ok: bool, model: dict) -> Plan | None:
    """After a finished run of a scheduled benchmark: start the next run when its tick has
    come, else requeue for that tick. Ticks that came while the run was running are skipped
    (CronJob's Forbid: two runs on one device would measure each other) and recorded, once
    per run: status.skippedRuns, .lastSkippedTime and a RunSkipped Event."""
    st = c.status
    last = parse_time(st.get("lastScheduleTime")) or parse_time(obs.get("completionTime")) or c.now
    nxt = cron.next_after(last)
    step = next((s for s in st.get("steps") or [] if s.get("name") == "benchmark"), {})
    done = parse_time(step.get("completionTime"))
    if done and nxt <= done:
        skipped, tick = [], nxt
        while tick <= done and len(skipped) < 10_000:
            skipped.append(tick)
            tick = cron.next_after(tick)
        if st.get("skipsRecordedFor") != run:
            st["skipsRecordedFor"] = run
            st["skippedRuns"] = int(st.get("skippedRuns") or 0) + len(skipped)
            st["lastSkippedTime"] = fmt_time(skipped[-1])
            c.plan.events.append(("Normal", "RunSkipped", f"{len(skipped)} scheduled run(s) skipped "
                                  f"({fmt_time(skipped[0])} .. {fmt_time(skipped[-1])}): run {run} was still "
                                  "going; runs never overlap on a device"))
        nxt = tick
    if c.now >= nxt and ok:
        run += 1
        st["run"] = run
        st["lastScheduleTime"] = fmt_time(c.now)
        st.pop("nextScheduleTime", None)
        st.update(model["info"])
        new = c.create(benchmark_args(c, model["inputs"], run), run=run)
        c.record_step("benchmark", new)
        c.cond("Scheduled", "Unknown", "WaitingForPod", f"run {run}: Job {new['job']} created")
        return c.finish("Pending", "JobCreated", f"run {run}: {new['message']}")
    st["nextScheduleTime"] = fmt_time(nxt)
    c.plan.requeue((nxt - c.now).total_seconds() + 0.5)
    return None


def plan(c: Context, conv: Any, progress: Any = None) -> Plan:
    """conv: the ModelConversion (its body or None); for a sweep, the list of those in the namespace."""
    st, spec = c.status, c.spec
    if sweep.is_sweep(spec):
        return sweep.plan(c, list(conv or []) if isinstance(conv, list) else [])
    ok, reason, message, model = model_of(c, conv)
    c.upstream("ModelReady", ok, reason, message)
    if fleet.is_fleet(spec):
        return fleet.plan(c, conv, ok, reason, message, model)
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
        if reason == "ModelConversionFailed":  # nothing to measure: failed too, naming the upstream message
            return c.finish("Failed", reason, message)
        if not ok:
            return c.finish("Waiting", reason, message, progressing_reason="Waiting")
        st.update(model["info"])
        st["run"] = run
        if cron is not None and not st.get("lastScheduleTime"):
            st["lastScheduleTime"] = fmt_time(c.now)
        obs = c.create(benchmark_args(c, model["inputs"], run), run=run)
    result = obs.get("result")
    if obs["phase"] == "Succeeded" and not obs.get("sticky") and isinstance(result, BenchmarkResult):
        _apply_result(c, obs, result, run)
    c.record_step("benchmark", obs)
    if obs["phase"] in FINAL and not obs.get("sticky"):
        hist = [h for h in st.get("history") or [] if h.get("run") != run]
        hist.insert(0, _history_entry(c, obs, run))
        st["history"] = hist[: spec["historyLimit"]]
    c.scheduled_from(obs)
    if obs["phase"] in FINAL:
        keep_from = run - spec["historyLimit"] + 1  # prune Jobs of runs that fell out of the history
        for j in c.jobs.values():
            if j.get("step") == "benchmark" and j.get("run", 1) < keep_from and not j.get("deleting"):
                c.plan.delete.append(j["name"])
        if cron is not None:
            started = _schedule_next(c, cron, obs, run, ok, model)
            if started is not None:
                return started
    if obs["phase"] == "Succeeded":
        pipe = (st.get("latency") or {}).get("pipeline") or {}
        msg = (f"run {run}: " if cron is not None else "") + "benchmarked"
        if "p50Ms" in pipe:
            msg += f": pipeline p50 {pipe['p50Ms']:.1f} ms, p99 {pipe.get('p99Ms', float('nan')):.1f} ms"
        if "throughputFps" in st:
            msg += f", {st['throughputFps']:.1f} FPS"
        return c.finish("Succeeded", "Succeeded", msg)
    return c.finish_step("benchmark", obs)


def samples(body: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    """Metric samples (name, labels, value) of one EdgeBenchmark, from its status."""
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    ns, name = meta.get("namespace", ""), meta.get("name", "")
    base = {"namespace": ns, "name": name, "model": str(st.get("model") or ""), "device": str(st.get("device") or ""),
            "backend": str(st.get("backend") or ""), "precision": str(st.get("precision") or "")}
    out = []
    for stage, stats in (st.get("latency") or {}).items():
        for key, q in QUANTILES.items():
            v = num((stats or {}).get(key))
            if v is not None:
                out.append(("edgetune_benchmark_latency_seconds", {**base, "stage": stage, "quantile": q}, v / 1000.0))
    if num(st.get("throughputFps")) is not None:
        out.append(("edgetune_benchmark_throughput_fps", base, num(st["throughputFps"])))
    if num(st.get("peakRssMiB")) is not None:
        out.append(("edgetune_benchmark_peak_memory_bytes", base, num(st["peakRssMiB"]) * 2.0 ** 20))
    out.extend(sweep.samples(body))
    out.extend(fleet.samples(body))
    t = parse_time(st.get("lastRunTime"))
    if t is not None:
        out.append(("edgetune_benchmark_last_run_timestamp_seconds", {"namespace": ns, "name": name}, t.timestamp()))
    return out
