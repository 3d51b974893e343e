"""The EdgeBenchmark's spec and status schema and printer columns."""

from __future__ import annotations

from edgetune_contract.results import STAGES

from .common import (AGE, CRON, DNS_SUBDOMAIN, EDGE_DEFAULT, IMMUTABLE, array, artifact_path, artifacts_spec,
                     column, common_status, env_list, integer, latency_stats, number, obj, placement,
                     run_settings, string, timestamp)

SHORT_NAMES = ['ebm', 'edgebench']
DESCRIPTION = ("Measures a converted model's latency (per stage, percentiles) and throughput "
               "on an edge device, once or on a cron schedule.")


def spec() -> dict:
    return obj("The desired benchmark. Immutable once created.", {
        "modelConversion": string("The ModelConversion (in this namespace) whose model is measured.",
                              pattern=DNS_SUBDOMAIN, maxLength=253),
        "target": placement("benchmark Job (the edge device)", EDGE_DEFAULT),
        "warmup": integer("Untimed warm-up iterations.", minimum=0, maximum=100000, default=20),
        "iterations": integer("Timed iterations.", minimum=1, maximum=1000000, default=200),
        "durationSeconds": number("Run for at least this long (iterations are repeated).", exclusiveMinimum=True,
                              minimum=0, maximum=86400),
        "images": artifact_path("A folder of images to run on (default: the model's validation images, "
                                 "else synthetic)."),
        "threads": integer("CPU threads of the runtime.", minimum=1, maximum=256),
        "schedule": string("Cron schedule (5 fields, or @hourly/@daily/@weekly/@monthly/@yearly, UTC) "
                       "for repeated runs; unset runs once.", maxLength=128, pattern=CRON),
        "historyLimit": integer("Results of scheduled runs kept in status.history (older Jobs are deleted).",
                           minimum=1, maximum=100, default=5),
        "run": run_settings(),
        "artifacts": artifacts_spec(),
        "env": env_list(),
    }, required=["modelConversion"], rules=[IMMUTABLE])


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
        "lastRunTime": timestamp("When the last successful run finished."),
        "lastScheduleTime": timestamp("When the last scheduled run was started."),
        "nextScheduleTime": timestamp("When the next scheduled run is due."),
        "history": array("The last historyLimit runs, newest first.", obj("A run.", {
            "run": integer("Run number."), "phase": string("Succeeded or Failed."),
            "job": string("The run's Job."),
            "startTime": timestamp("Start."), "completionTime": timestamp("End."),
            "p50Ms": number("Pipeline median latency, ms."), "p99Ms": number("Pipeline p99 latency, ms."),
            "throughputFps": number("Frames per second."), "message": string("The run's message."),
        }), maxItems=100, **{"x-kubernetes-list-type": "atomic"}),
    })


COLUMNS = [
    column("Phase", "string", ".status.phase", "Waiting, Pending, Running, Succeeded or Failed."),
    column("Device", "string", ".status.device", "Where it ran."),
    column("P50(ms)", "number", ".status.latency.pipeline.p50Ms", "Pipeline median latency."),
    column("P99(ms)", "number", ".status.latency.pipeline.p99Ms", "Pipeline 99th percentile latency."),
    column("FPS", "number", ".status.throughputFps", "Throughput."),
    column("Model", "string", ".spec.modelConversion", "The ModelConversion.", priority=1),
    AGE,
]
