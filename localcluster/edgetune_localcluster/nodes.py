"""The nodes of the local cluster, modelled on the real ones edgetune targets.

Each node is a real kubelet with its own containerd on this machine; what is modelled is
what the hardware would make the node carry: labels (as the NVIDIA GPU operator's feature
discovery and a JetPack install set them), taints and the ``nvidia.com/gpu`` extended
resource (advertised with a PATCH of the node's status capacity, the documented way for a
resource without a device plugin). The kubelet itself reports the real CPU, memory and
architecture of this machine (``kubernetes.io/arch=amd64`` on every node: one CPU
architecture is what stays simulated).

gpu-node-<i> (x86 GPU server)
    edgetune.io/device=x86-gpu, nvidia.com/gpu.present=true, nvidia.com/gpu.product=NVIDIA-A10G, ...
    nvidia.com/gpu: 1; no taint.

jetson-orin-<i> (Jetson AGX Orin on JetPack)
    edgetune.io/device=jetson-orin, nvidia.com/jetpack.version=5.1.2, nvidia.com/gpu.product=Orin
    nvidia.com/gpu: 1; taint edgetune.io/edge=true:NoSchedule.

orin-nano-<i>, orin-nx-<i>, agx-orin-<i> (kinds jetson-orin-nano, jetson-orin-nx, jetson-agx-orin)
    a fleet of Jetson models: as jetson-orin, with their own nvidia.com/gpu.product, JetPack and
    L4T versions (FLEET_SPEC: one of each).

The set of nodes is ``default_nodes()`` (one of each) or ``nodes_from_spec("x86-gpu=1,jetson-orin=2")``
(also from ``$EDGETUNE_LOCALCLUSTER_NODES``); each kubelet costs about 140 MB and each
containerd about 50 MB of memory.
"""
from __future__ import annotations

import copy
import os

EDGE_TAINT = {"key": "edgetune.io/edge", "value": "true", "effect": "NoSchedule"}

# device kind -> node template (name prefix, labels, taints, extended resources, max Pods)
KINDS: dict[str, dict] = {
    "x86-gpu": {
        "prefix": "gpu-node",
        "labels": {
            "node.kubernetes.io/instance-type": "g5.2xlarge",
            "edgetune.io/device": "x86-gpu",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "NVIDIA-A10G",
            "nvidia.com/gpu.count": "1",
            "nvidia.com/gpu.memory": "23028",
            "nvidia.com/gpu.family": "ampere",
            "nvidia.com/gpu.compute.major": "8",
            "nvidia.com/gpu.compute.minor": "6",
            "nvidia.com/cuda.driver.major": "535",
            "nvidia.com/cuda.runtime.major": "12",
            "nvidia.com/gpu.deploy.device-plugin": "true",
            "nvidia.com/mig.capable": "false",
        },
        "taints": [],
        "extended": {"nvidia.com/gpu": "1"},
        "max_pods": 110,
    },
    "jetson-orin": {
        "prefix": "jetson-orin",
        "labels": {
            "edgetune.io/device": "jetson-orin",
            "nvidia.com/jetpack.version": "5.1.2",
            "nvidia.com/l4t.version": "35.4.1",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "Orin",
            "nvidia.com/gpu.family": "ampere",
            "nvidia.com/gpu.count": "1",
        },
        "taints": [EDGE_TAINT],
        "extended": {"nvidia.com/gpu": "1"},
        "max_pods": 32,
    },
}


def _jetson(prefix: str, product: str, jetpack: str, l4t: str, memory_mib: str) -> dict:
    """A Jetson of one model: the same edgetune.io/device label and taint as every Jetson, its
    own nvidia.com/gpu.product and JetPack (a fleet benchmark's device group)."""
    t = copy.deepcopy(KINDS["jetson-orin"])
    t["prefix"] = prefix
    t["labels"].update({"nvidia.com/gpu.product": product, "nvidia.com/jetpack.version": jetpack,
                        "nvidia.com/l4t.version": l4t, "nvidia.com/gpu.memory": memory_mib})
    return t


# A small fleet of different Jetson models (orin-nano-<i>, orin-nx-<i>, agx-orin-<i>), as
# NVIDIA's GPU feature discovery labels them on JetPack 5 and 6.
KINDS.update({
    "jetson-orin-nano": _jetson("orin-nano", "NVIDIA-Jetson-Orin-Nano-8GB", "6.0", "36.3.0", "7620"),
    "jetson-orin-nx": _jetson("orin-nx", "NVIDIA-Jetson-Orin-NX-16GB", "5.1.2", "35.4.1", "15388"),
    "jetson-agx-orin": _jetson("agx-orin", "NVIDIA-Jetson-AGX-Orin-64GB", "6.0", "36.3.0", "62841"),
})
DEFAULT_SPEC = "x86-gpu=1,jetson-orin=1"
FLEET_SPEC = "jetson-orin-nano=1,jetson-orin-nx=1,jetson-agx-orin=1"  # three models, no GPU server


def nodes_from_spec(spec: str) -> list[dict]:
    """``"x86-gpu=1,jetson-orin=2"`` -> gpu-node-0, jetson-orin-0, jetson-orin-1."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        kind, _, count = part.partition("=")
        if kind not in KINDS:
            raise ValueError(f"unknown node kind {kind!r} (known: {', '.join(KINDS)})")
        t = KINDS[kind]
        for i in range(int(count or 1)):
            out.append({"name": f"{t['prefix']}-{i}", "kind": kind, "labels": dict(t["labels"]),
                        "taints": copy.deepcopy(t["taints"]), "extended": dict(t["extended"]),
                        "max_pods": t["max_pods"]})
    if not out:
        raise ValueError(f"no nodes in {spec!r}")
    return out


def default_nodes() -> list[dict]:
    return nodes_from_spec(os.environ.get("EDGETUNE_LOCALCLUSTER_NODES") or DEFAULT_SPEC)


DEFAULT_NODES: list[dict] = nodes_from_spec(DEFAULT_SPEC)
