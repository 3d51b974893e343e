"""Names both sides agree on: the API group, the kinds and their steps, labels, the
environment a step's Pod gets, Job names and each step's artifact folder (the stores that hold
the folders, a claim or object storage, are in .store).

Every list of kinds or steps in the project is derived from KINDS and STEPS here.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Dict, NamedTuple, Tuple

GROUP = "edgetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

KINDS = ("FinetuneJob", "ModelConversion", "EdgeBenchmark")
PLURALS = {kind: kind.lower() + "s" for kind in KINDS}  # finetunejobs, modelconversions, edgebenchmarks

# Where a step runs: on the GPU server or on the edge device it targets.
GPU, EDGE = "gpu", "edge"


class Step(NamedTuple):
    name: str     # as in labels, Job names, status.steps[].name and the result's "step"
    kind: str     # the resource kind that runs it
    module: str   # `python -m <module>` runs it
    node: str     # GPU or EDGE


STEPS: "OrderedDict[str, Step]" = OrderedDict((s.name, s) for s in (
    Step("finetune", "FinetuneJob", "edgetune_jobs.steps.finetune", GPU),
    Step("export", "ModelConversion", "edgetune_jobs.steps.export", GPU),
    Step("build-engine", "ModelConversion", "edgetune_jobs.steps.build_engine", EDGE),
    Step("verify", "ModelConversion", "edgetune_jobs.steps.verify", EDGE),
    Step("benchmark", "EdgeBenchmark", "edgetune_jobs.steps.benchmark", EDGE),
    # an EdgeBenchmark over several ModelConversions runs this instead of benchmark
    Step("sweep", "EdgeBenchmark", "edgetune_jobs.steps.sweep", EDGE),
))
KIND_STEPS: Dict[str, Tuple[str, ...]] = {
    kind: tuple(s.name for s in STEPS.values() if s.kind == kind) for kind in KINDS}


def step(name: str) -> Step:
    if name not in STEPS:
        raise ValueError(f"unknown step {name!r}; known: {list(STEPS)}")
    return STEPS[name]


def step_command(name: str, python: str = "python") -> list:
    """The container command of a step: `python -m edgetune_jobs.steps.<module>`."""
    return [python, "-m", step(name).module]


# --- labels ----------------------------------------------------------------------------------

LABEL_NAME = "app.kubernetes.io/name"              # always "edgetune"
LABEL_COMPONENT = "app.kubernetes.io/component"    # the step
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"  # MANAGED_BY
LABEL_PART_OF = "app.kubernetes.io/part-of"        # "edgetune"
LABEL_KIND = f"{GROUP}/kind"                       # one of KINDS
LABEL_RESOURCE = f"{GROUP}/resource"               # the owning resource's name
LABEL_STEP = f"{GROUP}/step"                       # the step
LABEL_RUN = f"{GROUP}/run"                         # run number (scheduled benchmarks), "1" otherwise
MANAGED_BY = "edgetune-operator"

# Node selection defaults (the local cluster's nodes carry the same labels).
LABEL_DEVICE = f"{GROUP}/device"
DEVICE_GPU = "x86-gpu"
DEVICE_JETSON = "jetson-orin"
EDGE_TAINT_KEY = f"{GROUP}/edge"
GPU_RESOURCE = "nvidia.com/gpu"


def labels(kind: str, name: str, step_name: str, run: int = 1) -> Dict[str, str]:
    """The labels of a step's Job and Pods."""
    return {
        LABEL_NAME: "edgetune",
        LABEL_COMPONENT: step_name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: "edgetune",
        LABEL_KIND: kind,
        LABEL_RESOURCE: name,
        LABEL_STEP: step_name,
        LABEL_RUN: str(run),
    }


# --- the Pod's environment -------------------------------------------------------------------

ENV_RESULT_PATH = "EDGETUNE_RESULT_PATH"
DEFAULT_RESULT_PATH = "/dev/termination-log"
ENV_ARTIFACT_DIR = "EDGETUNE_ARTIFACT_DIR"  # the step's own output folder (inside the mount)
ENV_STEP = "EDGETUNE_STEP"
ENV_IMAGE = "EDGETUNE_IMAGE"                 # the step's container image (named when a backend is missing)
ARTIFACT_MOUNT = "/artifacts"                # the artifact claim (or, with object storage, scratch)
ARTIFACT_SCHEME = "pvc"                      # status artifacts on a claim are pvc://<claim>/<path>


# --- Job names and artifact locations ----------------------------------------------------------


def step_dir(step_name: str, run: int = 1) -> str:
    """The step's folder and Job-name suffix: `benchmark` for run 1, `benchmark-3` for run 3."""
    return step_name if run <= 1 else f"{step_name}-{run}"


def job_name(name: str, step_name: str, run: int = 1) -> str:
    """Deterministic Job name, at most 63 characters (a hash keeps long names unique)."""
    suffix = step_dir(step_name, run)
    full = f"{name}-{suffix}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name[: 63 - len(suffix) - 10].rstrip("-.")
    return f"{head}-{digest}-{suffix}"


def rel_dir(namespace: str, kind: str, name: str, step_name: str, run: int = 1) -> str:
    """A step's artifact folder relative to the volume: <ns>/<kind lower-case>/<name>/<step>."""
    return f"{namespace}/{kind.lower()}/{name}/{step_dir(step_name, run)}"


def out_dir(namespace: str, kind: str, name: str, step_name: str, run: int = 1) -> str:
    """The same folder as the step's Pod sees it."""
    return f"{ARTIFACT_MOUNT}/{rel_dir(namespace, kind, name, step_name, run)}"
