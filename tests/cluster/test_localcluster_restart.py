"""Stopping and starting a local cluster keeps its objects (etcd data persist) and its Pods
(the kubelet starts them again), and leaves nothing behind on the host: no process, mount,
cgroup, network interface, route, iptables rule or changed kernel setting."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from edgetune_localcluster import LocalCluster
from edgetune_localcluster.cluster import _alive
from edgetune_localcluster.sandbox import KUBELET_SYSCTLS

pytestmark = pytest.mark.cluster

SYSCTLS = list(KUBELET_SYSCTLS) + ["net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"]


def _wait(fn, timeout=120.0):
    deadline = time.monotonic() + timeout
    v = None
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out; last value {v!r}")


def _pod(c, ns, name):
    return json.loads(c.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)


def _running(c, ns, name):
    """(host pid of the container's process, restartCount) once it runs."""
    pod = _pod(c, ns, name)
    st = (pod["status"].get("containerStatuses") or [{}])[0]
    if "running" not in (st.get("state") or {}):
        return None
    cid = st["containerID"].split("://", 1)[1]
    for line in c.ctr(pod["spec"]["nodeName"], "tasks", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f[0] == cid and f[2] == "RUNNING":
            return int(f[1]), st["restartCount"]
    return None


def _iptables() -> str:
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        p = subprocess.run([tool], capture_output=True, text=True)
        # counters and the generation comments change by themselves
        out += [line.split(" [")[0] if line.startswith(":") else line
                for line in p.stdout.splitlines() if not line.startswith("#")]
    return "\n".join(out)


def host_state(c: LocalCluster, slot: int) -> dict:
    """What the cluster's nodes could leave on the host, as seen from the host."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/etlc{slot}"))
    return {
        "mounts": sorted(m for m in mounts if m.startswith((str(c.data_dir), f"/run/edgetune-localcluster/{slot}"))),
        "cgroups": cgroups,
        # other clusters on this machine (the test session's) have other slots
        "links": sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name == f"etlc{slot}"),
        "routes": [r for r in subprocess.run(["ip", "route"], capture_output=True, text=True).stdout.splitlines()
                   if f"etlc{slot} " in r + " " or f"10.{100 + slot}." in r],
        "iptables": _iptables(),
        "sysctls": {k: Path(f"/proc/sys/{k}").read_text().strip() for k in SYSCTLS
                    if Path(f"/proc/sys/{k}").exists()},
        "run": sorted(str(p) for p in Path("/run/edgetune-localcluster").glob(f"{slot}*")),
        "var": {d: sorted(os.listdir(d)) if os.path.isdir(d) else None
                for d in ("/var/log/containers", "/var/log/pods", "/var/lib/cni", "/var/lib/cni/results", "/run/containerd",
                          "/opt/containerd",
                          "/var/lib/kubelet", "/etc/cni")},
    }


def test_stop_start_keeps_objects_and_leaves_nothing_behind(tmp_path):
    c = LocalCluster(tmp_path / "cluster")
    try:
        c.up()
        slot = c.slot
        # what the host looks like without this cluster's nodes
        c.down()
        before = host_state(c, slot)
        assert before["cgroups"] == [] and before["mounts"] == [] and before["run"] == []
        c.up()
        assert c.slot == slot
        up_state = host_state(c, slot)
        assert up_state["cgroups"] and f"etlc{slot}" in up_state["links"]  # the check can see them
        c.kubectl("create", "namespace", "keep")
        c.kubectl("create", "configmap", "state", "-n", "keep", "--from-literal=answer=42")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "daemon", "namespace": "keep"},
               "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                   {"name": "c", "image": c.images["base"], "command": ["python", "-c", "import time; time.sleep(600)"],
                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
                        "volumes": [{"name": "cfg", "configMap": {"name": "state"}}]}}
        c.kubectl("apply", "-f", "-", input=json.dumps(pod))
        pod_pid, _ = _wait(lambda: _running(c, "keep", "daemon"))
        server = c.server
        pids = {n: p for n, p in c.pids().items()}
        assert all(p and _alive(*p) for p in pids.values()), pids

        c.down()
        assert not any(_alive(*p) for p in pids.values()), "a cluster process survived down()"
        assert not _alive(pod_pid, None), "a container's process survived down()"
        assert not c.is_up()
        assert host_state(c, slot) == before

        c.up()
        assert c.server == server  # same address: kubeconfigs made before stay valid
        cm = json.loads(c.kubectl("get", "configmap", "state", "-n", "keep", "-o", "json").stdout)
        assert cm["data"] == {"answer": "42"}
        # the kubelet finds the Pod's container gone and, restartPolicy Always, starts it again
        new_pid, restarts = _wait(lambda: _running(c, "keep", "daemon"))
        assert restarts >= 1 and new_pid != pod_pid
        again = c.up()  # already up: returns the same cluster at once
        assert again is c and c.is_up()
    finally:
        c.destroy()
    assert host_state(c, slot) == before
