"""Building blocks of the CRD schemas: typed property helpers, the shared pieces (placement,
env, run settings, artifacts, conditions, steps, the common status) and printer columns.
Each kind's own spec and status are in this package's module of that kind."""

from __future__ import annotations

from typing import Any

from edgetune_contract.results import COCO_KEYS

PHASES = ("Pending", "Waiting", "Running", "Succeeded", "Failed")
STEP_PHASES = ("Pending", "Running", "Succeeded", "Failed")

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
QUANTITY = (r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
            r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
CRON = r"^(@(yearly|annually|monthly|weekly|daily|hourly)|([0-9*,/-]+\s+){4}[0-9*,/-]+)$"
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
DEVICE_LABELS = ("nvidia.com/gpu.product", "nvidia.com/jetpack.version")  # a fleet's device group: model, JetPack


# --- schema helpers -------------------------------------------------------------------------


def rule(expr: str, message: str, field_path: str | None = None, reason: str | None = None) -> dict:
    r: dict[str, Any] = {"rule": expr, "message": message}
    if field_path:
        r["fieldPath"] = field_path
    if reason:
        r["reason"] = reason
    return r


def string(desc: str, **kw: Any) -> dict:
    return {"type": "string", "description": desc, **kw}


def integer(desc: str, **kw: Any) -> dict:
    return {"type": "integer", "description": desc, **kw}


def number(desc: str, **kw: Any) -> dict:
    return {"type": "number", "description": desc, **kw}


def boolean(desc: str, **kw: Any) -> dict:
    return {"type": "boolean", "description": desc, **kw}


def timestamp(desc: str) -> dict:
    return {"type": "string", "format": "date-time", "description": desc}


def obj(desc: str, props: dict, required: tuple | list = (), rules: list | None = None, **kw: Any) -> dict:
    o: dict[str, Any] = {"type": "object", "description": desc, "properties": props}
    if required:
        o["required"] = list(required)
    if rules:
        o["x-kubernetes-validations"] = rules
    o.update(kw)
    return o


def array(desc: str, items: dict, **kw: Any) -> dict:
    return {"type": "array", "description": desc, "items": items, **kw}


def string_map(desc: str, value_desc: str, **kw: Any) -> dict:
    return {"type": "object", "description": desc,
            "additionalProperties": {"type": "string", "description": value_desc}, **kw}


def free_form(desc: str) -> dict:
    return {"type": "object", "description": desc, "x-kubernetes-preserve-unknown-fields": True}


# --- shared pieces ----------------------------------------------------------------------------


def artifact_path(desc: str) -> dict:
    return string(desc + " A path inside the artifact volume (relative to its root, no '..'), "
              "or an http(s)/s3/gs URL where the step accepts one.", minLength=1, maxLength=1024,
              **{"x-kubernetes-validations": [
                  rule("!self.startsWith('/') && !self.contains('..')",
                       "must be relative to the artifact volume's root and must not contain '..'")]})


def quantity_map(desc: str) -> dict:
    return {"type": "object", "description": desc, "maxProperties": 16,
            "additionalProperties": {
                "description": "A resource quantity (e.g. 2, 500m, 8Gi).",
                "anyOf": [{"type": "integer"}, {"type": "string"}],
                "x-kubernetes-int-or-string": True, "pattern": QUANTITY}}


def placement(what: str, default_desc: str) -> dict:
    return obj(
        f"Where the {what} runs. Each field given here replaces the operator's default "
        f"for it as a whole ({default_desc}).",
        {
            "nodeSelector": string_map("Node labels the Pod must match.", "The label value.",
                                  maxProperties=16, **{"x-kubernetes-validations": [
                                      rule("self.all(k, k.matches('" + LABEL_KEY.replace("\\", "\\\\") + "'))",
                                           "nodeSelector keys must be valid label keys")]}),
            "tolerations": array(
                "Taints the Pod tolerates (the core/v1 Toleration shape).",
                obj("A toleration.", {
                    "key": string("The taint key; empty with operator Exists matches every key.", maxLength=253),
                    "operator": string("Exists or Equal.", enum=["Exists", "Equal"], default="Equal"),
                    "value": string("The taint value (operator Equal).", maxLength=63),
                    "effect": string("The taint effect; empty matches all effects.",
                                 enum=["NoSchedule", "PreferNoSchedule", "NoExecute", ""]),
                    "tolerationSeconds": integer("How long a NoExecute taint is tolerated.", minimum=0),
                }, rules=[rule("self.operator != 'Exists' || !has(self.value) || self.value == ''",
                               "a toleration with operator Exists must not have a value")]),
                maxItems=16, **{"x-kubernetes-list-type": "atomic"}),
            "resources": obj("Compute resources of the step's container (core/v1 ResourceRequirements).", {
                "limits": quantity_map("Resource limits, e.g. {nvidia.com/gpu: 1, memory: 16Gi}."),
                "requests": quantity_map("Resource requests, e.g. {cpu: 2, memory: 8Gi}."),
            }),
            "image": string("Container image for the step; replaces the operator's image setting.",
                        minLength=1, maxLength=512, pattern=r"^\S+$"),
        })


def env_list() -> dict:
    return array(
        "Extra environment variables for the step containers (names starting with EDGETUNE_ are reserved).",
        obj("An environment variable.", {
            "name": string("The variable name.", pattern=ENV_NAME, maxLength=128),
            "value": string("The value.", maxLength=4096, default=""),
        }, required=["name"], rules=[rule("!self.name.startsWith('EDGETUNE_')",
                                          "env names starting with EDGETUNE_ are reserved for the operator",
                                          field_path=".name")]),
        maxItems=32, **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})


def run_settings() -> dict:
    return obj("How the Jobs run.", {
        "backoffLimit": integer("Retries of a failed step Pod before the step fails (Job backoffLimit).",
                           minimum=0, maximum=10, default=0),
        "activeDeadlineSeconds": integer("Time limit of each step's Job; unset uses the operator's per-step default.",
                                    minimum=10, maximum=7 * 24 * 3600),
        "podWaitingTimeoutSeconds": integer(
            "How long a step's Pod may stay stuck before it starts (image pull error, missing Secret or "
            "ConfigMap, ...) before the step fails with the kubelet's reason; unset uses the operator's "
            "default (EDGETUNE_POD_WAITING_TIMEOUT, 300 s). Pulling a large image is not stuck.",
            minimum=10, maximum=24 * 3600),
        "queueName": string("A Kueue LocalQueue: the Jobs are created suspended with the label "
                            "kueue.x-k8s.io/queue-name, and Kueue admits all Pods of a Job together (gang "
                            "admission); without Kueue installed they stay suspended.", pattern=DNS_SUBDOMAIN,
                            maxLength=253),
    }, default={})


def s3_store(desc: str) -> dict:
    """S3-compatible object storage (spec.artifacts.s3; the operator's EDGETUNE_ARTIFACTS_S3)."""
    return obj(desc, {
        "endpoint": string("The S3 endpoint URL: https://... (TLS) or http://... (no TLS), e.g. "
                           "https://s3.eu-central-1.amazonaws.com or http://seaweedfs.storage:8333.",
                           pattern=r"^https?://[^\s/]+(/\S*)?$", maxLength=2048),
        "bucket": string("The bucket (it must exist).", pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", maxLength=63),
        "prefix": string("A key prefix under which every artifact lives (e.g. edgetune/).", maxLength=512,
                         pattern=r"^[^\s]*$"),
        "region": string("The region for SigV4 signing.", maxLength=64, default="us-east-1"),
        "credentialsSecret": obj(
            "The Secret in the resource's namespace holding the access key pair; it reaches the step Pods "
            "only as secretKeyRef environment variables (the operator never reads it).", {
                "name": string("The Secret's name.", pattern=DNS_SUBDOMAIN, maxLength=253),
                "accessKeyIDKey": string("The key holding the access key ID.", maxLength=253, default="accessKeyID"),
                "secretAccessKeyKey": string("The key holding the secret access key.", maxLength=253,
                                             default="secretAccessKey"),
            }, required=["name"]),
        "caBundle": obj("A CA bundle (PEM) to verify an https endpoint's certificate, from a ConfigMap in the "
                        "resource's namespace.", {
                            "configMap": string("The ConfigMap's name.", pattern=DNS_SUBDOMAIN, maxLength=253),
                            "key": string("The key holding the PEM.", maxLength=253, default="ca.crt"),
                        }, required=["configMap"]),
    }, required=["endpoint", "bucket", "credentialsSecret"])


def artifacts_spec() -> dict:
    return obj("Where the steps read and write their artifacts: a volume every step mounts (claimName), or "
               "S3-compatible object storage the steps read and write themselves (s3) — for sites where the "
               "GPU server and the edge devices share no volume. Unset: the operator's default.", {
        "claimName": string("The PersistentVolumeClaim (in this namespace) mounted at /artifacts; "
                            "unset uses the operator's default (edgetune-artifacts).",
                            pattern=DNS_SUBDOMAIN, maxLength=253),
        "s3": s3_store("S3-compatible object storage; status artifacts become s3://<bucket>/<prefix>... URIs "
                       "and paths in the spec (dataset.path, model.checkpoint, ...) are keys under the prefix."),
    }, default={}, rules=[rule("!(has(self.claimName) && has(self.s3))",
                               "artifacts: set claimName or s3, not both")])


def coco(desc: str) -> dict:
    return obj(desc, {k: number(f"COCO bbox {k} in [0, 1].") for k in COCO_KEYS})


def condition_list() -> dict:
    return array(
        "The latest observations of the resource's state (metav1.Condition).",
        obj("A condition.", {
            "type": string("Condition type: Ready, Progressing, Scheduled, Failed, SourceReady or ModelReady.",
                       maxLength=316),
            "status": string("True, False or Unknown.", enum=["True", "False", "Unknown"]),
            "reason": string("CamelCase reason for the last transition.", maxLength=1024),
            "message": string("Human-readable details.", maxLength=32768),
            "lastTransitionTime": timestamp("When the status last changed."),
            "observedGeneration": integer("The .metadata.generation the condition was set for.", minimum=0),
        }, required=["type", "status", "lastTransitionTime", "reason", "message"]),
        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


def step_list() -> dict:
    return array(
        "One entry per step (Job) of the current run.",
        obj("A step.", {
            "name": string("The step: finetune, export, build-engine, verify or benchmark."),
            "job": string("The Job's name."),
            "jobUID": string("The UID of the step's Job once seen (a Job gone under this UID was deleted)."),
            "phase": string("Pending, Running, Succeeded or Failed.", enum=list(STEP_PHASES)),
            "node": string("The node the step's Pod ran on."),
            "startTime": timestamp("When the Job started."),
            "completionTime": timestamp("When the Job finished."),
            "durationSeconds": number("Job run time (completion - start) in seconds."),
            "recreated": integer("How often the step's Job was deleted while it ran and recreated.", minimum=0),
            "reason": string("Reason of the step's state (the result's reason when finished)."),
            "message": string("The step's message (the result's message when finished)."),
        }, required=["name"]),
        **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})


def common_status(props: dict) -> dict:
    base = {
        "phase": string("Pending, Waiting, Running, Succeeded or Failed.", enum=list(PHASES)),
        "message": string("One line on the current state (the failing step's own message when Failed)."),
        "observedGeneration": integer("The .metadata.generation last acted on.", minimum=0),
        "conditions": condition_list(),
        "startTime": timestamp("When the first Job was created."),
        "completionTime": timestamp("When the resource reached Succeeded or Failed."),
        "steps": step_list(),
        "artifacts": string_map("Outputs, as pvc://<claim>/<namespace>/<kind>/<name>/<step>/<file> URIs.",
                           "An artifact URI."),
        "provenance": free_form("What measured the figures: per step, the result's provenance "
                            "(dataset, iterations, device, versions...)."),
    }
    base.update(props)
    return obj("The observed state, written by the operator.", base)



def latency_stats(desc: str) -> dict:
    return obj(desc, {
        "meanMs": number("Mean, milliseconds."), "p50Ms": number("Median, milliseconds."),
        "p90Ms": number("90th percentile, milliseconds."), "p99Ms": number("99th percentile, milliseconds."),
        "minMs": number("Minimum, milliseconds."), "maxMs": number("Maximum, milliseconds."),
    })


def column(name: str, type_: str, path: str, desc: str, priority: int = 0) -> dict:
    c = {"name": name, "type": type_, "jsonPath": path, "description": desc}
    if priority:
        c["priority"] = priority
    return c


AGE = column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

IMMUTABLE = rule("self == oldSelf", "spec is immutable: create a new resource for a new run")
NAME_RULE = rule("self.metadata.name.size() <= 63",
                 "metadata.name must be at most 63 characters (it is used in labels and Job names)")

GPU_DEFAULT = "nodeSelector edgetune.io/device=x86-gpu, limits nvidia.com/gpu=1, operator image EDGETUNE_TRAINER_IMAGE"
EDGE_DEFAULT = ("nodeSelector edgetune.io/device=jetson-orin, toleration edgetune.io/edge=true:NoSchedule, "
                "operator image EDGETUNE_JETSON_IMAGE")
