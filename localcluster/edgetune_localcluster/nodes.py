"""The nodes the agent registers, modelled on the real ones edgetune targets.

Label scheme (the operator's defaults select on exactly these):

gpu-node-0 (x86 GPU server; labels as the NVIDIA GPU operator's feature discovery sets them)
    kubernetes.io/arch=amd64, edgetune.io/device=x86-gpu,
    nvidia.com/gpu.present=true, nvidia.com/gpu.product=NVIDIA-A10G, nvidia.com/gpu.count=1, ...
    allocatable nvidia.com/gpu: 1; no taint.

jetson-orin-0 (Jetson AGX Orin on JetPack)
    kubernetes.io/arch=arm64, edgetune.io/device=jetson-orin, nvidia.com/jetpack.version=5.1.2,
    nvidia.com/gpu.present=true, nvidia.com/gpu.product=Orin
    allocatable nvidia.com/gpu: 1; taint edgetune.io/edge=true:NoSchedule.
"""
from __future__ import annotations

import copy

EDGE_TAINT = {"key": "edgetune.io/edge", "value": "true", "effect": "NoSchedule"}

DEFAULT_NODES: list[dict] = [
    {
        "name": "gpu-node-0",
        "labels": {
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
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
        "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "200Gi",
                     "nvidia.com/gpu": "1"},
        "architecture": "amd64",
        "os_image": "Ubuntu 22.04.4 LTS",
        "kernel": "6.5.0-1017-aws",
    },
    {
        "name": "jetson-orin-0",
        "labels": {
            "kubernetes.io/arch": "arm64",
            "kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "arm64",
            "beta.kubernetes.io/os": "linux",
            "edgetune.io/device": "jetson-orin",
            "nvidia.com/jetpack.version": "5.1.2",
            "nvidia.com/l4t.version": "35.4.1",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": "Orin",
            "nvidia.com/gpu.family": "ampere",
            "nvidia.com/gpu.count": "1",
        },
        "taints": [EDGE_TAINT],
        "capacity": {"cpu": "12", "memory": "32Gi", "pods": "32", "ephemeral-storage": "64Gi",
                     "nvidia.com/gpu": "1"},
        "architecture": "arm64",
        "os_image": "Ubuntu 20.04.6 LTS (L4T 35.4.1)",
        "kernel": "5.10.120-tegra",
    },
]


def default_nodes() -> list[dict]:
    return copy.deepcopy(DEFAULT_NODES)
