"""Faults a real edge cluster has every week, injected into a running local cluster for tests:

    restart(cluster, "kube-apiserver")     the API server (or etcd, the controller-manager, the
                                           scheduler) stopped and started again alone
    stop_node(cluster, "jetson-orin-0")    the node's kubelet and containerd stop: no more
                                           heartbeats, so the real node lifecycle controller
                                           marks it NotReady and taint-based eviction follows;
                                           its containers keep running (a network partition)
                                           unless kill_containers=True (a power cut)
    start_node(cluster, "jetson-orin-0")   containerd and kubelet again, until the node is Ready
    kill_container(cluster, ns, pod)       SIGKILL to a Pod's container, as if the device rebooted

Each waits until what it did has taken effect (a component healthy again, a process gone), so
a test goes on from a known state. The same processes, flags and files as ``LocalCluster.up``.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from .cluster import LocalCluster, _alive, _log, kill_recorded, read_pidfile

CONTROL_PLANE = {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}


def restart(cluster: LocalCluster, component: str, *, down_seconds: float = 0.0, timeout: float = 120) -> float:
    """Stop one control-plane component (SIGTERM, as a k3s upgrade or a reboot does), keep it
    down for ``down_seconds``, start it again with its usual flags and wait until it is healthy.
    Returns the seconds it was unavailable."""
    if component not in CONTROL_PLANE:
        raise ValueError(f"{component!r} is not one of {sorted(CONTROL_PLANE)}")
    t0 = time.monotonic()
    kill_recorded(cluster.run_dir / f"{component}.pid", timeout=20)
    _log(f"fault: stopped {component}")
    time.sleep(down_seconds)
    _procs(cluster)
    binary, ports, pki = cluster.binary, cluster.ports, cluster.pki_dir
    start = {"etcd": lambda: cluster._start_etcd(binary, ports),
             "kube-apiserver": lambda: cluster._start_apiserver(binary, ports, pki),
             "kube-controller-manager": lambda: cluster._start_controller_manager(binary, ports, pki),
             "kube-scheduler": lambda: cluster._start_scheduler(binary, ports)}
    start[component]()
    cluster._wait(component, time.monotonic() + timeout)
    if component == "etcd":  # the API server's own readiness follows etcd's
        cluster._wait("kube-apiserver", time.monotonic() + timeout)
    _log(f"fault: {component} back after {time.monotonic() - t0:.1f}s")
    return time.monotonic() - t0


def stop_node(cluster: LocalCluster, node: str, *, kill_containers: bool = False) -> None:
    """Stop ``node``'s kubelet and containerd. The Pods' containers (their shims outlive
    containerd) keep running unless ``kill_containers``: then every process in the node's
    cgroup is killed as well, as in a power cut."""
    cluster._node_index(node)  # KeyError for a node the cluster does not have
    pids = _container_pids(cluster, node) if kill_containers else set()
    for comp in (f"kubelet-{node}", f"containerd-{node}"):
        kill_recorded(cluster.run_dir / f"{comp}.pid", timeout=15)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _log(f"fault: stopped node {node}" + (f" and {len(pids)} container processes" if pids else ""))


def start_node(cluster: LocalCluster, node: str, *, timeout: float = 180) -> None:
    """Start ``node``'s containerd and kubelet again and wait until the node is Ready (and its
    not-ready/unreachable taints are gone)."""
    spec = cluster.nodes[cluster._node_index(node)]
    _procs(cluster)
    deadline = time.monotonic() + timeout
    if not _running(cluster, f"containerd-{node}"):
        cluster._start_containerd(spec)
        cluster._wait(f"containerd-{node}", deadline)
    if not _running(cluster, f"kubelet-{node}"):
        cluster._start_kubelet(cluster.binary, spec, dict(cluster.images))
        cluster._wait(f"kubelet-{node}", deadline)
    while time.monotonic() < deadline:
        got = json.loads(cluster.kubectl("get", "node", node, "-o", "json").stdout)
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in got["status"].get("conditions") or [])
        tainted = any(t["key"] in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
                      for t in got["spec"].get("taints") or [])
        if ready and not tainted:
            _log(f"fault: node {node} Ready again")
            return
        time.sleep(0.5)
    raise TimeoutError(f"node {node} not Ready {timeout:.0f}s after its kubelet started")


def kill_container(cluster: LocalCluster, namespace: str, pod: str, container: str | None = None) -> str:
    """SIGKILL the main process of one of a Pod's containers (the first unless ``container``),
    through its node's containerd; returns the container ID."""
    got = json.loads(cluster.kubectl("get", "pod", pod, "-n", namespace, "-o", "json").stdout)
    node = got["spec"].get("nodeName")
    statuses = [s for s in got["status"].get("containerStatuses") or [] if container in (None, s["name"])]
    if not node or not statuses or not statuses[0].get("containerID"):
        raise RuntimeError(f"pod {namespace}/{pod} has no running container to kill")
    cid = statuses[0]["containerID"].split("://", 1)[-1]
    cluster.ctr(node, "tasks", "kill", "--signal", "SIGKILL", cid)
    _log(f"fault: killed container {cid[:12]} of {namespace}/{pod} on {node}")
    return cid


def _procs(cluster: LocalCluster) -> None:
    if not hasattr(cluster, "_procs"):  # a cluster object that did not run up() itself
        cluster._procs = {}


def _running(cluster: LocalCluster, component: str) -> bool:
    rec = read_pidfile(cluster.run_dir / f"{component}.pid")
    return rec is not None and _alive(*rec)


def _container_pids(cluster: LocalCluster, node: str) -> set[int]:
    """Every process under the node's cgroup root (its Pods' containers), from the pids cgroup."""
    root = cluster.sandbox.cgroup_root(node).strip("/")
    out: set[int] = set()
    for base in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        top = base / root
        if top.is_dir():
            for procs in top.rglob("cgroup.procs"):
                try:
                    out.update(int(x) for x in procs.read_text().split())
                except (OSError, ValueError):
                    pass
            if out:
                break
    return out

