"""Start and stop a local Kubernetes cluster: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler (one multi-call binary built from k8s.io/kubernetes), and real nodes — per node a
kubelet (the same binary) with its own containerd, runc and CNI bridge — plus kube-proxy,
CoreDNS and a hostPath volume provisioner.

The control plane runs on the host; the API server listens on the host end of the cluster's
veth (10.99.<slot>.1, see sandbox.py), the other control-plane endpoints on 127.0.0.1. The
nodes run in the cluster's own network and mount namespaces. Ports and the slot are picked on
the first ``up`` and remembered in ``<data_dir>/cluster.json``, so that a restarted cluster
keeps its address (kubeconfigs made before a restart stay valid).

Processes are started in their own sessions (they outlive a ``make cluster-up``); their pids
and start times are written to ``<data_dir>/run/*.pid``; ``down`` stops exactly those, then
sweeps the nodes' namespaces and cgroups (every container, shim and mount goes with them),
checking start times so that a recycled pid is never signalled.
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

from . import build, images, pki, tools
from .nodes import default_nodes
from .sandbox import Sandbox, claim_slot, release_slot

if TYPE_CHECKING:
    from .objectstore import ObjectStore

REPO_ROOT = build.MODULE_DIR.parent
DEFAULT_DATA_DIR = build.MODULE_DIR / ".data" / "dev"
SERVICE_CIDR = "10.0.0.0/24"
DNS_SERVICE_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
KUBELET_PORT = 10250
KUBELET_HEALTHZ_PORT = 10248
KUBE_PROXY_HEALTHZ_PORT = 10256
COREDNS_READY_PORT = 8181

# the control plane's start order; down stops in the reverse order (nodes first)
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "provisioner"]
PORT_NAMES = ["etcd", "etcd-peer", "apiserver", "controller-manager", "scheduler"]


DEVICE_PLUGIN_SOCKET_TAKEN = "device-plugins/kubelet.sock: bind: address already in use"


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
        self._tools: dict[str, Path] | None = None

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
    def slot(self) -> int | None:
        return self._state().get("slot")

    @property
    def sandbox(self) -> Sandbox:
        if self.slot is None:
            raise RuntimeError("the cluster has never been started (no slot)")
        return Sandbox(self.slot)

    @property
    def server(self) -> str:
        return f"https://{self.sandbox.host_ip}:{self.ports['apiserver']}"

    @property
    def binary(self) -> Path:
        if self._binary is None:
            self._binary = build.ensure_binary()
        return self._binary

    @property
    def tools(self) -> dict[str, Path]:
        if self._tools is None:
            self._tools = tools.ensure_all()
        return self._tools

    @property
    def images(self) -> dict[str, str]:
        """Image references loaded into every node (name -> ref), e.g. ``images["python"]``."""
        return dict(self._state().get("images", {}))

    def node_dir(self, node: str) -> Path:
        return self.data_dir / "nodes" / node

    def pvc_path(self, namespace: str, claim: str) -> Path:
        """The local folder that backs PersistentVolumeClaim ``namespace/claim``."""
        return self.data_dir / "pv" / f"{namespace}-{claim}"

    # ------------------------------------------------------------------ object storage
    @property
    def host_address(self) -> str:
        """The address of this machine that the cluster's Pods reach: the host end of the
        cluster's veth (sandbox.py), the one off-namespace address their traffic may go to."""
        return self.sandbox.host_ip

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

    def ctr(self, node: str, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run containerd's ``ctr`` against ``node``'s containerd (namespace k8s.io)."""
        cmd = self.sandbox.enter(str(self.tools["ctr"]), "--address", self._containerd_socket(node),
                                 "-n", "k8s.io", *args)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
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
        sb = self.sandbox
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
        if component == "provisioner":
            return True
        if component.startswith("containerd-"):
            node = component[len("containerd-"):]
            return self.ctr(node, "version", check=False, timeout=10).returncode == 0
        if component.startswith("kubelet-"):
            i = self._node_index(component[len("kubelet-"):])
            return self._get(f"http://{sb.node_ip(i)}:{KUBELET_HEALTHZ_PORT}/healthz")[0] == 200
        if component == "kube-proxy":
            return self._get(f"http://{sb.uplink_ip}:{KUBE_PROXY_HEALTHZ_PORT}/healthz")[0] == 200
        if component == "coredns":
            return self._get(f"http://{sb.uplink_ip}:{COREDNS_READY_PORT}/ready")[0] == 200
        raise ValueError(component)

    def _node_index(self, name: str) -> int:
        for i, n in enumerate(self.nodes):
            if n["name"] == name:
                return i
        raise KeyError(name)

    @property
    def node_components(self) -> list[str]:
        out = []
        for n in self.nodes:
            out += [f"containerd-{n['name']}", f"kubelet-{n['name']}"]
        return out + ["kube-proxy", "coredns"]

    @property
    def components(self) -> list[str]:
        """Every process the cluster runs, in start order."""
        return COMPONENTS + self.node_components

    def _running(self) -> dict[str, bool]:
        out = {}
        for c in self.components:
            rec = read_pidfile(self.run_dir / f"{c}.pid")
            out[c] = rec is not None and _alive(*rec)
        return out

    def pids(self) -> dict[str, tuple[int, str | None] | None]:
        """The recorded (pid, start time) of every component."""
        return {c: read_pidfile(self.run_dir / f"{c}.pid") for c in self.components}

    def is_up(self) -> bool:
        return self.slot is not None and all(self._running().values()) and self._healthy("kube-apiserver")

    def status(self) -> dict:
        running = self._running()
        st = {"data_dir": str(self.data_dir), "kubeconfig": str(self.kubeconfig),
              "components": {c: ("running" if r else "stopped") for c, r in running.items()}}
        if self.ports and self.slot is not None:
            st["server"] = self.server
            st["slot"] = self.slot
        st["ready"] = bool(all(running.values()) and self.slot is not None and self._healthy("kube-apiserver"))
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
        self._procs[name] = proc
        return proc

    def _wait(self, name: str, deadline: float) -> None:
        proc = self._procs[name]
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-4000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}; log tail:\n{tail}")
            if self._healthy(name):
                return
            time.sleep(0.1)
        tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-4000:]
        raise TimeoutError(f"{name} not healthy in time; log tail:\n{tail}")

    def up(self, timeout: float = 300, fresh: bool = False) -> "LocalCluster":
        """Start the cluster (building and installing what it needs first) and wait until it is
        ready: API server /readyz, controller-manager and scheduler /healthz, every node Ready,
        kube-proxy and CoreDNS ready. If it is already up, return at once. ``fresh=True`` wipes
        the data dir first."""
        if fresh:
            self.down()
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)
        elif self.ports and self.is_up():
            return self
        else:
            self.down()  # clear a half-started or crashed cluster
        binary, tl = self.binary, self.tools
        refs = {**self._state().get("images", {}), **images.ensure_node_images(tl)}
        refs = {k: r for k, r in refs.items() if images.archive_path(r).exists()}
        t0 = time.monotonic()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = self._state()
        if not self.state_file.exists():
            self.state_file.write_text("{}\n")  # the slot claim needs the file
        slot = claim_slot(self.data_dir, state.get("slot"))
        ports = self._choose_ports()
        state.update({"ports": ports, "binary": str(binary), "slot": slot, "images": refs,
                      "nodes": [n["name"] for n in self.nodes]})
        self.state_file.write_text(json.dumps(state, indent=1) + "\n")
        sb = self.sandbox
        extra = {}
        for i, n in enumerate(self.nodes):
            extra.update(pki.node_certs(n["name"], sb.node_ip(i)))
        pki.ensure_pki(self.pki_dir, extra, apiserver_ips=[sb.host_ip])
        for name in ("admin", "controller-manager", "scheduler", "kube-proxy", "coredns"):
            self._cert_kubeconfig(name, name)
        for n in self.nodes:
            self._cert_kubeconfig(f"kubelet-{n['name']}", f"kubelet-{n['name']}-client")
        bindir = self.data_dir / "bin"
        bindir.mkdir(exist_ok=True)
        link = bindir / "kubectl"
        if not link.is_symlink() or os.readlink(link) != str(binary):
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(binary)
        deadline = time.monotonic() + timeout
        k = self.pki_dir
        self._procs: dict[str, subprocess.Popen] = {}
        try:
            sb.create(len(self.nodes))
            sb.create_cgroups([n["name"] for n in self.nodes])
            self._start_etcd(binary, ports)
            self._wait("etcd", deadline)
            self._start_apiserver(binary, ports, k)
            for n in self.nodes:  # containerd needs no API server: start it meanwhile
                self._start_containerd(n)
            self._wait("kube-apiserver", deadline)
            # after /readyz (RBAC's bootstrap roles exist), so that no controller starts forbidden
            self._start_controller_manager(binary, ports, k)
            self._start_scheduler(binary, ports)
            self._start_provisioner()
            for n in self.nodes:
                self._wait(f"containerd-{n['name']}", deadline)
                self._import_images(n["name"], refs)
            self._apply_addons()
            for n in self.nodes:
                self._start_kubelet(binary, n, refs)
            self._start_kube_proxy(binary)
            self._start_coredns()
            for c in ("kube-controller-manager", "kube-scheduler", "kube-proxy", "coredns"):
                self._wait(c, deadline)
            for n in self.nodes:
                self._wait_kubelet(binary, n, refs, deadline)
            self._wait_nodes_ready(deadline)
            self._advertise_extended_resources(deadline)
        except BaseException:
            self.down()
            raise
        _log(f"cluster up in {time.monotonic() - t0:.1f}s: {self.server} (kubeconfig {self.kubeconfig})")
        return self

    # ------------------------------------------------------------------ control plane
    def _start_etcd(self, binary: Path, p: dict) -> None:
        peer = f"http://127.0.0.1:{p['etcd-peer']}"
        self._spawn("etcd", [
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
        ip = self.sandbox.host_ip
        self._spawn("kube-apiserver", [
            str(binary), "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            # the host end of the cluster's veth: reachable from the nodes and Pods (the
            # `kubernetes` Service's endpoint, kept by the lease reconciler), local to the host
            f"--bind-address={ip}", f"--advertise-address={ip}", f"--secure-port={p['apiserver']}",
            f"--tls-cert-file={k / 'apiserver.crt'}", f"--tls-private-key-file={k / 'apiserver.key'}",
            f"--client-ca-file={k / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={k / 'sa.pub'}",
            f"--service-account-signing-key-file={k / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--kubelet-certificate-authority={k / 'ca.crt'}",
            f"--kubelet-client-certificate={k / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={k / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
            "--event-ttl=1h",
            "--v=1",
        ])

    def _start_controller_manager(self, binary: Path, p: dict, k: Path) -> None:
        kc = self.data_dir / "kubeconfigs" / "controller-manager.yaml"
        self._spawn("kube-controller-manager", [
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

    def _start_scheduler(self, binary: Path, p: dict) -> None:
        kc = self.data_dir / "kubeconfigs" / "scheduler.yaml"
        self._spawn("kube-scheduler", [
            str(binary), "kube-scheduler",
            f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
            "--bind-address=127.0.0.1", f"--secure-port={p['scheduler']}",
            "--leader-elect=false", "--profiling=false", "--v=1",
        ])

    def _start_provisioner(self) -> None:
        cfg = self.data_dir / "provisioner.json"
        cfg.write_text(json.dumps({"kubeconfig": str(self.kubeconfig), "pv_dir": str(self.data_dir / "pv")}) + "\n")
        env = os.environ.copy()
        env["PYTHONPATH"] = str(build.MODULE_DIR) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self._spawn("provisioner", [self.python, "-m", "edgetune_localcluster.provisioner", str(cfg)], env=env)

    # ------------------------------------------------------------------ nodes
    def _runtime_dir(self, node: str) -> str:
        # inside the mount namespace's own /run (a tmpfs): short socket paths, gone with it
        return f"/run/edgetune/{node}"

    def _containerd_socket(self, node: str) -> str:
        return f"{self._runtime_dir(node)}/containerd.sock"

    def _start_containerd(self, n: dict) -> None:
        name, i = n["name"], self._node_index(n["name"])
        sb, tl = self.sandbox, self.tools
        d = self.node_dir(name)
        (d / "cni").mkdir(parents=True, exist_ok=True)
        rd = self._runtime_dir(name)
        conflist = {"cniVersion": "1.0.0", "name": f"etlc{sb.slot}-{name}", "plugins": [
            {"type": "bridge", "bridge": f"cni{i}", "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": sb.node_pod_cidr(i)}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": f"{rd}/ipam"}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}
        (d / "cni" / "10-bridge.conflist").write_text(json.dumps(conflist, indent=1) + "\n")
        refs = self.images
        cfg = f"""# containerd of node {name} (written by edgetune_localcluster; see sandbox.py)
version = 3
root = "{d / 'containerd'}"
state = "{rd}/state"
imports = []
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs",
  "io.containerd.differ.v1.erofs", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{self._containerd_socket(name)}"

[ttrpc]
  address = "{rd}/containerd.sock.ttrpc"

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      sandbox = "{refs['pause']}"

  [plugins."io.containerd.cri.v1.runtime"]
    enable_selinux = false
    # the machine's root lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj otherwise
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    cdi_spec_dirs = []
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          BinaryName = "{tl['runc']}"
          SystemdCgroup = false
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["{tl['cni_bin']}"]
      conf_dir = "{d / 'cni'}"
      max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
"""
        (d / "containerd.toml").write_text(cfg)
        env = os.environ.copy()
        env["PATH"] = f"{tl['containerd'].parent}:/usr/sbin:/usr/bin:/sbin:/bin"  # the shim
        self._spawn(f"containerd-{name}", sb.enter(str(tl["containerd"]), "--config", str(d / "containerd.toml")),
                    env=env)

    def _import_images(self, node: str, refs: dict[str, str]) -> None:
        have = set(self.ctr(node, "images", "ls", "-q").stdout.split())
        for key, ref in refs.items():
            if ref in have:
                continue
            tar = images.archive_path(ref)
            images.check_room(tar, self.data_dir, f"node {node}")
            # unpacked into the node's snapshotter, the layer blobs dropped: one copy per node
            try:
                self.ctr(node, "images", "import", "--platform=linux/amd64", "--discard-unpacked-layers", "--local",
                         str(tar))
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n({images.disk_report(self.data_dir)})") from None
            # never garbage-collected by the kubelet: it could not pull them again
            self.ctr(node, "images", "label", ref, "io.cri-containerd.pinned=pinned")

    def load_image(self, ref: str, key: str | None = None) -> str:
        """Import a locally built image (``images.archive_path(ref)``) into every node's
        containerd; remembered as ``images[key]`` and imported again by later ``up``s."""
        for n in self.nodes:
            self._import_images(n["name"], {key or ref: ref})
        if key:
            state = self._state()
            state.setdefault("images", {})[key] = ref
            self.state_file.write_text(json.dumps(state, indent=1) + "\n")
        return ref

    def _wait_kubelet(self, binary: Path, n: dict, refs: dict[str, str], deadline: float) -> None:
        """Wait for a node's kubelet; start it again when it lost the race for the device
        plugin socket. Every kubelet binds the same fixed path (pluginapi.DevicePluginPath,
        /var/lib/kubelet/device-plugins/kubelet.sock) after clearing that folder, so two
        kubelets starting in the same instant can find it taken and exit."""
        name = f"kubelet-{n['name']}"
        for attempt in range(3):
            try:
                return self._wait(name, deadline)
            except RuntimeError as exc:
                if attempt == 2 or DEVICE_PLUGIN_SOCKET_TAKEN not in str(exc):
                    raise
                _log(f"{name} lost the race for the device plugin socket; starting it again")
                self._start_kubelet(binary, n, refs)

    def _start_kubelet(self, binary: Path, n: dict, refs: dict[str, str]) -> None:
        name, i = n["name"], self._node_index(n["name"])
        sb = self.sandbox
        d = self.node_dir(name)
        ip = sb.node_ip(i)
        k = self.pki_dir
        cfg = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "address": ip, "port": KUBELET_PORT, "readOnlyPort": 0,
            "healthzBindAddress": ip, "healthzPort": KUBELET_HEALTHZ_PORT,
            "tlsCertFile": str(k / f"kubelet-{name}-serving.crt"),
            "tlsPrivateKeyFile": str(k / f"kubelet-{name}-serving.key"),
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": str(k / "ca.crt")}},
            "authorization": {"mode": "Webhook"},
            # cgroup v1 (this machine's hierarchy): deprecated, a later minor may drop it
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs", "cgroupRoot": sb.cgroup_root(name), "cgroupsPerQOS": True,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self._containerd_socket(name)}",
            "clusterDNS": [DNS_SERVICE_IP], "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": "",  # Pods never get the host's resolvers: no name leaves the cluster
            "podLogsDir": str(d / "pod-logs"),
            "maxPods": n.get("max_pods", 110),
            "registerNode": True,
            "registerWithTaints": n.get("taints") or [],
            # the images cannot be pulled again: never garbage-collect them, never evict for disk
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "serializeImagePulls": False,
            "rotateCertificates": False,
            "protectKernelDefaults": False,
            "staticPodPath": "",
        }
        (d / "kubelet.yaml").write_text(json.dumps(cfg, indent=1) + "\n")
        # the kubelet binds unix sockets under its root dir (plugins, pod resources, the pods
        # API): a deep data dir (pytest's tmp_path) passes the 108-byte socket path limit, so it
        # runs on a short bind mount of it in the namespace's /run (the data stay on disk)
        root = f"{self._runtime_dir(name)}/kubelet"
        (d / "kubelet").mkdir(parents=True, exist_ok=True)
        sb.run_in("sh", "-c", f"mkdir -p {root} && (mountpoint -q {root} || mount --bind {d / 'kubelet'} {root})")
        labels = ",".join(f"{a}={b}" for a, b in n["labels"].items())
        self._spawn(f"kubelet-{name}", sb.enter(
            str(binary), "kubelet", f"--config={d / 'kubelet.yaml'}",
            f"--kubeconfig={self.data_dir / 'kubeconfigs' / f'kubelet-{name}.yaml'}",
            f"--root-dir={root}", f"--hostname-override={name}", f"--node-ip={ip}",
            f"--node-labels={labels}", "--v=1"))

    def _start_kube_proxy(self, binary: Path) -> None:
        sb = self.sandbox
        self._spawn("kube-proxy", sb.enter(
            str(binary), "kube-proxy",
            f"--kubeconfig={self.data_dir / 'kubeconfigs' / 'kube-proxy.yaml'}",
            "--proxy-mode=iptables", f"--cluster-cidr={sb.pod_cidr}",
            f"--hostname-override={self.nodes[0]['name']}",
            f"--healthz-bind-address={sb.uplink_ip}:{KUBE_PROXY_HEALTHZ_PORT}",
            "--metrics-bind-address=127.0.0.1:10249",
            # leave the kernel's conntrack table settings alone
            "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0s",
            "--conntrack-tcp-timeout-close-wait=0s",
            "--v=1"))

    def _start_coredns(self) -> None:
        sb = self.sandbox
        corefile = self.data_dir / "Corefile"
        corefile.write_text(f""". {{
    bind {sb.uplink_ip}
    errors
    ready {sb.uplink_ip}:{COREDNS_READY_PORT}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {self.data_dir / 'kubeconfigs' / 'coredns.yaml'} coredns
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }}
    cache 5
    loadbalance
}}
""")
        self._spawn("coredns", sb.enter(str(self.tools["coredns"]), "-conf", str(corefile), "-dns.port", "53"))

    def _apply_addons(self) -> None:
        """RBAC of CoreDNS, and the kube-dns Service whose one endpoint is CoreDNS' address."""
        sb = self.sandbox
        objs = [
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "edgetune:coredns"},
             "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                        "verbs": ["list", "watch"]},
                       {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                        "verbs": ["list", "watch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
             "metadata": {"name": "edgetune:coredns"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edgetune:coredns"},
             "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "edgetune:coredns"}]},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "kube-dns", "namespace": "kube-system",
                          "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
             "spec": {"clusterIP": DNS_SERVICE_IP, "ports": [
                 {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                 {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "kube-dns-coredns", "namespace": "kube-system",
                          "labels": {"kubernetes.io/service-name": "kube-dns",
                                     "endpointslice.kubernetes.io/managed-by": "edgetune-localcluster"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": [sb.uplink_ip], "conditions": {"ready": True}}],
             "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                       {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]},
        ]
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=edgetune-localcluster",
                     "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))

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
            for n in self.nodes:
                proc = self._procs.get(f"kubelet-{n['name']}")
                if proc is not None and proc.poll() is not None:
                    tail = (self.log_dir / f"kubelet-{n['name']}.log").read_text(errors="replace")[-4000:]
                    raise RuntimeError(f"kubelet of {n['name']} exited ({proc.returncode}):\n{tail}")
            time.sleep(0.2)
        raise TimeoutError(f"nodes {names} not Ready in time")

    def _advertise_extended_resources(self, deadline: float) -> None:
        """``nvidia.com/gpu`` and the like: a PATCH of the node's status capacity, the documented
        way for a resource without a device plugin; the kubelet then reports it as allocatable."""
        for n in self.nodes:
            ops = [{"op": "add", "path": "/status/capacity/" + r.replace("~", "~0").replace("/", "~1"), "value": v}
                   for r, v in (n.get("extended") or {}).items()]
            if ops:
                self.kubectl("patch", "node", n["name"], "--subresource=status", "--type=json", "-p", json.dumps(ops))
        for n in self.nodes:
            while True:
                alloc = json.loads(self.kubectl("get", "node", n["name"], "-o", "json").stdout)["status"].get(
                    "allocatable", {})
                if all(alloc.get(r) == v for r, v in (n.get("extended") or {}).items()):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n['name']}: extended resources not allocatable: {alloc}")
                time.sleep(0.2)

    # ------------------------------------------------------------------ down
    def down(self, timeout: float = 15) -> None:
        """Stop every process this cluster started: the kubelets, containerds, kube-proxy and
        CoreDNS, then the control plane (etcd last), then whatever is left in the nodes'
        sandbox (containers, shims) with its namespaces and cgroups."""
        # containerd's CNI library caches results in /var/lib/cni/results/<net>-<sandbox id>-<if>
        # (its loopback network's too): note the sandboxes, to drop their files after the sweep
        sandboxes: set[str] = set()
        for n in self.nodes:
            if self.slot is not None and self._running().get(f"containerd-{n['name']}"):
                got = self.ctr(n["name"], "containers", "ls", "-q", check=False, timeout=20)
                sandboxes.update(got.stdout.split())
        for n in self.nodes:
            kill_recorded(self.run_dir / f"kubelet-{n['name']}.pid", timeout)
        for c in reversed(self.node_components):
            kill_recorded(self.run_dir / f"{c}.pid", 5)
        # the control plane while its address (the veth) still exists: the API server deletes
        # its lease through it on the way out
        for c in reversed(COMPONENTS):
            if kill_recorded(self.run_dir / f"{c}.pid", timeout):
                _log(f"stopped {c}")
        from .objectstore import ObjectStore  # bound to the veth: stopped before it goes

        store = ObjectStore(self.data_dir / "objectstore")
        if store.is_up():
            store.down()
            _log("stopped the object store")
        # and the sandboxes of this cluster's networks (etlc<slot>-<node>-<sandbox>-<if>) that
        # the listing missed (a sandbox torn down or made while it ran)
        results = list(Path("/var/lib/cni/results").glob("*"))
        if self.slot is not None:
            for f in results:
                for n in self.nodes:
                    prefix = f"etlc{self.slot}-{n['name']}-"
                    if f.name.startswith(prefix):
                        sandboxes.add(f.name[len(prefix):].rsplit("-", 1)[0])
        for f in results:
            if any(f"-{sid}-" in f.name for sid in sandboxes):
                f.unlink(missing_ok=True)
        if self.slot is not None:
            result = self.sandbox.sweep()
            if result["killed"]:
                _log(f"stopped {result['killed']} container and shim processes")
            if result["cgroups_left"]:
                _log(f"cgroups left behind: {result['cgroups_left']}")

    def destroy(self) -> None:
        """``down``, then remove the data dir and give up the slot."""
        slot = self.slot
        self.down()
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir, ignore_errors=True)
        if slot is not None:
            release_slot(slot, self.data_dir)

    # ------------------------------------------------------------------ conveniences
    def api_client(self, kubeconfig: str | os.PathLike | None = None):
        """A ``kubernetes.client.ApiClient`` for the admin (or the given kubeconfig)."""
        from kubernetes import config
        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    def __enter__(self) -> "LocalCluster":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()
