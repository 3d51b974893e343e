"""Operator settings: environment variables (set by the Helm chart's values) and CLI flags.

Every setting has an ``EDGETUNE_*`` environment variable; ``python -m edgetune_operator --help``
lists the flags that override them. JSON-valued settings take JSON text.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import uuid
from typing import Any, Mapping

from edgetune_contract import names

DEFAULT_GPU_NODE_SELECTOR = {names.LABEL_DEVICE: names.DEVICE_GPU}
DEFAULT_GPU_RESOURCES = {"limits": {names.GPU_RESOURCE: 1}}
DEFAULT_EDGE_NODE_SELECTOR = {names.LABEL_DEVICE: names.DEVICE_JETSON}
DEFAULT_EDGE_TOLERATIONS = [{"key": names.EDGE_TAINT_KEY, "operator": "Equal", "value": "true",
                             "effect": "NoSchedule"}]
DEFAULT_DEADLINES = {"finetune": 24 * 3600, "export": 3600, "build-engine": 2 * 3600,
                     "verify": 3600, "benchmark": 3600, "sweep": 3 * 3600}


class SettingsError(ValueError):
    pass


@dataclasses.dataclass
class Settings:
    # what to watch
    namespaces: list[str] = dataclasses.field(default_factory=list)  # empty: cluster-wide
    kubeconfig: str | None = None
    # endpoints
    metrics_port: int = 8080
    health_port: int = 8081
    bind_address: str = "0.0.0.0"
    # the Jobs
    trainer_image: str = "ghcr.io/edgetune/trainer:0.1.0"
    jetson_image: str = "ghcr.io/edgetune/jetson:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    job_python: str = "python"
    step_command_override: list[str] | None = None  # testing / air-gapped knob
    artifacts_claim: str = "edgetune-artifacts"
    artifacts_s3: dict | None = None  # the default store when set: spec.artifacts.s3's shape
    gpu_node_selector: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_GPU_NODE_SELECTOR))
    gpu_tolerations: list = dataclasses.field(default_factory=list)
    gpu_resources: dict = dataclasses.field(default_factory=lambda: json.loads(json.dumps(DEFAULT_GPU_RESOURCES)))
    gpu_runtime_class: str | None = None
    edge_node_selector: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_EDGE_NODE_SELECTOR))
    edge_tolerations: list = dataclasses.field(default_factory=lambda: json.loads(json.dumps(DEFAULT_EDGE_TOLERATIONS)))
    edge_resources: dict = dataclasses.field(default_factory=dict)
    edge_runtime_class: str | None = None
    job_service_account: str | None = None
    job_run_as_user: int | None = 1000
    deadlines: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_DEADLINES))
    # behaviour
    progress_interval: float = 10.0
    pod_waiting_timeout: float = 300.0
    workers: int = 8
    log_level: str = "INFO"
    # leader election (a coordination.k8s.io Lease)
    leader_election: bool = True
    lease_name: str = "edgetune-operator"
    lease_namespace: str | None = None
    lease_duration: float = 15.0
    lease_renew_period: float = 5.0
    identity: str = dataclasses.field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


# env var -> (field, parser)
def _json(kind: type):
    def parse(text: str) -> Any:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"not JSON: {exc}") from None
        if not isinstance(value, kind):
            raise SettingsError(f"must be a JSON {kind.__name__}")
        return value
    return parse


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"not a boolean: {text!r}")


def _opt_str(text: str) -> str | None:
    return text or None


def _opt_int(text: str) -> int | None:
    return int(text) if text.strip() else None


def _csv(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _s3(text: str) -> dict:
    value = _json(dict)(text)
    missing = [k for k in ("endpoint", "bucket") if not value.get(k)]
    if not (value.get("credentialsSecret") or {}).get("name"):
        missing.append("credentialsSecret.name")
    if missing:
        raise SettingsError(f"missing {', '.join(missing)}")
    if not str(value["endpoint"]).startswith(("http://", "https://")):
        raise SettingsError(f"endpoint must be an http(s) URL, got {value['endpoint']!r}")
    return value


def _command(text: str) -> list[str] | None:
    if not text.strip():
        return None
    value = _json(list)(text)
    if not value or not all(isinstance(v, str) for v in value):
        raise SettingsError("must be a non-empty JSON list of strings")
    return value


ENV: dict[str, tuple[str, Any, str]] = {
    "EDGETUNE_NAMESPACES": ("namespaces", _csv, "comma-separated namespaces to serve; empty: cluster-wide"),
    "KUBECONFIG": ("kubeconfig", _opt_str, "kubeconfig file; unset: in-cluster config"),
    "EDGETUNE_METRICS_PORT": ("metrics_port", int, "Prometheus /metrics port"),
    "EDGETUNE_HEALTH_PORT": ("health_port", int, "liveness /healthz port"),
    "EDGETUNE_BIND_ADDRESS": ("bind_address", str, "address both endpoints listen on"),
    "EDGETUNE_TRAINER_IMAGE": ("trainer_image", str, "image of finetune and export Jobs"),
    "EDGETUNE_JETSON_IMAGE": ("jetson_image", str, "image of build-engine, verify and benchmark Jobs"),
    "EDGETUNE_IMAGE_PULL_POLICY": ("image_pull_policy", str, "imagePullPolicy of the Jobs"),
    "EDGETUNE_JOB_PYTHON": ("job_python", str, "python executable in the job images"),
    "EDGETUNE_STEP_COMMAND_OVERRIDE": ("step_command_override", _command,
                                       "TESTING/air-gapped: JSON list used instead of `python -m "
                                       "edgetune_jobs.<step>`; the step name is appended"),
    "EDGETUNE_ARTIFACTS_CLAIM": ("artifacts_claim", str, "default artifact PVC name"),
    "EDGETUNE_ARTIFACTS_S3": ("artifacts_s3", lambda t: _s3(t) if t.strip() else None,
                              "default object storage (JSON, spec.artifacts.s3's shape: endpoint, bucket, prefix, "
                              "region, credentialsSecret, caBundle); set, it replaces the claim as the default"),
    "EDGETUNE_GPU_NODE_SELECTOR": ("gpu_node_selector", _json(dict), "finetune/export nodeSelector (JSON)"),
    "EDGETUNE_GPU_TOLERATIONS": ("gpu_tolerations", _json(list), "finetune/export tolerations (JSON)"),
    "EDGETUNE_GPU_RESOURCES": ("gpu_resources", _json(dict), "finetune/export resources (JSON)"),
    "EDGETUNE_GPU_RUNTIME_CLASS": ("gpu_runtime_class", _opt_str, "runtimeClassName on the GPU node"),
    "EDGETUNE_EDGE_NODE_SELECTOR": ("edge_node_selector", _json(dict), "build/verify/benchmark nodeSelector (JSON)"),
    "EDGETUNE_EDGE_TOLERATIONS": ("edge_tolerations", _json(list), "build/verify/benchmark tolerations (JSON)"),
    "EDGETUNE_EDGE_RESOURCES": ("edge_resources", _json(dict), "build/verify/benchmark resources (JSON)"),
    "EDGETUNE_EDGE_RUNTIME_CLASS": ("edge_runtime_class", _opt_str, "runtimeClassName on the edge node"),
    "EDGETUNE_JOB_SERVICE_ACCOUNT": ("job_service_account", _opt_str, "serviceAccountName of the Job Pods"),
    "EDGETUNE_JOB_RUN_AS_USER": ("job_run_as_user", _opt_int, "runAsUser/runAsGroup/fsGroup of the Job Pods"),
    "EDGETUNE_DEADLINES": ("deadlines", _json(dict), "per-step activeDeadlineSeconds (JSON, merged)"),
    "EDGETUNE_PROGRESS_INTERVAL": ("progress_interval", float, "seconds between reads of a training log"),
    "EDGETUNE_POD_WAITING_TIMEOUT": ("pod_waiting_timeout", float, "seconds a step Pod may stay stuck (image pull "
                                     "error, missing Secret...) before the step fails; spec.run overrides"),
    "EDGETUNE_WORKERS": ("workers", int, "concurrent reconciles"),
    "EDGETUNE_LOG_LEVEL": ("log_level", str, "DEBUG, INFO, WARNING"),
    "EDGETUNE_LEADER_ELECTION": ("leader_election", _bool, "hold a Lease so one replica acts"),
    "EDGETUNE_LEASE_NAME": ("lease_name", str, "the Lease's name"),
    "EDGETUNE_LEASE_NAMESPACE": ("lease_namespace", _opt_str, "the Lease's namespace (default: POD_NAMESPACE, "
                                                           "else the first served namespace, else default)"),
    "EDGETUNE_LEASE_DURATION": ("lease_duration", float, "seconds a Lease is valid without renewal"),
    "EDGETUNE_LEASE_RENEW_PERIOD": ("lease_renew_period", float, "seconds between renewals"),
    "EDGETUNE_IDENTITY": ("identity", str, "this replica's identity in the Lease (default host-pid-random)"),
}


def from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Settings from the environment (pure: pass a dict for tests), then keyword overrides."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for var, (field, parse, _) in ENV.items():
        if var in env:
            try:
                values[field] = parse(env[var])
            except (SettingsError, ValueError) as exc:
                raise SettingsError(f"{var}: {exc}") from None
    if "deadlines" in values:
        values["deadlines"] = {**DEFAULT_DEADLINES, **values["deadlines"]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    s = Settings(**values)
    if s.lease_namespace is None:
        s.lease_namespace = env.get("POD_NAMESPACE") or (s.namespaces[0] if s.namespaces else "default")
    if s.lease_renew_period >= s.lease_duration:
        raise SettingsError("EDGETUNE_LEASE_RENEW_PERIOD must be shorter than EDGETUNE_LEASE_DURATION")
    unknown = set(s.deadlines) - set(names.STEPS)
    if unknown:
        raise SettingsError(f"EDGETUNE_DEADLINES: unknown steps {sorted(unknown)}")
    return s


def describe() -> str:
    """The settings table (for --help and the docs)."""
    d = Settings(identity="<host>-<pid>-<random>")
    lines = []
    for var, (field, _, help_) in ENV.items():
        default = getattr(d, field)
        if isinstance(default, (dict, list)):
            default = json.dumps(default)
        lines.append(f"  {var:32} {help_} [default: {default}]")
    return "\n".join(lines)
