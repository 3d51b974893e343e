"""Pure functions: a resource (and what its steps need) in, a batch/v1 Job manifest out.

Nothing here talks to the API server; every function is deterministic so that a re-run of a
reconcile builds the very same Job (same name), and the API server's AlreadyExists keeps
it single.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any, Mapping

from edgetune_jobs import contract

from . import schema
from .settings import Settings

GPU, EDGE = "gpu", "edge"
STEP_CLASS = {"finetune": GPU, "export": GPU, "build-engine": EDGE, "verify": EDGE, "benchmark": EDGE}
KIND_STEPS = {"FinetuneJob": ("finetune",), "ModelConversion": ("export", "build-engine", "verify"),
              "EdgeBenchmark": ("benchmark",)}
CONTAINER = "step"
VOLUME = "artifacts"


# --- names and paths --------------------------------------------------------------------------


def step_dir(step: str, run: int = 1) -> str:
    """The step's folder and Job-name suffix: `benchmark` for run 1, `benchmark-3` for run 3."""
    return step if run <= 1 else f"{step}-{run}"


def job_name(name: str, step: str, run: int = 1) -> str:
    """Deterministic Job name, at most 63 characters (a hash keeps long names unique)."""
    suffix = step_dir(step, run)
    full = f"{name}-{suffix}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name[: 63 - len(suffix) - 10].rstrip("-.")
    return f"{head}-{digest}-{suffix}"


def claim_of(spec: Mapping[str, Any], settings: Settings) -> str:
    return (spec.get("artifacts") or {}).get("claimName") or settings.artifacts_claim


def rel_dir(namespace: str, kind: str, name: str, step: str, run: int = 1) -> str:
    return f"{namespace}/{kind.lower()}/{name}/{step_dir(step, run)}"


def out_dir(namespace: str, kind: str, name: str, step: str, run: int = 1) -> str:
    return f"{contract.ARTIFACT_MOUNT}/{rel_dir(namespace, kind, name, step, run)}"


def artifact_uri(claim: str, namespace: str, kind: str, name: str, step: str, rel: str, run: int = 1) -> str:
    return f"{contract.ARTIFACT_SCHEME}://{claim}/{rel_dir(namespace, kind, name, step, run)}/{rel.lstrip('/')}"


def uri_to_path(uri: str, claim: str) -> str | None:
    """pvc://<claim>/<path> -> /artifacts/<path> (None when on another claim); URLs pass through."""
    prefix = f"{contract.ARTIFACT_SCHEME}://"
    if not uri.startswith(prefix):
        return uri
    rest = uri[len(prefix):]
    uri_claim, _, path = rest.partition("/")
    if uri_claim != claim:
        return None
    return f"{contract.ARTIFACT_MOUNT}/{path}"


def volume_path(value: str) -> str:
    """A spec path (relative to the artifact volume) or URL, as the Pod sees it."""
    if "://" in value:
        return value
    return f"{contract.ARTIFACT_MOUNT}/{value.lstrip('/')}"


def labels(kind: str, name: str, step: str, run: int = 1) -> dict[str, str]:
    return {
        contract.LABEL_NAME: "edgetune",
        contract.LABEL_COMPONENT: step,
        contract.LABEL_MANAGED_BY: contract.MANAGED_BY,
        contract.LABEL_PART_OF: "edgetune",
        contract.LABEL_KIND: kind,
        contract.LABEL_RESOURCE: name,
        contract.LABEL_STEP: step,
        contract.LABEL_RUN: str(run),
    }


def selector(kind: str | None = None) -> dict[str, str]:
    """The label filter of the Jobs and Pods the operator watches."""
    sel = {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}
    if kind:
        sel[contract.LABEL_KIND] = kind
    return sel


# --- placement --------------------------------------------------------------------------------


def placement_of(kind: str, spec: Mapping[str, Any], step: str) -> dict:
    if kind == "ModelConversion":
        if step == "export":
            return (spec.get("export") or {}).get("placement") or {}
        return spec.get("target") or {}
    if kind == "EdgeBenchmark":
        return spec.get("target") or {}
    return spec.get("placement") or {}


def resolve_placement(kind: str, spec: Mapping[str, Any], step: str, settings: Settings) -> dict:
    """nodeSelector/tolerations/resources/image of a step: spec fields replace the defaults."""
    cls = STEP_CLASS[step]
    p = placement_of(kind, spec, step)
    if cls == GPU:
        defaults = {"nodeSelector": settings.gpu_node_selector, "tolerations": settings.gpu_tolerations,
                    "resources": settings.gpu_resources, "image": settings.trainer_image,
                    "runtimeClassName": settings.gpu_runtime_class}
    else:
        defaults = {"nodeSelector": settings.edge_node_selector, "tolerations": settings.edge_tolerations,
                    "resources": settings.edge_resources, "image": settings.jetson_image,
                    "runtimeClassName": settings.edge_runtime_class}
    out = {}
    for key, default in defaults.items():
        value = p.get(key) if key in p else default
        out[key] = copy.deepcopy(value)
    return out


def device_of(kind: str, spec: Mapping[str, Any], step: str, settings: Settings) -> str | None:
    """The device label value a step is placed on (edgetune.io/device), if any."""
    return (resolve_placement(kind, spec, step, settings)["nodeSelector"] or {}).get(contract.LABEL_DEVICE)


# --- command lines ----------------------------------------------------------------------------


def _flag(args: list[str], flag: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        if value:
            args.append(flag)
        return
    if isinstance(value, float):
        value = repr(value)
    args += [flag, str(value)]


def step_args(kind: str, spec: Mapping[str, Any], step: str, out: str, inputs: Mapping[str, Any]) -> list[str]:
    """The step's arguments (docs/contract.md), from the defaulted spec and resolved inputs
    (container paths of upstream artifacts)."""
    a: list[str] = ["--out", out]
    if step == "finetune":
        ds, model, tr = spec["dataset"], spec.get("model", {}), spec.get("training", {})
        if "url" in ds:
            _flag(a, "--dataset-source", "url")
            _flag(a, "--dataset-url", ds["url"])
        elif "path" in ds:
            _flag(a, "--dataset-source", "path")
            _flag(a, "--dataset-path", volume_path(ds["path"]))
        else:
            gen = ds.get("generate") or {}
            _flag(a, "--dataset-source", "generate")
            _flag(a, "--generate-images", gen.get("images"))
            _flag(a, "--generate-seed", gen.get("seed"))
        _flag(a, "--dataset-format", ds.get("format", "via"))
        _flag(a, "--val-fraction", ds.get("valFraction"))
        _flag(a, "--config", model.get("config"))
        if model.get("checkpoint"):
            _flag(a, "--checkpoint", volume_path(model["checkpoint"]))
        _flag(a, "--epochs", tr.get("epochs"))
        _flag(a, "--batch-size", tr.get("batchSize"))
        _flag(a, "--image-size", tr.get("imageSize"))
        _flag(a, "--lr", tr.get("learningRate"))
        _flag(a, "--seed", tr.get("seed"))
        _flag(a, "--workers", tr.get("workers"))
        if tr.get("device") in ("cpu", "cuda"):
            _flag(a, "--device", tr["device"])
        _flag(a, "--val-interval", tr.get("valInterval"))
        _flag(a, "--no-eval-base", tr.get("evalBase") is False)
    elif step == "export":
        pp = spec.get("postprocess", {})
        _flag(a, "--checkpoint", inputs["checkpoint"])
        _flag(a, "--config", inputs["config"])
        _flag(a, "--backend", spec["backend"])
        _flag(a, "--image-size", spec["imageSize"])
        _flag(a, "--dynamic", bool(spec.get("dynamic")))
        _flag(a, "--score-threshold", pp.get("scoreThreshold"))
        _flag(a, "--iou-threshold", pp.get("iouThreshold"))
        _flag(a, "--max-detections", pp.get("maxDetections"))
        _flag(a, "--val-dataset", inputs.get("val_dataset"))
        dev = (spec.get("export") or {}).get("device")
        if dev in ("cpu", "cuda"):
            _flag(a, "--device", dev)
    elif step == "build-engine":
        _flag(a, "--onnx", inputs["onnx"])
        _flag(a, "--meta", inputs["meta"])
        _flag(a, "--backend", spec["backend"])
        _flag(a, "--precision", spec["precision"])
        if spec.get("calibration"):
            _flag(a, "--calibration-images", volume_path(spec["calibration"]["images"]))
        _flag(a, "--workspace-mib", (spec.get("build") or {}).get("workspaceMiB"))
    elif step == "verify":
        _flag(a, "--model", inputs["model"])
        _flag(a, "--meta", inputs["meta"])
        _flag(a, "--backend", spec["backend"])
        _flag(a, "--val-dataset", inputs["val_dataset"])
        _flag(a, "--max-map-drop", (spec.get("verify") or {}).get("maxMapDrop"))
    elif step == "benchmark":
        _flag(a, "--model", inputs["model"])
        _flag(a, "--meta", inputs["meta"])
        _flag(a, "--backend", inputs["backend"])
        _flag(a, "--warmup", spec.get("warmup"))
        _flag(a, "--iterations", spec.get("iterations"))
        _flag(a, "--duration", spec.get("durationSeconds"))
        if spec.get("images"):
            _flag(a, "--images", volume_path(spec["images"]))
        else:
            _flag(a, "--images", inputs.get("images"))
        _flag(a, "--threads", spec.get("threads"))
    else:
        raise ValueError(f"unknown step {step!r}")
    return a


def command(step: str, settings: Settings) -> list[str]:
    if settings.step_command_override:
        return list(settings.step_command_override) + [step]
    return contract.step_command(step, python=settings.job_python)


# --- the Job ----------------------------------------------------------------------------------


def owner_reference(body: Mapping[str, Any]) -> dict:
    meta = body["metadata"]
    return {"apiVersion": body.get("apiVersion", contract.API_VERSION), "kind": body["kind"],
            "name": meta["name"], "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


def build_job(body: Mapping[str, Any], step: str, settings: Settings, inputs: Mapping[str, Any] | None = None,
              run: int = 1) -> dict:
    """The Job that runs `step` of the resource `body` (run number `run`)."""
    kind = body["kind"]
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = schema.apply_defaults(kind, body.get("spec") or {})
    place = resolve_placement(kind, spec, step, settings)
    out = out_dir(namespace, kind, name, step, run)
    lbl = labels(kind, name, step, run)
    env = [
        {"name": contract.ENV_RESULT_PATH, "value": contract.DEFAULT_RESULT_PATH},
        {"name": contract.ENV_ARTIFACT_DIR, "value": out},
        {"name": "EDGETUNE_STEP", "value": step},
    ] + [{"name": e["name"], "value": e.get("value", "")} for e in spec.get("env") or []]
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": place["image"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": command(step, settings),
        "args": step_args(kind, spec, step, out, inputs or {}),
        "env": env,
        "volumeMounts": [{"name": VOLUME, "mountPath": contract.ARTIFACT_MOUNT}],
        "terminationMessagePath": contract.DEFAULT_RESULT_PATH,
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
            "name": job_name(name, step, run),
            "namespace": namespace,
            "labels": lbl,
            "annotations": {f"{contract.GROUP}/generation": str(meta.get("generation", 1))},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "backoffLimit": int(run_spec.get("backoffLimit", 0)),
            "activeDeadlineSeconds": int(deadline),
            "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
        },
    }
