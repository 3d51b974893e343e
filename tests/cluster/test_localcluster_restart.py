"""Stopping and starting a local cluster keeps its objects (etcd data persist), leaves no
process behind (control plane or Pod), and a second start reuses the built binary."""
from __future__ import annotations

import json
import time

import pytest

from edgetune_localcluster import LocalCluster
from edgetune_localcluster.cluster import COMPONENTS, _alive, read_pidfile

pytestmark = pytest.mark.cluster


def _wait(fn, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out; last value {v!r}")


def _pod(c, ns, name):
    return json.loads(c.kubectl("get", "pod", name, "-n", ns, "-o", "json").stdout)


def _running_pid(c, ns, name):
    st = (_pod(c, ns, name)["status"].get("containerStatuses") or [{}])[0]
    if "running" in (st.get("state") or {}):
        return int(st["containerID"].rsplit("/", 1)[1]), st["restartCount"]
    return None


def test_stop_start_keeps_objects_and_leaves_no_processes(tmp_path):
    c = LocalCluster(tmp_path / "cluster")
    c.up()
    try:
        c.kubectl("create", "namespace", "keep")
        c.kubectl("create", "configmap", "state", "-n", "keep", "--from-literal=answer=42")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "daemon", "namespace": "keep"},
               "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                   {"name": "c", "image": "x", "command": ["python", "-c", "import time; time.sleep(600)"]}]}}
        c.kubectl("apply", "-f", "-", input=json.dumps(pod))
        pod_pid, _ = _wait(lambda: _running_pid(c, "keep", "daemon"))
        server = c.server
        pids = {n: read_pidfile(c.run_dir / f"{n}.pid") for n in COMPONENTS}
        assert all(p and _alive(*p) for p in pids.values())

        c.down()
        assert not any(_alive(*p) for p in pids.values()), "a control-plane process survived down()"
        assert not _alive(pod_pid, None), "a Pod process survived down()"
        assert not c.is_up()

        t0 = time.monotonic()
        c.up()
        started = time.monotonic() - t0
        print(f"second up: {started:.1f}s")
        assert c.server == server  # same address: kubeconfigs made before stay valid
        cm = json.loads(c.kubectl("get", "configmap", "state", "-n", "keep", "-o", "json").stdout)
        assert cm["data"] == {"answer": "42"}
        # the agent finds the Pod's container gone and, restartPolicy Always, starts it again
        new_pid, restarts = _wait(lambda: _running_pid(c, "keep", "daemon"))
        assert restarts == 1 and new_pid != pod_pid
        last = _pod(c, "keep", "daemon")["status"]["containerStatuses"][0]["lastState"]["terminated"]
        assert last["reason"] == "ContainerStatusUnknown" and last["exitCode"] == 137
        assert started < 60, f"second up took {started:.1f}s"
        t0 = time.monotonic()
        c.up()  # already up: returns at once
        assert time.monotonic() - t0 < 5
    finally:
        c.down()
