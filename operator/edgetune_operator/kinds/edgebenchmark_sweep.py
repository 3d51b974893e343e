"""An EdgeBenchmark over several ModelConversions (spec.modelConversions or spec.selector): one
`sweep` Job on the edge device measures their models side by side (interleaved blocks, one
process per model, edgetune_jobs.steps.sweep) and status gets the table backend x precision
(status.rows: size and accuracy from each conversion's own verify, latency, throughput and
peak memory from the sweep), the best row within spec.maxMapDrop (status.best, the `Best`
column; status.latency/throughputFps/backend/precision are the best row's, so the benchmark
gauges and columns show it) and the picture (status.artifacts.plot, .plotPng).

Why a sweep is an EdgeBenchmark and not a kind of its own: each cell already is a
ModelConversion with its own export, build, verify gate, events, status and metrics (a
collapsed int8 model fails there, with its drop and budget, its artifact kept), and the
benchmark of a device already is an EdgeBenchmark (placement, images, threads, warm-up,
iterations); what a sweep adds is the measurement of several models *side by side* -- the only
fair comparison on one device -- and the table. Selecting conversions by label keeps "one
apply" (a file of ModelConversions sharing a label plus one EdgeBenchmark) without an operator
that creates custom resources of its own.

The sweep waits until every selected conversion has finished (Succeeded or Failed); a Failed
one is a marked row (measured when its model was built: an accuracy failure keeps the model),
never a reason to fail the sweep. Once its Job exists the selection is fixed.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from edgetune_contract.args import SweepArgs
from edgetune_contract.results import SweepResult, device_label

from .. import jobspec, schema
from .common import Context, Plan, num

GAUGE_LABELS = ("namespace", "name", "conversion", "device", "backend", "precision")
GAUGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "edgetune_sweep_latency_seconds": ("Pipeline latency of each row of a sweep (quantile 0.5, 0.99 or mean).",
                                       GAUGE_LABELS + ("quantile",)),
    "edgetune_sweep_throughput_fps": ("Frames per second of each row of a sweep.", GAUGE_LABELS),
    "edgetune_sweep_peak_memory_bytes": ("Peak resident memory of each row of a sweep.", GAUGE_LABELS),
    "edgetune_sweep_map_drop_ratio": ("mAP(PyTorch) - mAP(converted) of each row of a sweep.", GAUGE_LABELS),
    "edgetune_sweep_model_size_bytes": ("Size of each row's built model.", GAUGE_LABELS),
    "edgetune_sweep_best_info": ("1 for the best row of a sweep (fastest within the accuracy budget).",
                                 GAUGE_LABELS),
}
FINAL = ("Succeeded", "Failed")


def is_sweep(spec: Mapping[str, Any]) -> bool:
    return bool(spec.get("modelConversions") or spec.get("selector"))


def selects(body: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether the sweep `body` takes the ModelConversion `other` (same namespace)."""
    spec = body.get("spec") or {}
    meta, ometa = body.get("metadata") or {}, other.get("metadata") or {}
    if other.get("kind") != "ModelConversion" or meta.get("namespace") != ometa.get("namespace"):
        return False
    if spec.get("modelConversions"):
        return ometa.get("name") in spec["modelConversions"]
    want = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = ometa.get("labels") or {}
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def _row(c: Context, conv: Mapping[str, Any]) -> tuple[dict, dict | None]:
    """(status row, the sweep's --models entry or None when there is no model to measure)."""
    name = conv["metadata"]["name"]
    cst = conv.get("status") or {}
    cspec = schema.apply_defaults("ModelConversion", conv.get("spec") or {})
    m = cst.get("metrics") or {}
    row: dict[str, Any] = {"conversion": name, "backend": cspec["backend"], "precision": cspec["precision"],
                           "accuracyOk": cst.get("phase") == "Succeeded"}
    for key, value in (("modelBytes", num(m.get("engineBytes"))), ("mAP", num((m.get("converted") or {}).get("mAP"))),
                       ("mapDrop", num(m.get("mapDrop")))):
        if value is not None:
            row[key] = value
    if cst.get("phase") == "Failed":
        row["message"] = f"conversion failed: {cst.get('message', '')}"[:512]
    arts = cst.get("artifacts") or {}
    model, meta = c.path(arts.get("engine") or arts.get("model")), c.path(arts.get("meta"))
    if not model or not meta:
        row["message"] = row.get("message") or "no built model recorded"
        return row, None
    entry = {"name": name, "backend": cspec["backend"], "precision": cspec["precision"], "model": model, "meta": meta,
             "accuracyOk": row["accuracyOk"]}
    entry.update({k: row[k] for k in ("mAP", "mapDrop", "modelBytes") if k in row})
    return row, entry


def _select(c: Context, convs: list[Mapping[str, Any]]) -> tuple[bool, str, str, list]:
    spec = c.spec
    mine = sorted((b for b in convs if selects(c.body, b)), key=lambda b: b["metadata"]["name"])
    if spec.get("modelConversions"):
        have = {b["metadata"]["name"] for b in mine}
        missing = [n for n in spec["modelConversions"] if n not in have]
        if missing:
            return False, "SourceNotFound", f"ModelConversion(s) {', '.join(missing)} not found in namespace {c.ns}", []
    elif not mine:
        sel = ",".join(f"{k}={v}" for k, v in sorted(spec["selector"]["matchLabels"].items()))
        return False, "SourceNotFound", f"no ModelConversion in namespace {c.ns} matches {sel}", []
    waiting = [f"{b['metadata']['name']} ({(b.get('status') or {}).get('phase') or 'Pending'})" for b in mine
               if (b.get("status") or {}).get("phase") not in FINAL]
    if waiting:
        return False, "WaitingForModel", f"waiting for ModelConversion(s) {', '.join(waiting)} to finish", []
    return True, "ModelReady", f"{len(mine)} ModelConversion(s) finished", mine


def _apply(c: Context, result: SweepResult) -> None:
    st = c.status
    measured = {r["name"]: r for r in result.rows}
    rows = []
    for row in st.get("rows") or []:
        row = dict(row)
        got = measured.get(row["conversion"]) or {}
        for src, dst in (("p50_ms", "p50Ms"), ("p99_ms", "p99Ms"), ("mean_ms", "meanMs"), ("fps", "throughputFps"),
                         ("peak_rss_mib", "peakRssMiB"), ("inference_p50_ms", "inferenceP50Ms")):
            if num(got.get(src)) is not None:
                row[dst] = num(got[src])
        if got.get("precision_run"):
            row["precisionRun"] = got["precision_run"]
        if got.get("error"):
            row["message"] = f"not measured: {got['error']}"[:512]
        row["withinBudget"] = bool(got.get("within_budget")) and "p50Ms" in row  # the step's verdict
        rows.append(row)
    st["rows"] = rows
    best = next((r for r in rows if r["conversion"] == result.best), None)
    if best is not None:
        drop = best.get("mapDrop")
        st["best"] = {"conversion": best["conversion"], "backend": best["backend"], "precision": best["precision"],
                      "p50Ms": best["p50Ms"], "summary": f"{best['backend']} {best['precision']} "
                      f"{best['p50Ms']:.1f}ms" + (f" drop {drop:.3f}" if drop is not None else "")}
        if drop is not None:
            st["best"]["mapDrop"] = drop
        st["latency"] = {"pipeline": {k: best[k] for k in ("p50Ms", "p99Ms", "meanMs") if k in best}}
        for key in ("throughputFps", "peakRssMiB"):
            if key in best:
                st[key] = best[key]
        st.update(backend=best["backend"], precision=best["precision"], model=best["conversion"])
    else:
        st["best"] = {"summary": "none within budget"}
    device = result.provenance.get("device") or jobspec.device_of(c.kind, c.spec, "sweep", c.settings)
    if device:
        st["device"] = device_label(device)
    c.artifacts_from("sweep", result)
    arts = st.get("artifacts") or {}
    if "plot_png" in arts:
        arts["plotPng"] = arts.pop("plot_png")


def plan(c: Context, convs: list[Mapping[str, Any]]) -> Plan:
    st, spec = c.status, c.spec
    obs = c.observe("sweep")
    if obs["phase"] == "NotCreated":
        ok, reason, message, mine = _select(c, convs)
        c.upstream("ModelReady", ok, reason, message)
        if not ok:
            return c.finish("Waiting", reason, message, progressing_reason="Waiting")
        rows, models = [], []
        for conv in mine:
            row, entry = _row(c, conv)
            row["withinBudget"] = False
            rows.append(row)
            if entry is not None:
                models.append(entry)
        st["rows"] = rows
        st["run"] = 1
        if not models:
            st.pop("best", None)
            return c.finish("Failed", "NoModels", "no selected ModelConversion has a built model: " +
                            "; ".join(f"{r['conversion']}: {r.get('message', '')}" for r in rows)[:900])
        images = sweep_images(c, spec, mine)
        args = SweepArgs(out=c.out("sweep"), models=json.dumps(models, separators=(",", ":"), sort_keys=True),
                         **{k: v for k, v in (("warmup", spec.get("warmup")), ("iterations", spec.get("iterations")),
                                              ("images", images), ("threads", spec.get("threads")),
                                              ("max_map_drop", spec.get("maxMapDrop"))) if v is not None})
        obs = c.create(args)
    result = obs.get("result")
    if obs["phase"] == "Succeeded" and not obs.get("sticky") and isinstance(result, SweepResult):
        _apply(c, result)
    c.record_step("sweep", obs)
    c.scheduled_from(obs)
    if obs["phase"] == "Succeeded":
        best = (st.get("best") or {}).get("summary", "")
        return c.finish("Succeeded", "Succeeded", f"swept {len(st.get('rows') or [])} models; best: {best}")
    return c.finish_step("sweep", obs)


def sweep_images(c: Context, spec: Mapping[str, Any], convs: list[Mapping[str, Any]]) -> str | None:
    """spec.images, else the first conversion's validation images, else None (synthetic)."""
    if spec.get("images"):
        return c.spec_path(spec["images"])
    for conv in convs:
        val = c.in_pod(((conv.get("status") or {}).get("source") or {}).get("valDataset"))
        if val:
            return val.rstrip("/") + "/images"
    return None


def samples(body: Mapping[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    meta, st = body.get("metadata") or {}, body.get("status") or {}
    best = (st.get("best") or {}).get("conversion")
    out = []
    for row in st.get("rows") or []:
        lbl = {"namespace": meta.get("namespace", ""), "name": meta.get("name", ""), "conversion": row["conversion"],
               "device": str(st.get("device") or ""), "backend": row.get("backend", ""),
               "precision": row.get("precision", "")}
        for key, q in (("p50Ms", "0.5"), ("p99Ms", "0.99"), ("meanMs", "mean")):
            if num(row.get(key)) is not None:
                out.append(("edgetune_sweep_latency_seconds", {**lbl, "quantile": q}, row[key] / 1000.0))
        for key, metric, scale in (("throughputFps", "edgetune_sweep_throughput_fps", 1.0),
                                   ("peakRssMiB", "edgetune_sweep_peak_memory_bytes", 2.0 ** 20),
                                   ("mapDrop", "edgetune_sweep_map_drop_ratio", 1.0),
                                   ("modelBytes", "edgetune_sweep_model_size_bytes", 1.0)):
            if num(row.get(key)) is not None:
                out.append((metric, lbl, num(row[key]) * scale))
        if "p50Ms" in row:
            out.append(("edgetune_sweep_best_info", lbl, 1.0 if row["conversion"] == best else 0.0))
    return out
