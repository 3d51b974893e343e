"""Names both sides agree on: the API group, the kinds and their steps, labels, the
environment a step's Pod gets, Job names and each step's artifact folder (the stores that hold
the folders, a claim or object storage, are in .store).

Every list of kinds or steps in the project is derived from KINDS and STEPS here.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from typing import Dict, NamedTuple, Optional, Tuple

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
LABEL_NODE = f"{GROUP}/node"                       # a fleet benchmark's Job: the node it is pinned to
LABEL_DEVICE_GROUP = f"{GROUP}/device-group"       # a per-device-group engine build: its group's id
MANAGED_BY = "edgetune-operator"

# Node selection defaults (the local cluster's nodes carry the same labels).
LABEL_DEVICE = f"{GROUP}/device"
DEVICE_GPU = "x86-gpu"
DEVICE_JETSON = "jetson-orin"
EDGE_TAINT_KEY = f"{GROUP}/edge"
GPU_RESOURCE = "nvidia.com/gpu"


def labels(kind: str, name: str, step_name: str, run: int = 1) -> Dict[str, str]:
    """The labels of a step's Job and Pods (a Job of one part of a step adds LABEL_NODE or
    LABEL_DEVICE_GROUP)."""
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
ENV_NODE_NAME = "EDGETUNE_NODE_NAME"         # a node-pinned (fleet) Job: its node (downward API spec.nodeName)
ARTIFACT_MOUNT = "/artifacts"                # the artifact claim (or, with object storage, scratch)
ARTIFACT_SCHEME = "pvc"                      # status artifacts on a claim are pvc://<claim>/<path>


# --- Job names and artifact locations ----------------------------------------------------------


def part_label(part: str) -> str:
    """A part of a step (a fleet's node, a device group) as a DNS label of at most 24
    characters: itself when it already is one, else a cleaned prefix and a hash of it."""
    clean = re.sub(r"[^a-z0-9-]+", "-", part.lower()).strip("-")
    if clean == part and 0 < len(clean) <= 24:
        return clean
    digest = hashlib.sha256(part.encode()).hexdigest()[:8]
    return f"{clean[:15].rstrip('-')}-{digest}".lstrip("-")


def label_value(part: str) -> str:
    """A part as a label value (LABEL_NODE, LABEL_DEVICE_GROUP): itself when it is one."""
    return part if re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]", part) else part_label(part)


def step_dir(step_name: str, run: int = 1, part: Optional[str] = None) -> str:
    """The step's folder: `benchmark` for run 1, `benchmark-3` for run 3, `benchmark@orin-nx-0`
    for the part of a fleet benchmark that runs on node orin-nx-0 (`build-engine@<group>` for
    the engine of one device group)."""
    base = step_name if run <= 1 else f"{step_name}-{run}"
    return base if part is None else f"{base}@{part}"


def job_name(name: str, step_name: str, run: int = 1, part: Optional[str] = None) -> str:
    """Deterministic Job name, at most 63 characters (a hash keeps long names unique); a part
    of a step (a fleet's node) adds `-<part_label(part)>`."""
    suffix = step_name if run <= 1 else f"{step_name}-{run}"
    if part is not None:
        suffix = f"{suffix}-{part_label(part)}"
    full = f"{name}-{suffix}"
    if len(full) <= 63:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name[: 63 - len(suffix) - 10].rstrip("-.")
    return f"{head}-{digest}-{suffix}"


def rel_dir(namespace: str, kind: str, name: str, step_name: str, run: int = 1, part: Optional[str] = None) -> str:
    """A step's artifact folder relative to the volume: <ns>/<kind lower-case>/<name>/<step>."""
    return f"{namespace}/{kind.lower()}/{name}/{step_dir(step_name, run, part)}"


def out_dir(namespace: str, kind: str, name: str, step_name: str, run: int = 1, part: Optional[str] = None) -> str:
    """The same folder as the step's Pod sees it."""
    return f"{ARTIFACT_MOUNT}/{rel_dir(namespace, kind, name, step_name, run, part)}"
