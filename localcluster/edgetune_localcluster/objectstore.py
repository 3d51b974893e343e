"""A real S3 server for the local cluster and the tests: SeaweedFS (Apache-2.0), built from the
Go module proxy like the control plane, started with authentication on.

Build: `localcluster/objectstore/` is a small wrapper module whose go.mod pins
github.com/seaweedfs/seaweedfs (as a `tool`: a plain `go install ...@version` is refused because
of the module's own replace directives, which the wrapper repeats) and `go build`s its `weed`
command. The binary is cached in ``${EDGETUNE_CACHE}/localcluster/bin/weed-<stamp>`` (the stamp
hashes go.mod, go.sum, the Go version and the flags), with its own Go build cache.

Run: `weed mini` (master, volume server, filer and S3 gateway in one process) on one address
(loopback, or an address the cluster's Pods reach), every port chosen free here, no telemetry
(SeaweedFS reports anonymous statistics to a server on the internet by default), no admin UI,
no WebDAV, no Iceberg/Lance endpoints, no buckets created on upload (as on AWS: a missing
bucket is an error); identities from a JSON file (access key pair with
Admin/Read/Write/List actions), so unsigned and wrongly signed requests are refused.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from . import build, images

SOURCE_DIR = build.MODULE_DIR / "objectstore"
BINARY_NAME = "weed"
PACKAGE = "github.com/seaweedfs/seaweedfs/weed"
LDFLAGS = "-s -w"


def _log(msg: str) -> None:
    print(f"[objectstore] {msg}", file=sys.stderr, flush=True)


def stamp() -> str:
    h = hashlib.sha256()
    for f in (SOURCE_DIR / "go.mod", SOURCE_DIR / "go.sum"):
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(build.go_version().encode())
    h.update(f"-trimpath {LDFLAGS} CGO_ENABLED=0".encode())
    return h.hexdigest()[:16]


def seaweedfs_version() -> str:
    for line in (SOURCE_DIR / "go.mod").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["github.com/seaweedfs/seaweedfs"]:
            return parts[1]
    raise RuntimeError("github.com/seaweedfs/seaweedfs is not required in localcluster/objectstore/go.mod")


def ensure_binary() -> Path:
    """The weed binary, built first if its stamp is not cached (about 3.5 min on 2 idle cores)."""
    st = stamp()
    cdir = build.cache_dir()
    path = cdir / "bin" / f"{BINARY_NAME}-{st}"
    if path.exists():
        return path
    (cdir / "bin").mkdir(parents=True, exist_ok=True)
    with open(cdir / "objectstore-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        gocache = cdir / "objectstore-gocache"
        env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0", GOCACHE=str(gocache))
        tmp = path.with_name(path.name + ".tmp")
        _log(f"building SeaweedFS {seaweedfs_version()} (stamp {st}); a few minutes the first time")
        t0 = time.monotonic()
        proc = subprocess.run([build._go(), "build", "-trimpath", "-ldflags", LDFLAGS, "-o", str(tmp), PACKAGE],
                              cwd=SOURCE_DIR, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"building SeaweedFS failed (exit {proc.returncode}) in {SOURCE_DIR}")
        os.replace(tmp, path)
        secs = time.monotonic() - t0
        info = {"stamp": st, "seaweedfs": seaweedfs_version(), "seconds": round(secs, 1),
                "bytes": path.stat().st_size, "go": build.go_version()}
        path.with_name(path.name + ".json").write_text(json.dumps(info, indent=1) + "\n")
        _log(f"built {path} in {secs:.0f}s, {info['bytes'] / 2**20:.0f} MiB")
        for old in (cdir / "bin").glob(f"{BINARY_NAME}-*"):
            if not old.name.startswith(path.name):
                old.unlink(missing_ok=True)
    return path


def _free_port(ip: str, avoid: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((ip, 0))
            port = s.getsockname()[1]
        # weed also listens on port + 10000 (gRPC) for master, volume and filer: free too
        if port + 10000 < 65536 and port not in avoid and port + 10000 not in avoid and _bindable(ip, port + 10000):
            return port


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


# what weed says of a taken port: its own check before binding (mini.go), or bind itself
PORT_TAKEN = ("is not available on", "address already in use")


class SeaweedFSExited(RuntimeError):
    """The server process ended while we waited for it to answer."""


class ObjectStore:
    """One SeaweedFS `weed mini` with one identity; its state in `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike, ip: str = "127.0.0.1"):
        self.data_dir = Path(data_dir)
        self.ip = ip
        self.state_file = self.data_dir / "objectstore.json"
        self._log_offset = 0  # where this start's lines begin in weed.log
        self._proc: subprocess.Popen | None = None  # the server, when this object started it

    # --- state ---
    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self._state()['ports']['s3']}"

    @property
    def access_key(self) -> str:
        return self._state()["access_key"]

    @property
    def secret_key(self) -> str:
        return self._state()["secret_key"]

    def client(self, access_key: str | None = None, secret_key: str | None = None):
        """A boto3 S3 client of this server (path-style, SigV4)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=access_key or self.access_key,
                            aws_secret_access_key=secret_key or self.secret_key,
                            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                          retries={"max_attempts": 2}))

    # --- lifecycle ---
    def up(self, buckets: tuple[str, ...] = (), timeout: float = 90) -> "ObjectStore":
        """Start the server (idempotent), create `buckets`, wait until S3 answers signed requests."""
        binary = ensure_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        if not state.get("access_key"):
            state.update(access_key="edgetune" + secrets.token_hex(4), secret_key=secrets.token_urlsafe(24))
        for attempt in range(3):
            if not self.is_up():
                self._start(binary, state)
            try:
                self._wait_ready(timeout)
                break
            except SeaweedFSExited as exc:
                # a port found free can be taken before weed binds it (other servers start on
                # this machine at the same time), and the full test run has seen weed end at
                # start with no word in any log: new ports, at most three starts
                if attempt == 2:
                    raise
                why = "lost a port to another process" if any(p in str(exc) for p in PORT_TAKEN) else "ended at start"
                _log(f"SeaweedFS {why}; starting it again on other ports ({exc})")
        s3 = self.client()
        existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
        for bucket in buckets:
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
        return self

    def _start(self, binary: Path, state: dict) -> None:
        """Start `weed mini` on ports free now; the state file records them and its pid."""
        used: set[int] = set()
        ports = {}
        for name in ("s3", "master", "volume", "filer"):
            ports[name] = _free_port(self.ip, used)
            used |= {ports[name], ports[name] + 10000}
        state["ports"] = ports
        identities = {"identities": [{"name": "edgetune", "credentials": [
            {"accessKey": state["access_key"], "secretKey": state["secret_key"]}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        config = self.data_dir / "identities.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        (self.data_dir / "data").mkdir(exist_ok=True)
        (self.data_dir / "logs").mkdir(exist_ok=True)
        # glog's files beside the data, not in /tmp: the error below quotes them
        argv = [str(binary), f"-logdir={self.data_dir / 'logs'}", "mini", f"-dir={self.data_dir / 'data'}",
                f"-ip={self.ip}", f"-ip.bind={self.ip}", f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
                f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}",
                f"-s3.config={config}", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false", "-s3.autoCreateBucket=false",
                "-master.volumeSizeLimitMB=64", "-volume.max=0"]
        log = open(self.data_dir / "weed.log", "ab")
        self._log_offset = log.tell()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.data_dir)
        self._proc = proc
        state["pid"] = proc.pid
        self.state_file.write_text(json.dumps(state))
        _log(f"SeaweedFS S3 starting on {self.ip}:{ports['s3']} (pid {proc.pid}, log {self.data_dir / 'weed.log'})")

    def _wait_ready(self, timeout: float) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if not self.is_up():
                raise SeaweedFSExited(self._why_it_exited())
            try:
                self.client().list_buckets()
                return
            except (BotoCoreError, ClientError) as exc:
                last = exc
                time.sleep(0.5)
        raise RuntimeError(f"SeaweedFS S3 did not answer in {timeout:.0f} s ({last}); see {self.data_dir / 'weed.log'}")

    def _why_it_exited(self) -> str:
        """Its exit status, the free disk, this start's part of weed.log and the end of glog's
        newest file (weed logs most of what it does there, not on stderr)."""
        log = self.data_dir / "weed.log"
        glog = max((self.data_dir / "logs").glob("*.log.INFO.*"), key=lambda f: f.stat().st_mtime, default=None)
        why = (f"SeaweedFS exited (status {self._reap()}; {images.disk_report(self.data_dir)}); "
               f"the end of {log}:\n{images.tail(log, 30, self._log_offset)}")
        return why + (f"\nthe end of {glog}:\n{images.tail(glog, 30)}" if glog else "")

    def _reap(self) -> str:
        """The exit status of a server this object started ('unknown' for another's): a
        negative one is the signal that ended it."""
        if self._proc is None:
            return "unknown"
        try:
            return str(self._proc.wait(timeout=5))
        except subprocess.TimeoutExpired:
            return "still running"

    def is_up(self) -> bool:
        pid = self._state().get("pid")
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our child: its own word, no reading of /proc
        if not pid:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z" and "weed" in Path(f"/proc/{pid}/cmdline").read_text()

    def down(self, timeout: float = 20) -> None:
        """Stop the server (its whole process group); the data stay."""
        pid = self._state().get("pid")
        if not pid or not self.is_up():
            return
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.is_up():
            time.sleep(0.2)
        if self.is_up():
            os.killpg(pid, signal.SIGKILL)
        try:  # reap it when it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
