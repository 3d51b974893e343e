"""Pure functions: a resource and a step's typed arguments in, a batch/v1 Job manifest out.

Nothing here talks to the API server; every function is deterministic so that a re-run of a
reconcile builds the very same Job (same name), and the API server's AlreadyExists keeps it
single. The step's command line is its arguments class's to_argv() (edgetune_contract.args):
the step parses it with the same class.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from edgetune_contract import names
from edgetune_contract.cliargs import StepArgs

from . import schema
from .settings import Settings

CONTAINER = "step"
VOLUME = "artifacts"


def claim_of(spec: Mapping[str, Any], settings: Settings) -> str:
    return (spec.get("artifacts") or {}).get("claimName") or settings.artifacts_claim


def selector(kind: str | None = None) -> dict[str, str]:
    """The label filter of the Jobs and Pods the operator watches."""
    sel = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
    if kind:
        sel[names.LABEL_KIND] = kind
    return sel


# --- placement --------------------------------------------------------------------------------


def placement_of(kind: str, spec: Mapping[str, Any], step: str) -> dict:
    """The spec's placement block for a step: export has its own; the rest of a
    ModelConversion and an EdgeBenchmark run on the target; a FinetuneJob has `placement`."""
    if kind == "ModelConversion":
        if step == "export":
            return (spec.get("export") or {}).get("placement") or {}
        return spec.get("target") or {}
    if kind == "EdgeBenchmark":
        return spec.get("target") or {}
    return spec.get("placement") or {}


def resolve_placement(kind: str, spec: Mapping[str, Any], step: str, settings: Settings) -> dict:
    """nodeSelector/tolerations/resources/image of a step: spec fields replace the defaults."""
    p = placement_of(kind, spec, step)
    if names.step(step).node == names.GPU:
        defaults = {"nodeSelector": settings.gpu_node_selector, "tolerations": settings.gpu_tolerations,
                    "resources": settings.gpu_resources, "image": settings.trainer_image,
                    "runtimeClassName": settings.gpu_runtime_class}
    else:
        defaults = {"nodeSelector": settings.edge_node_selector, "tolerations": settings.edge_tolerations,
                    "resources": settings.edge_resources, "image": settings.jetson_image,
                    "runtimeClassName": settings.edge_runtime_class}
    return {key: copy.deepcopy(p[key] if key in p else default) for key, default in defaults.items()}


def device_of(kind: str, spec: Mapping[str, Any], step: str, settings: Settings) -> str | None:
    """The device label value a step is placed on (edgetune.io/device), if any."""
    return (resolve_placement(kind, spec, step, settings)["nodeSelector"] or {}).get(names.LABEL_DEVICE)


def command(step: str, settings: Settings) -> list[str]:
    if settings.step_command_override:
        return list(settings.step_command_override) + [step]
    return names.step_command(step, python=settings.job_python)


# --- the Job ----------------------------------------------------------------------------------


def owner_reference(body: Mapping[str, Any]) -> dict:
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", names.API_VERSION), "kind": body["kind"],
            "name": meta["name"], "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def build_job(body: Mapping[str, Any], args: StepArgs, settings: Settings, run: int = 1) -> dict:
    """The Job that runs the step `args` belongs to, for the resource `body` (run number `run`)."""
    step = args.STEP
    kind = body["kind"]
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = schema.apply_defaults(kind, body.get("spec") or {})
    place = resolve_placement(kind, spec, step, settings)
    lbl = names.labels(kind, name, step, run)
    env = [
        {"name": names.ENV_RESULT_PATH, "value": names.DEFAULT_RESULT_PATH},
        {"name": names.ENV_ARTIFACT_DIR, "value": args.out},
        {"name": names.ENV_STEP, "value": step},
        {"name": names.ENV_IMAGE, "value": place["image"]},
    ] + [{"name": e["name"], "value": e.get("value", "")} for e in spec.get("env") or []]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": place["image"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": command(step, settings),
        "args": args.to_argv(),
        "env": env,
        "volumeMounts": [{"name": VOLUME, "mountPath": names.ARTIFACT_MOUNT}],
        "terminationMessagePath": names.DEFAULT_RESULT_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if place["resources"]:
        container["resources"] = place["resources"]
    if settings.step_command_override and settings.step_working_dir:
        container["workingDir"] = settings.step_working_dir
    pod_sc: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    if settings.job_run_as_user is not None:
        pod_sc.update(runAsUser=settings.job_run_as_user, runAsGroup=settings.job_run_as_user,
                      fsGroup=settings.job_run_as_user)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_sc,
        "containers": [container],
        "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": claim_of(spec, settings)}}],
    }
    if place["nodeSelector"]:
        pod_spec["nodeSelector"] = place["nodeSelector"]
    if place["tolerations"]:
        pod_spec["tolerations"] = place["tolerations"]
    if place["runtimeClassName"]:
        pod_spec["runtimeClassName"] = place["runtimeClassName"]
    if settings.job_service_account:
        pod_spec["serviceAccountName"] = settings.job_service_account
    run_spec = spec.get("run") or {}
    deadline = run_spec.get("activeDeadlineSeconds") or settings.deadlines.get(step)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": names.job_name(name, step, run),
            "namespace": namespace,
            "labels": lbl,
            "annotations": {f"{names.GROUP}/generation": str(meta.get("generation", 1))},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "backoffLimit": int(run_spec.get("backoffLimit", 0)),
            "activeDeadlineSeconds": int(deadline),
            "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
        },
    }
