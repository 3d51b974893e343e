"""Starting the real SeaweedFS server when the machine is busy: a port found free can be taken
by another server before `weed` binds it (the full run starts clusters, API servers and S3
servers side by side). The start is retried on other ports, and a server that exits for any
other reason says why in the error, from its own log."""
from __future__ import annotations

import socket

import pytest

pytest.importorskip("boto3", reason="boto3 is not installed (run `make install`)")

from edgetune_localcluster import objectstore  # noqa: E402


@pytest.fixture
def taken():
    """A port another process listens on."""
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    yield squatter.getsockname()[1]
    squatter.close()


def test_a_port_taken_before_weed_binds_it_is_retried_on_other_ports(tmp_path, monkeypatch, taken):
    real = objectstore._free_port
    handed: list[int] = []

    def master_port_taken_once(ip, avoid):  # the order is s3, master, volume, filer
        handed.append(taken if len(handed) == 1 else real(ip, avoid))
        return handed[-1]

    monkeypatch.setattr(objectstore, "_free_port", master_port_taken_once)
    store = objectstore.ObjectStore(tmp_path / "s3")
    try:
        store.up(buckets=("edgetune",), timeout=60)
        ports = store._state()["ports"]
        assert taken not in ports.values(), ports
        log = (tmp_path / "s3" / "weed.log").read_text(errors="replace")
        assert any(p in log for p in objectstore.PORT_TAKEN), "the first start should have failed on the taken port"
        names = [b["Name"] for b in store.client().list_buckets()["Buckets"]]
        assert names == ["edgetune"]
    finally:
        store.down()


def test_a_server_that_exits_says_why_from_its_log(tmp_path, monkeypatch, taken):
    """The master's port taken at every start: three starts, then an error that carries weed's
    own last words, its exit status and the free space, not only 'see weed.log' (a CI log is
    all there is to read afterwards)."""
    real = objectstore._free_port
    calls: list[int] = []

    def master_port_always_taken(ip, avoid):  # the order is s3, master, volume, filer
        calls.append(taken if len(calls) % 4 == 1 else real(ip, avoid))
        return calls[-1]

    monkeypatch.setattr(objectstore, "_free_port", master_port_always_taken)
    store = objectstore.ObjectStore(tmp_path / "s3")
    try:
        with pytest.raises(objectstore.SeaweedFSExited) as err:
            store.up(timeout=60)
        msg = str(err.value)
        assert any(p in msg for p in objectstore.PORT_TAKEN) and "GiB free on the file system of" in msg, msg
        assert str(taken) in msg and "SeaweedFS exited (status " in msg and "still running" not in msg, msg
        assert len(calls) == 3 * 4, calls
    finally:
        store.down()
