"""Stopping and starting a local cluster keeps its objects (etcd data persist), leaves no
process behind, and a second start reuses the built binary (seconds, not a rebuild)."""
from __future__ import annotations

import json
import os
import time

import pytest

from edgetune_localcluster import LocalCluster
from edgetune_localcluster.cluster import COMPONENTS, read_pidfile, _alive

pytestmark = pytest.mark.cluster


def test_stop_start_keeps_objects_and_leaves_no_processes(tmp_path):
    c = LocalCluster(tmp_path / "cluster")
    c.up()
    try:
        c.kubectl("create", "namespace", "keep")
        c.kubectl("create", "configmap", "state", "-n", "keep", "--from-literal=answer=42")
        server = c.server
        pids = {n: read_pidfile(c.run_dir / f"{n}.pid") for n in COMPONENTS}
        assert all(p and _alive(*p) for p in pids.values())
        c.down()
        assert not any(_alive(*p) for p in pids.values()), "a process survived down()"
        assert not c.is_up()

        t0 = time.monotonic()
        c.up()
        started = time.monotonic() - t0
        assert c.server == server  # same address: old kubeconfigs stay valid
        cm = json.loads(c.kubectl("get", "configmap", "state", "-n", "keep", "-o", "json").stdout)
        assert cm["data"] == {"answer": "42"}
        assert started < 60, f"second up took {started:.1f}s"
        print(f"second up: {started:.1f}s")
        c.up()  # already up: returns at once
    finally:
        c.down()
