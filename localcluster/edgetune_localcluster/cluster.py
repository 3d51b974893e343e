"""Start and stop a local Kubernetes cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (one multi-call binary built from k8s.io/kubernetes) and the node agent.

Everything listens on 127.0.0.1. Ports are picked free on the first ``up`` and remembered in
``<data_dir>/cluster.json`` so that a restarted cluster keeps its address (kubeconfigs and
clients made before a restart stay valid); a remembered port that has been taken since is
replaced.

Processes are started in their own sessions (they outlive a ``make cluster-up``); their pids
and start times are written to ``<data_dir>/run/*.pid`` and ``down`` stops exactly those
processes (and the Pod processes the agent recorded), checking the start time so that a
recycled pid is never signalled.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from . import build, pki
from .nodes import default_nodes

if TYPE_CHECKING:
    from .objectstore import ObjectStore

REPO_ROOT = build.MODULE_DIR.parent
DEFAULT_DATA_DIR = build.MODULE_DIR / ".data" / "dev"
SERVICE_CIDR = "10.0.0.0/24"

# start order; down stops in the reverse order
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent"]
PORT_NAMES = ["etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kubelet"]


def _log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime), counted after the ")" that ends the command name
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    st = _proc_start_time(pid)
    if st is None:
        return False
    try:  # a zombie (exited, not reaped) counts as gone
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except OSError:
        return False
    return start is None or st == start


def write_pidfile(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": pid, "start": _proc_start_time(pid)}))


def read_pidfile(path: Path) -> tuple[int, str | None] | None:
    try:
        d = json.loads(path.read_text())
        return int(d["pid"]), d.get("start")
    except (OSError, ValueError, KeyError):
        return None


def kill_recorded(path: Path, timeout: float = 10.0) -> bool:
    """Stop the process group recorded in ``path`` (SIGTERM, then SIGKILL); remove the file."""
    rec = read_pidfile(path)
    killed = False
    if rec is not None:
        pid, start = rec
        if _alive(pid, start):
            killed = True
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(pid, start) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid, start):
                _signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + 5
                while _alive(pid, start) and time.monotonic() < deadline:
                    time.sleep(0.05)
        # the group may hold children that outlived the leader
        _signal_group(pid, signal.SIGKILL, only_if_group_exists=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    return killed


def _signal_group(pid: int, sig: int, only_if_group_exists: bool = False) -> None:
    try:
        if only_if_group_exists:
            os.killpg(pid, 0)
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        if not only_if_group_exists:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


class LocalCluster:
    """A local Kubernetes cluster whose state lives in ``data_dir``.

    >>> c = LocalCluster("/tmp/c").up()
    >>> c.kubectl("get", "nodes").stdout
    >>> c.down()
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, nodes: list[dict] | None = None,
                 python: str | None = None, verbose: bool = False):
        self.data_dir = Path(data_dir or os.environ.get("EDGETUNE_LOCALCLUSTER_DIR") or DEFAULT_DATA_DIR).resolve()
        self.nodes = nodes if nodes is not None else default_nodes()
        self.python = python or sys.executable
        self.verbose = verbose
        self._binary: Path | None = None

    # ------------------------------------------------------------------ paths
    @property
    def pki_dir(self) -> Path:
        return self.data_dir / "pki"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user ``edgetune-admin``, group ``system:masters``)."""
        return self.data_dir / "kubeconfigs" / "admin.yaml"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "cluster.json"

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def ports(self) -> dict[str, int]:
        return self._state().get("ports", {})

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = build.ensure_binary()
        return self._binary

    def pvc_path(self, namespace: str, claim: str) -> Path:
        """The local folder that backs PersistentVolumeClaim ``namespace/claim``."""
        return self.data_dir / "pv" / f"{namespace}-{claim}"

    # ------------------------------------------------------------------ object storage
    @property
    def host_address(self) -> str:
        """The address of this machine that the cluster's Pods reach (their processes run here)."""
        return "127.0.0.1"

    def object_store(self, buckets: tuple[str, ...] = ("edgetune",)) -> "ObjectStore":
        """The cluster's S3 server (SeaweedFS, objectstore.py) on ``host_address``, started on
        first use with ``buckets``; ``down`` stops it. Its endpoint and key pair:
        ``.endpoint``, ``.access_key``, ``.secret_key``."""
        from .objectstore import ObjectStore

        return ObjectStore(self.data_dir / "objectstore", ip=self.host_address).up(buckets=buckets)

    # ------------------------------------------------------------------ kubeconfigs
    def _write_kubeconfig(self, path: Path, user: str, user_entry: dict) -> Path:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "edgetune-local", "cluster": {
                "server": self.server, "certificate-authority": str(self.pki_dir / "ca.crt")}}],
            "users": [{"name": user, "user": user_entry}],
            "contexts": [{"name": user, "context": {"cluster": "edgetune-local", "user": user, "namespace": "default"}}],
            "current-context": user,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=1) + "\n")  # JSON is YAML
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
        return path

    def _cert_kubeconfig(self, name: str, cert: str) -> Path:
        return self._write_kubeconfig(self.data_dir / "kubeconfigs" / f"{name}.yaml", name, {
            "client-certificate": str(self.pki_dir / f"{cert}.crt"),
            "client-key": str(self.pki_dir / f"{cert}.key")})

    def serviceaccount_kubeconfig(self, namespace: str, name: str, *, create: bool = False,
                                  duration: str = "24h") -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount ``namespace/name`` with a
        bound token from the TokenRequest API; it has exactly the RBAC permissions granted to
        that ServiceAccount. With ``create=True`` the ServiceAccount is created if missing."""
        if create:
            got = self.kubectl("get", "serviceaccount", name, "-n", namespace, check=False)
            if got.returncode != 0:
                self.kubectl("create", "serviceaccount", name, "-n", namespace)
        token = self.kubectl("create", "token", name, "-n", namespace, f"--duration={duration}").stdout.strip()
        user = f"system:serviceaccount:{namespace}:{name}"
        path = self.data_dir / "kubeconfigs" / f"sa-{namespace}-{name}.yaml"
        self._write_kubeconfig(path, user, {"token": token})
        # namespace of the context: the ServiceAccount's own
        cfg = json.loads(path.read_text())
        cfg["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(json.dumps(cfg, indent=1) + "\n")
        return path

    # ------------------------------------------------------------------ kubectl
    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120,
                kubeconfig: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
        """Run the cluster's kubectl (text mode); raises CalledProcessError (with stderr) if
        ``check`` and it fails."""
        cmd = [str(self.binary), "kubectl", "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise subprocess.CalledProcessError(p.returncode, cmd, p.stdout, p.stderr)
        return p

    # ------------------------------------------------------------------ health
    def _ssl_context(self, client: str | None = "admin") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        if client:
            ctx.load_cert_chain(self.pki_dir / f"{client}.crt", self.pki_dir / f"{client}.key")
        return ctx

    def _get(self, url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=timeout) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except (OSError, ssl.SSLError) as e:
            return 0, str(e)

    def _healthy(self, component: str) -> bool:
        p = self.ports
        if component == "etcd":
            code, body = self._get(f"http://127.0.0.1:{p['etcd']}/health")
            return code == 200 and '"true"' in body
        if component == "kube-apiserver":
            return self._get(f"{self.server}/readyz", self._ssl_context())[0] == 200
        if component in ("kube-controller-manager", "kube-scheduler"):
            port = p["controller-manager" if component == "kube-controller-manager" else "scheduler"]
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # self-signed serving certificates
            return self._get(f"https://127.0.0.1:{port}/healthz", ctx)[0] == 200
        if component == "node-agent":
            return self._get(f"https://127.0.0.1:{p['kubelet']}/healthz", self._ssl_context("apiserver-kubelet-client"))[0] == 200
        raise ValueError(component)

    def _running(self) -> dict[str, bool]:
        out = {}
        for c in COMPONENTS:
            rec = read_pidfile(self.run_dir / f"{c}.pid")
            out[c] = rec is not None and _alive(*rec)
        return out

    def is_up(self) -> bool:
        return all(self._running().values()) and self._healthy("kube-apiserver")

    def status(self) -> dict:
        running = self._running()
        st = {"data_dir": str(self.data_dir), "kubeconfig": str(self.kubeconfig),
              "components": {c: ("running" if r else "stopped") for c, r in running.items()}}
        if self.ports:
            st["server"] = self.server
        if all(running.values()):
            st["ready"] = self._healthy("kube-apiserver")
        else:
            st["ready"] = False
        return st

    # ------------------------------------------------------------------ up / down
    def _choose_ports(self) -> dict[str, int]:
        old = self.ports
        ports: dict[str, int] = {}
        for name in PORT_NAMES:
            if name in old and _port_free(old[name]):
                ports[name] = old[name]
            else:
                while True:
                    port = _free_port()
                    if port not in ports.values():
                        break
                ports[name] = port
        return ports

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")
        log.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env or os.environ.copy(), cwd=self.data_dir)
        log.close()
        write_pidfile(self.run_dir / f"{name}.pid", proc.pid)
        return proc

    def _wait(self, name: str, proc: subprocess.Popen, deadline: float) -> None:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-4000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}; log tail:\n{tail}")
            if self._healthy(name):
                return
            time.sleep(0.1)
        tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-4000:]
        raise TimeoutError(f"{name} not healthy in time; log tail:\n{tail}")

    def up(self, timeout: float = 180, fresh: bool = False) -> "LocalCluster":
        """Start the cluster (building the binary first if needed) and wait until it is ready:
        API server /readyz, controller-manager and scheduler /healthz, both nodes Ready.
        If it is already up, return at once. ``fresh=True`` wipes the data dir first."""
        if fresh:
            self.down()
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
        elif self.ports and self.is_up():
            return self
        else:
            self.down()  # clear a half-started or crashed cluster
        t0 = time.monotonic()
        binary = self.binary
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = self._choose_ports()
        state = self._state()
        state.update({"ports": ports, "binary": str(binary)})
        self.state_file.write_text(json.dumps(state, indent=1) + "\n")
        pki.ensure_pki(self.pki_dir, [n["name"] for n in self.nodes])
        self._cert_kubeconfig("admin", "admin")
        self._cert_kubeconfig("controller-manager", "controller-manager")
        self._cert_kubeconfig("scheduler", "scheduler")
        bindir = self.data_dir / "bin"
        bindir.mkdir(exist_ok=True)
        link = bindir / "kubectl"
        if not link.is_symlink() or os.readlink(link) != str(binary):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(binary)
        deadline = time.monotonic() + timeout
        k = self.pki_dir
        try:
            self._start_etcd(binary, ports, deadline)
            self._wait("etcd", self._last, deadline)
            self._start_apiserver(binary, ports, k)
            apiserver = self._last
            self._start_agent(ports)  # it waits for the API server itself; its start-up overlaps
            agent = self._last
            self._wait("kube-apiserver", apiserver, deadline)
            self._start_controller_manager(binary, ports, k)
            self._start_scheduler(binary, ports)
            cm, sch = self._procs
            self._wait("kube-controller-manager", cm, deadline)
            self._wait("kube-scheduler", sch, deadline)
            self._wait("node-agent", agent, deadline)
            self._wait_nodes_ready(deadline)
        except BaseException:
            self.down()
            raise
        _log(f"cluster up in {time.monotonic() - t0:.1f}s: {self.server} (kubeconfig {self.kubeconfig})")
        return self

    def _start_etcd(self, binary: Path, p: dict, deadline: float) -> None:
        peer = f"http://127.0.0.1:{p['etcd-peer']}"
        self._last = self._spawn("etcd", [
            str(binary), "etcd", "--name", "localcluster", "--data-dir", str(self.data_dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{p['etcd']}",
            "--advertise-client-urls", f"http://127.0.0.1:{p['etcd']}",
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"localcluster={peer}",
            # a test cluster: no fsync (data survive a clean stop; not a power cut)
            "--unsafe-no-fsync", "--quota-backend-bytes", str(2 * 2**30),
            "--log-level", "warn",
        ])

    def _start_apiserver(self, binary: Path, p: dict, k: Path) -> None:
        self._last = self._spawn("kube-apiserver", [
            str(binary), "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p['apiserver']}",
            f"--tls-cert-file={k / 'apiserver.crt'}", f"--tls-private-key-file={k / 'apiserver.key'}",
            f"--client-ca-file={k / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={k / 'sa.pub'}",
            f"--service-account-signing-key-file={k / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-certificate-authority={k / 'ca.crt'}",
            f"--kubelet-client-certificate={k / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={k / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            # the lease endpoint reconciler refuses a loopback address: the kubernetes
            # Service gets no endpoints (nothing in this cluster routes Service IPs anyway)
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--event-ttl=1h",
            "--v=1",
        ])

    def _start_controller_manager(self, binary: Path, p: dict, k: Path) -> None:
        kc = self.data_dir / "kubeconfigs" / "controller-manager.yaml"
        cm = self._spawn("kube-controller-manager", [
            str(binary), "kube-controller-manager",
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={p['controller-manager']}",
            f"--service-account-private-key-file={k / 'sa.key'}", f"--root-ca-file={k / 'ca.crt'}",
            "--use-service-account-credentials=true",
            f"--cluster-signing-cert-file={k / 'ca.crt'}", f"--cluster-signing-key-file={k / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*",
            # one controller-manager: no leader election, so a restart does not wait for the old lease
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ])
        self._procs = [cm]

    def _start_scheduler(self, binary: Path, p: dict) -> None:
        kc = self.data_dir / "kubeconfigs" / "scheduler.yaml"
        self._procs.append(self._spawn("kube-scheduler", [
            str(binary), "kube-scheduler",
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}",
            "--leader-elect=false", "--profiling=false", "--v=1",
        ]))

    def _start_agent(self, p: dict) -> None:
        cfg = {
            "kubeconfig": str(self.kubeconfig),
            "data_dir": str(self.data_dir),
            "port": p["kubelet"],
            "pki_dir": str(self.pki_dir),
            "nodes": self.nodes,
        }
        cfg_path = self.data_dir / "agent.json"
        cfg_path.write_text(json.dumps(cfg, indent=1) + "\n")
        env = os.environ.copy()
        pkg_root = str(build.MODULE_DIR)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self._last = self._spawn("node-agent", [self.python, "-m", "edgetune_localcluster.agent", str(cfg_path)], env=env)

    def _wait_nodes_ready(self, deadline: float) -> None:
        names = [n["name"] for n in self.nodes]
        while time.monotonic() < deadline:
            code, body = self._get(f"{self.server}/api/v1/nodes", self._ssl_context())
            if code == 200:
                ready = set()
                for item in json.loads(body)["items"]:
                    # Ready, and no not-ready/unreachable taint left from an earlier run
                    if any(t["key"] in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
                           for t in item.get("spec", {}).get("taints") or []):
                        continue
                    for c in item.get("status", {}).get("conditions") or []:
                        if c["type"] == "Ready" and c["status"] == "True":
                            ready.add(item["metadata"]["name"])
                if ready.issuperset(names):
                    return
            time.sleep(0.1)
        raise TimeoutError(f"nodes {names} not Ready in time")

    def down(self, timeout: float = 15) -> None:
        """Stop every process this cluster started (agent first, which stops its Pods; then
        the control plane; etcd last), then any Pod process the agent left behind."""
        for c in reversed(COMPONENTS):
            if kill_recorded(self.run_dir / f"{c}.pid", timeout):
                _log(f"stopped {c}")
        pods = self.run_dir / "pods"
        if pods.is_dir():
            for f in pods.glob("*.pid"):
                kill_recorded(f, 2)
        from .objectstore import ObjectStore

        store = ObjectStore(self.data_dir / "objectstore")
        if store.is_up():
            store.down()
            _log("stopped the object store")

    # ------------------------------------------------------------------ conveniences
    def api_client(self, kubeconfig: str | os.PathLike | None = None):
        """A ``kubernetes.client.ApiClient`` for the admin (or the given kubeconfig)."""
        from kubernetes import config
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def __enter__(self) -> "LocalCluster":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
