"""The EdgeBenchmark's spec and status schema and printer columns."""

from __future__ import annotations

from edgetune_contract.results import STAGES

from .common import (AGE, CRON, DEVICE_LABELS, DNS_SUBDOMAIN, EDGE_DEFAULT, IMMUTABLE, LABEL_KEY, array,
                     artifact_path, artifacts_spec, boolean, column, common_status, env_list, integer, latency_stats,
                     number, obj, placement, rule, run_settings, string, string_map, timestamp)

SHORT_NAMES = ['ebm', 'edgebench']
DESCRIPTION = ("Measures a converted model's latency (per stage, percentiles), throughput and peak memory "
               "on an edge device, once or on a cron schedule; or, as a sweep, several ModelConversions "
               "side by side: the backend x precision table, the best row within an accuracy budget and "
               "an accuracy-vs-latency picture.")


SWEEP = "has(self.modelConversions) || has(self.selector)"


def spec() -> dict:
    return obj("The desired benchmark. Immutable once created.", {
        "modelConversion": string("The ModelConversion (in this namespace) whose model is measured.",
                              pattern=DNS_SUBDOMAIN, maxLength=253),
        "modelConversions": array(
            "A sweep: several ModelConversions (in this namespace) measured side by side on one device, "
            "in interleaved blocks, one process per model; status.rows gets the table and status.best the "
            "fastest row within maxMapDrop.",
            string("A ModelConversion.", pattern=DNS_SUBDOMAIN, maxLength=253),
            minItems=1, maxItems=16, **{"x-kubernetes-list-type": "set"}),
        "selector": obj("A sweep over the ModelConversions (in this namespace) whose labels match.", {
            "matchLabels": string_map("Labels a ModelConversion must have.", "The label value.",
                                      minProperties=1, maxProperties=16),
        }, required=["matchLabels"]),
        "maxMapDrop": number("Sweeps: the accuracy budget of status.best (each row's mAP drop against the "
                             "PyTorch model, from its ModelConversion's verify); unset: every row whose "
                             "conversion passed its own gate.", minimum=0, maximum=1),
        "target": placement("benchmark Job (the edge device)", EDGE_DEFAULT),
        "fleet": obj(
            "Benchmark every node the target's nodeSelector selects, one Job pinned to each Ready node: "
            "status.devices gets one row per node, status.fleet the summary (worst p99 and where). Nodes "
            "that are not Ready, cordoned, or carry a taint the target does not tolerate get a row with the "
            "reason and no Job. With a ModelConversion that builds one engine per device group (its "
            "spec.fleet), each node runs its group's engine. The set of nodes is fixed when the Jobs are "
            "created.", {
                "deviceLabels": array(
                    "Node label keys whose values make a device group (a device model): rows show them, and "
                    "a TensorRT engine built on one group is not run on another.",
                    string("A node label key.", maxLength=317, pattern=LABEL_KEY),
                    minItems=1, maxItems=8, default=list(DEVICE_LABELS), **{"x-kubernetes-list-type": "set"}),
                "maxNodes": integer("At most this many nodes run the benchmark (by name; the rest get a "
                                    "row with reason FleetLimit).", minimum=1, maximum=256, default=32),
            }),
        "warmup": integer("Untimed warm-up iterations.", minimum=0, maximum=100000, default=20),
        "iterations": integer("Timed iterations.", minimum=1, maximum=1000000, default=200),
        "durationSeconds": number("Run for at least this long (iterations are repeated).", exclusiveMinimum=True,
                              minimum=0, maximum=86400),
        "images": artifact_path("A folder of images to run on (default: the model's validation images, "
                                 "else synthetic)."),
        "threads": integer("CPU threads of the runtime.", minimum=1, maximum=256),
        "schedule": string("Cron schedule (5 fields, or @hourly/@daily/@weekly/@monthly/@yearly, UTC) "
                       "for repeated runs; unset runs once. A tick that comes while the previous run is "
                       "still going is skipped and counted in status.skippedRuns (runs never overlap).", maxLength=128, pattern=CRON),
        "historyLimit": integer("Results of scheduled runs kept in status.history (older Jobs are deleted).",
                           minimum=1, maximum=100, default=5),
        "run": run_settings(),
        "artifacts": artifacts_spec(),
        "env": env_list(),
    }, rules=[IMMUTABLE,
              rule("[has(self.modelConversion), has(self.modelConversions), has(self.selector)]"
                   ".filter(x, x).size() == 1",
                   "exactly one of modelConversion, modelConversions and selector must be set"),
              rule(f"!({SWEEP}) || !has(self.schedule)", "a sweep (modelConversions or selector) runs once: "
                   "schedule is for a single modelConversion", field_path=".schedule"),
              rule(f"!has(self.maxMapDrop) || {SWEEP}", "maxMapDrop is the budget of a sweep "
                   "(modelConversions or selector)", field_path=".maxMapDrop"),
              rule("!has(self.fleet) || has(self.modelConversion)", "a fleet benchmark measures one "
                   "modelConversion on every selected node: a sweep (modelConversions or selector) runs on one "
                   "device", field_path=".fleet"),
              rule("!has(self.fleet) || !has(self.schedule)", "a fleet benchmark runs once: schedule is for a "
                   "single device", field_path=".fleet")])


def status() -> dict:
    return common_status({
        "model": string("The measured model's name."),
        "backend": string("The runtime backend."), "precision": string("The model's precision."),
        "device": string("The device the benchmark ran on (the result's provenance, else the node selector)."),
        "node": string("The node the last run's Pod ran on."),
        "run": integer("The number of the current (or last) run; 1 for unscheduled benchmarks."),
        "latency": obj("Latency of the last successful run per stage.", {
            st: latency_stats(f"The {st} stage.") for st in STAGES}),
        "throughputFps": number("Frames per second of the last successful run."),
        "peakRssMiB": number("Peak resident memory of the last successful run's process, MiB (model loading "
                             "included)."),
        "peakDeviceMiB": number("Peak device (GPU) memory of the last successful run, MiB, where measurable."),
        "rows": array("Sweeps: one row per ModelConversion (backend x precision), in name order.", obj("A row.", {
            "conversion": string("The ModelConversion."), "backend": string("Its backend."),
            "precision": string("Its precision."), "precisionRun": string("The precision the runtime ran."),
            "modelBytes": number("Size of the built model."),
            "mAP": number("Converted mAP (its verify)."), "mapDrop": number("mAP(PyTorch) - mAP(converted)."),
            "accuracyOk": boolean("The conversion passed its own maxMapDrop gate."),
            "withinBudget": boolean("Eligible for best (the sweep step's verdict): accuracyOk, and the drop "
                                    "within spec.maxMapDrop where set."),
            "p50Ms": number("Pipeline median latency, ms."), "p99Ms": number("Pipeline p99 latency, ms."),
            "meanMs": number("Pipeline mean latency, ms."), "inferenceP50Ms": number("Model median latency, ms."),
            "throughputFps": number("Frames per second."), "peakRssMiB": number("Peak resident memory, MiB."),
            "message": string("Why a row is marked or not measured."),
        }), maxItems=16, **{"x-kubernetes-list-type": "atomic"}),
        "devices": array("Fleet benchmarks: one row per selected node, in name order.", obj("A device.", {
            "node": string("The node."),
            "deviceLabels": string_map("Its device group: the values of spec.fleet.deviceLabels on the node.",
                                       "The label value."),
            "device": string("The device, as the benchmark step recorded it (its provenance)."),
            "versions": string_map("Runtime versions the step recorded.", "A version."),
            "model": string("The model or engine measured (its device group's engine where built per group)."),
            "phase": string("Pending, Running, Succeeded, Failed or Skipped (no Job: see reason).",
                            enum=["Pending", "Running", "Succeeded", "Failed", "Skipped"]),
            "reason": string("Reason of the phase (NodeNotReady, NodeUnschedulable, UntoleratedTaint, "
                             "NoEngineForDevice, EngineNotPortable, FleetLimit, the step's reason)."),
            "message": string("Details."),
            "job": string("The node's Job."), "jobUID": string("Its UID once seen."),
            "recreated": integer("How often the Job was deleted while it ran and recreated.", minimum=0),
            "startTime": timestamp("When the Job started."), "completionTime": timestamp("When it finished."),
            "p50Ms": number("Pipeline median latency, ms."), "p90Ms": number("Pipeline p90 latency, ms."),
            "p99Ms": number("Pipeline p99 latency, ms."), "meanMs": number("Pipeline mean latency, ms."),
            "throughputFps": number("Frames per second."), "peakRssMiB": number("Peak resident memory, MiB."),
            "artifacts": string_map("The node's outputs (URIs).", "An artifact URI."),
        }, required=["node"]), maxItems=256, **{"x-kubernetes-list-type": "atomic"}),
        "fleet": obj("Fleet benchmarks: the summary of status.devices.", {
            "devices": integer("Rows."), "measured": integer("Rows Succeeded."), "failed": integer("Rows Failed."),
            "skipped": integer("Rows Skipped."), "pending": integer("Rows not finished."),
            "worstP99Ms": number("The highest pipeline p99 among the measured devices, ms."),
            "worstNode": string("The node it was measured on."), "worstDevice": string("Its device."),
            "summary": string("One line for `kubectl get`: measured/devices, worst p99 and where."),
        }),
        "best": obj("Sweeps: the fastest row within the accuracy budget.", {
            "conversion": string("The ModelConversion."), "backend": string("Its backend."),
            "precision": string("Its precision."), "p50Ms": number("Pipeline median latency, ms."),
            "mapDrop": number("Its mAP drop."),
            "summary": string("One line for `kubectl get`: backend precision, p50, drop."),
        }),
        "lastRunTime": timestamp("When the last successful run finished."),
        "lastScheduleTime": timestamp("When the last scheduled run was started."),
        "nextScheduleTime": timestamp("When the next scheduled run is due."),
        "skippedRuns": integer("Scheduled ticks skipped because the previous run was still going (the policy "
                               "is CronJob's Forbid: runs never overlap on a device)."),
        "lastSkippedTime": timestamp("The last scheduled tick that was skipped."),
        "skipsRecordedFor": integer("The run whose skipped ticks skippedRuns counts (each run's once)."),
        "history": array("The last historyLimit runs, newest first.", obj("A run.", {
            "run": integer("Run number."), "phase": string("Succeeded or Failed."),
            "job": string("The run's Job."),
            "startTime": timestamp("Start."), "completionTime": timestamp("End."),
            "p50Ms": number("Pipeline median latency, ms."), "p99Ms": number("Pipeline p99 latency, ms."),
            "throughputFps": number("Frames per second."), "peakRssMiB": number("Peak resident memory, MiB."),
            "message": string("The run's message."),
        }), maxItems=100, **{"x-kubernetes-list-type": "atomic"}),
    })


COLUMNS = [
    column("Phase", "string", ".status.phase", "Waiting, Pending, Running, Succeeded or Failed."),
    column("Device", "string", ".status.device", "Where it ran."),
    column("P50(ms)", "number", ".status.latency.pipeline.p50Ms", "Pipeline median latency."),
    column("P99(ms)", "number", ".status.latency.pipeline.p99Ms", "Pipeline 99th percentile latency."),
    column("FPS", "number", ".status.throughputFps", "Throughput (a sweep: of its best row)."),
    column("Best", "string", ".status.best.summary", "Sweeps: the fastest row within the accuracy budget."),
    column("Fleet", "string", ".status.fleet.summary", "Fleet benchmarks: devices measured, the worst p99 and where."),
    column("Peak-RSS(MiB)", "number", ".status.peakRssMiB", "Peak resident memory.", priority=1),
    column("Model", "string", ".spec.modelConversion", "The ModelConversion.", priority=1),
    AGE,
]
