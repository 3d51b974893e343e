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
from edgetune_contract import store as stores
from edgetune_contract.cliargs import StepArgs

from . import schema
from .settings import Settings

CONTAINER = "step"
VOLUME = "artifacts"


Store = stores.PvcStore | stores.S3Store


def store_of(spec: Mapping[str, Any], settings: Settings) -> Store:
    """The resource's artifact store: its spec.artifacts, else the operator's default (object
    storage when EDGETUNE_ARTIFACTS_S3 is set, else the claim EDGETUNE_ARTIFACTS_CLAIM)."""
    arts = spec.get("artifacts") or {}
    if arts.get("s3"):
        return stores.S3Store.from_spec(arts["s3"])
    if arts.get("claimName"):
        return stores.PvcStore(arts["claimName"])
    if settings.artifacts_s3:
        return stores.S3Store.from_spec(settings.artifacts_s3)
    return stores.PvcStore(settings.artifacts_claim)


def store_env_and_volumes(store: Store, upload_uri: str | None) -> tuple[list[dict], list[dict], list[dict]]:
    """(env, volumes, extra volume mounts) of a step Pod for its store. A claim is mounted at
    /artifacts; with object storage /artifacts is scratch (emptyDir), the step gets the
    endpoint and where to upload, and the key pair only as secretKeyRef (never its value)."""
    if isinstance(store, stores.PvcStore):
        return ([{"name": stores.ENV_STORE, "value": "pvc"}],
                [{"name": VOLUME, "persistentVolumeClaim": {"claimName": store.claim}}], [])
    secret = lambda key: {"secretKeyRef": {"name": store.secret_name, "key": key}}  # noqa: E731
    env = [{"name": stores.ENV_STORE, "value": stores.S3_SCHEME},
           {"name": stores.ENV_UPLOAD_URI, "value": upload_uri or ""},
           {"name": stores.ENV_S3_ROOT, "value": store.root},
           {"name": stores.ENV_S3_ENDPOINT, "value": store.endpoint},
           {"name": stores.ENV_S3_REGION, "value": store.region},
           {"name": stores.ENV_ACCESS_KEY_ID, "valueFrom": secret(store.access_key_id_key)},
           {"name": stores.ENV_SECRET_ACCESS_KEY, "valueFrom": secret(store.secret_access_key_key)}]
    volumes: list[dict] = [{"name": VOLUME, "emptyDir": {}}]
    mounts: list[dict] = []
    if store.ca_bundle_configmap:
        env.append({"name": stores.ENV_S3_CA_BUNDLE, "value": f"{stores.CA_MOUNT}/{store.ca_bundle_key}"})
        volumes.append({"name": "s3-ca", "configMap": {"name": store.ca_bundle_configmap}})
        mounts.append({"name": "s3-ca", "mountPath": stores.CA_MOUNT, "readOnly": True})
    return env, volumes, mounts


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


KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
RENDEZVOUS_PORT = 29500


def headless_service(body: Mapping[str, Any], job: Mapping[str, Any]) -> dict:
    """The headless Service of a distributed Job (named like it): replica i is reachable as
    <job>-<i>.<job> from the other replicas, replica 0 being the rendezvous."""
    meta = job["metadata"]
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": meta["name"], "namespace": meta["namespace"], "labels": dict(meta["labels"]),
                     "ownerReferences": [owner_reference(body)]},
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,  # DNS before the Pods are ready
                 "selector": {"batch.kubernetes.io/job-name": meta["name"]},
                 "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "protocol": "TCP"}]},
    }


def build_job(body: Mapping[str, Any], args: StepArgs, settings: Settings, run: int = 1,
              replicas: int = 1, *, part: str | None = None, node: str | None = None,
              node_labels: Mapping[str, str] | None = None) -> dict:
    """The Job that runs the step `args` belongs to, for the resource `body` (run number `run`).
    replicas > 1: an Indexed Job (completions = parallelism = replicas; each Pod's
    $JOB_COMPLETION_INDEX is its rank) whose Pods are <job>-<index> under the subdomain of its
    headless Service (headless_service).
    part: one of several Jobs of the step (a fleet's node, a device group): its own Job name,
    folder and label. node: pinned to that node (a required node affinity on metadata.name, as
    a DaemonSet pins its Pods; the node name reaches the step as $EDGETUNE_NODE_NAME).
    node_labels: added to the placement's nodeSelector (a device group's labels)."""
    step = args.STEP
    kind = body["kind"]
    meta = body["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    spec = schema.apply_defaults(kind, body.get("spec") or {})
    place = resolve_placement(kind, spec, step, settings)
    if node_labels:
        place["nodeSelector"] = {**(place["nodeSelector"] or {}), **node_labels}
    lbl = names.labels(kind, name, step, run)
    if node is not None:
        lbl[names.LABEL_NODE] = names.label_value(node)
    elif part is not None:
        lbl[names.LABEL_DEVICE_GROUP] = names.label_value(part)
    store = store_of(spec, settings)
    upload = store.step_uri(namespace, kind, name, step, run, part) if isinstance(store, stores.S3Store) else None
    store_env, volumes, store_mounts = store_env_and_volumes(store, upload)
    env = [
        {"name": names.ENV_RESULT_PATH, "value": names.DEFAULT_RESULT_PATH},
        {"name": names.ENV_ARTIFACT_DIR, "value": args.out},
        {"name": names.ENV_STEP, "value": step},
        {"name": names.ENV_IMAGE, "value": place["image"]},
    ] + store_env + [{"name": e["name"], "value": e.get("value", "")} for e in spec.get("env") or []]
    if node is not None:
        env.insert(4, {"name": names.ENV_NODE_NAME, "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": place["image"],
        "imagePullPolicy": settings.image_pull_policy,
        "command": command(step, settings),
        "args": args.to_argv(),
        "env": env,
        "volumeMounts": [{"name": VOLUME, "mountPath": names.ARTIFACT_MOUNT}] + store_mounts,
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
        procs = getattr(args, "nproc_per_node", 1)
        for kind in ("limits", "requests"):  # one GPU per process of a distributed run
            if procs > 1 and names.GPU_RESOURCE in (place["resources"].get(kind) or {}):
                container["resources"][kind][names.GPU_RESOURCE] = procs
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
        "volumes": volumes,
    }
    if place["nodeSelector"]:
        pod_spec["nodeSelector"] = place["nodeSelector"]
    if node is not None:
        pod_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]}}}
    if place["tolerations"]:
        pod_spec["tolerations"] = place["tolerations"]
    if place["runtimeClassName"]:
        pod_spec["runtimeClassName"] = place["runtimeClassName"]
    if settings.job_service_account:
        pod_spec["serviceAccountName"] = settings.job_service_account
    run_spec = spec.get("run") or {}
    deadline = run_spec.get("activeDeadlineSeconds") or settings.deadlines.get(step)
    job_name = names.job_name(name, step, run, part)
    job_labels = dict(lbl)
    job_spec: dict[str, Any] = {
        "backoffLimit": int(run_spec.get("backoffLimit", 0)),
        "activeDeadlineSeconds": int(deadline),
        "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
    }
    if replicas > 1:
        job_spec.update(completionMode="Indexed", completions=replicas, parallelism=replicas)
        pod_spec["subdomain"] = job_name
    if run_spec.get("queueName"):  # Kueue admits (unsuspends) the whole Job at once
        job_labels[KUEUE_QUEUE_LABEL] = run_spec["queueName"]
        job_spec["suspend"] = True
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name,
            "namespace": namespace,
            "labels": job_labels,
            "annotations": {f"{names.GROUP}/generation": str(meta.get("generation", 1))},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": job_spec,
    }
