"""The host side of a local cluster's nodes: a network and a mount namespace of its own, the
cgroups of its kubelets, and the sweep that leaves nothing behind.

Every cluster gets a *slot* s (1..99, kept in ``<data>/cluster.json`` and claimed in
``/run/edgetune-localcluster/slots/<s>`` for as long as its data dir exists), and with it:

- a network namespace (bound to ``/run/edgetune-localcluster/<s>/net``) linked to the host by
  one veth pair: host end ``etlc<s>`` = 10.99.s.1/24 (the API server's address), namespace
  end ``uplink`` = 10.99.s.2/24 (CoreDNS, kube-proxy's health port). Node i has the IP
  10.99.s.(10+i)/32 on an empty bridge ``node<i>`` and its Pods the subnet 10.(100+s).i.0/24
  on the CNI bridge ``cni<i>``. The host routes 10.(100+s).0.0/16 through the veth. The
  namespace has no default route and forwards only between its own bridges: nothing a Pod
  sends can leave the machine, and the host's own network settings are never changed.
  kube-proxy's and the kubelets' iptables rules live in this namespace only.
- a mount namespace (bound to ``/run/edgetune-localcluster/<s>/mnt``) shared by its
  kubelets, containerds and their shims: every mount they make (volumes, overlay root
  filesystems, Pod network namespaces) is invisible to the host and goes away with the
  namespace. Inside it ``/run`` and ``/var/log`` are fresh tmpfs mounts (containerd's state
  and sockets; the kubelet's fixed ``/var/log/containers``), and the six kernel settings the
  kubelet would otherwise rewrite host-wide (vm.overcommit_memory, kernel.panic, ...) are
  shown to it with the values it wants.
- a cgroup root per node, ``/etlc<s>/<node>``, created in every cgroup v1 hierarchy (with
  cpuset.cpus/mems copied from the parent), the kubelet's ``cgroupRoot``.

``sweep()`` kills every process of the cluster's nodes (those in its mount namespace, and
those in its cgroups: containers), removes the cgroups and the namespaces (and with them the
bridges, veths, routes and iptables rules), and the slot's run folder.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

RUN_ROOT = Path("/run/edgetune-localcluster")
SLOTS = RUN_ROOT / "slots"
CGROUP_FS = Path("/sys/fs/cgroup")
MAX_SLOT = 99
# libcni's result cache (containerd's CNI library offers no other place): our files are removed
# on down, and the folder itself if a cluster created it
CNI_CACHE = Path("/var/lib/cni")
CNI_CACHE_MARK = RUN_ROOT / "var-lib-cni-created"
# what the kubelet's setupKernelTunables() wants (it rewrites the host's values otherwise)
KUBELET_SYSCTLS = {"vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10,
                   "kernel/panic_on_oops": 1, "kernel/keys/root_maxkeys": 1000000,
                   "kernel/keys/root_maxbytes": 25000000}


def run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(list(cmd), capture_output=True, text=True, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


class Sandbox:
    def __init__(self, slot: int):
        self.slot = slot
        self.dir = RUN_ROOT / str(slot)
        self.net = self.dir / "net"
        self.mnt = self.dir / "mnt"

    # ------------------------------------------------------------------ addresses
    @property
    def host_ip(self) -> str:
        return f"10.99.{self.slot}.1"

    @property
    def uplink_ip(self) -> str:
        return f"10.99.{self.slot}.2"

    def node_ip(self, i: int) -> str:
        return f"10.99.{self.slot}.{10 + i}"

    @property
    def pod_cidr(self) -> str:
        return f"10.{100 + self.slot}.0.0/16"

    def node_pod_cidr(self, i: int) -> str:
        return f"10.{100 + self.slot}.{i}.0/24"

    @property
    def host_if(self) -> str:
        return f"etlc{self.slot}"

    def cgroup_root(self, node: str) -> str:
        return f"/etlc{self.slot}/{node}"

    # ------------------------------------------------------------------ state
    def exists(self) -> bool:
        return _is_mountpoint(self.net) and _is_mountpoint(self.mnt)

    def ns_inode(self, which: str = "mnt") -> int | None:
        try:
            return os.stat(self.mnt if which == "mnt" else self.net).st_ino if self.exists() else None
        except OSError:
            return None

    def enter(self, *cmd: str) -> list[str]:
        """argv that runs ``cmd`` inside the cluster's network and mount namespaces."""
        return ["nsenter", f"--net={self.net}", f"--mount={self.mnt}", "--", *cmd]

    def run_in(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(*self.enter(*cmd), check=check)

    # ------------------------------------------------------------------ create
    def create(self, n_nodes: int) -> None:
        """Namespaces, veth, node addresses, routes (idempotent: an existing sandbox is swept first)."""
        self.sweep()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not CNI_CACHE.exists():
            CNI_CACHE_MARK.touch()
        for f in (self.net, self.mnt):
            f.touch()
        run("unshare", f"--net={self.net}", f"--mount={self.mnt}", "--propagation", "private", "true")
        # the mount namespace: fresh /run and /var/log, the kubelet's kernel settings
        vals = self.dir / "sysctl"
        vals.mkdir(exist_ok=True)
        script = ["set -e"]
        for key, value in KUBELET_SYSCTLS.items():
            f = vals / key.replace("/", ".")
            f.write_text(f"{value}\n")
            script.append(f"mount --bind -o ro {f} /proc/sys/{key}")
        script += ["mount -t tmpfs -o mode=0755 tmpfs /run", "mount -t tmpfs -o mode=0755 tmpfs /var/log",
                   "mkdir -p /run/edgetune",
                   # the kubelets' fixed device plugin socket folder: this cluster's own, not
                   # the host's shared with every other cluster's kubelets
                   "mkdir -p /var/lib/kubelet/device-plugins",
                   "mount -t tmpfs -o mode=0755 tmpfs /var/lib/kubelet/device-plugins"]
        run("nsenter", f"--mount={self.mnt}", "--", "sh", "-c", "\n".join(script))
        # the network namespace
        s = self.slot
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "uplink", "netns", str(self.net))
        run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        cmds = ["set -e", "ip link set lo up", f"ip addr add {self.uplink_ip}/24 dev uplink", "ip link set uplink up",
                "sysctl -qw net.ipv4.ip_forward=1",
                # forward only between the namespace's own bridges: a Pod reaches other Pods,
                # Services, the nodes and the API server (10.99.s.1, local to the host), nothing else
                "iptables -w -N EDGETUNE-FORWARD",
                "iptables -w -A EDGETUNE-FORWARD -i cni+ -o cni+ -j RETURN",
                "iptables -w -A EDGETUNE-FORWARD -i cni+ -o uplink -d 10.99.%d.1 -j RETURN" % s,
                "iptables -w -A EDGETUNE-FORWARD -i uplink -o cni+ -s 10.99.%d.1 -j RETURN" % s,
                "iptables -w -A EDGETUNE-FORWARD -j DROP",
                "iptables -w -I FORWARD 1 -j EDGETUNE-FORWARD"]
        for i in range(n_nodes):
            cmds += [f"ip link add node{i} type bridge", f"ip addr add {self.node_ip(i)}/32 dev node{i}",
                     f"ip link set node{i} up"]
        run("nsenter", f"--net={self.net}", "--", "sh", "-c", "\n".join(cmds))
        run("ip", "route", "add", self.pod_cidr, "via", self.uplink_ip, "dev", self.host_if)

    # ------------------------------------------------------------------ cgroups
    def create_cgroups(self, nodes: list[str]) -> None:
        for ctrl in _v1_hierarchies(with_unified=False):
            for node in nodes:
                path = ctrl
                for part in self.cgroup_root(node).strip("/").split("/"):
                    parent, path = path, path / part
                    path.mkdir(exist_ok=True)
                    if ctrl.name == "cpuset":
                        for f in ("cpuset.cpus", "cpuset.mems"):
                            if not (path / f).read_text().strip():
                                (path / f).write_text((parent / f).read_text())

    def cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        for ctrl in _v1_hierarchies():
            top = ctrl / f"etlc{self.slot}"
            if top.is_dir():
                for procs in top.rglob("cgroup.procs"):
                    try:
                        pids.update(int(x) for x in procs.read_text().split())
                    except OSError:
                        pass
        return pids

    def remove_cgroups(self) -> list[str]:
        left = []
        for ctrl in _v1_hierarchies():
            top = ctrl / f"etlc{self.slot}"
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) + [top]:
                for _ in range(50):
                    try:
                        d.rmdir()
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.1)  # its last processes are still exiting
                else:
                    left.append(str(d))
        return left

    # ------------------------------------------------------------------ processes
    def ns_pids(self) -> set[int]:
        """Processes in the cluster's mount namespace (kubelets, containerds, shims, ...)."""
        ino = self.ns_inode("mnt")
        if ino is None:
            return set()
        out = set()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    if os.stat(d / "ns" / "mnt").st_ino == ino:
                        out.add(int(d.name))
                except OSError:
                    pass
        return out

    def kill_all(self, timeout: float = 10) -> int:
        """SIGKILL every process of the nodes; returns how many there were."""
        me = os.getpid()
        seen: set[int] = set()
        deadline = time.monotonic() + timeout
        while True:
            pids = (self.ns_pids() | self.cgroup_pids()) - {me}
            pids = {p for p in pids if _alive(p)}
            if not pids:
                return len(seen)
            seen |= pids
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of slot {self.slot} survive SIGKILL: {sorted(pids)}")
            time.sleep(0.05)

    # ------------------------------------------------------------------ sweep
    def sweep(self) -> dict:
        """Remove everything of this slot: processes, cgroups, namespaces, host route/veth."""
        killed = self.kill_all()
        left = self.remove_cgroups()
        for f in (self.net, self.mnt):
            if _is_mountpoint(f):
                run("umount", str(f), check=False)
                if _is_mountpoint(f):
                    run("umount", "-l", str(f), check=False)
        # the veth's host end goes with the namespace; a half-made one may not
        if Path(f"/sys/class/net/{self.host_if}").exists():
            run("ip", "link", "del", self.host_if, check=False)
        for f in CNI_CACHE.glob(f"*/etlc{self.slot}-*"):
            f.unlink(missing_ok=True)
        if CNI_CACHE_MARK.exists() and not any(p for p in RUN_ROOT.iterdir() if p.name.isdigit() and p != self.dir):
            if all(p.is_dir() and not any(p.iterdir()) for p in CNI_CACHE.iterdir()) if CNI_CACHE.exists() else True:
                for p in CNI_CACHE.iterdir() if CNI_CACHE.exists() else []:
                    p.rmdir()
                if CNI_CACHE.exists():
                    CNI_CACHE.rmdir()
                CNI_CACHE_MARK.unlink()
        if self.dir.exists():
            for p in sorted(self.dir.rglob("*"), key=lambda p: -len(p.parts)):
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()
                else:
                    p.unlink()
            self.dir.rmdir()
        return {"killed": killed, "cgroups_left": left}


# ---------------------------------------------------------------------- slots
def claim_slot(data_dir: Path, wanted: int | None) -> int:
    """A slot for ``data_dir``: ``wanted`` (its previous one) if free or already its own,
    else the lowest free one. A slot stays claimed while the data dir that claimed it exists."""
    SLOTS.mkdir(parents=True, exist_ok=True)
    with open(SLOTS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        owners = {}
        for f in SLOTS.iterdir():
            if f.name.isdigit():
                try:
                    owner = json.loads(f.read_text())["data_dir"]
                except (OSError, ValueError, KeyError):
                    owner = ""
                if owner and (Path(owner) / "cluster.json").exists():
                    owners[int(f.name)] = owner
                else:
                    f.unlink(missing_ok=True)  # its cluster is gone
        mine = [s for s, o in owners.items() if o == str(data_dir)]
        if wanted and owners.get(wanted) in (None, str(data_dir)):
            slot = wanted
        elif mine:
            slot = mine[0]
        else:
            free = [s for s in range(1, MAX_SLOT + 1) if s not in owners]
            if not free:
                raise RuntimeError(f"all {MAX_SLOT} local cluster slots are taken: {owners}")
            slot = free[0]
        (SLOTS / str(slot)).write_text(json.dumps({"data_dir": str(data_dir)}))
        return slot


def release_slot(slot: int, data_dir: Path) -> None:
    f = SLOTS / str(slot)
    try:
        if json.loads(f.read_text())["data_dir"] == str(data_dir):
            f.unlink()
    except (OSError, ValueError, KeyError):
        pass


# ---------------------------------------------------------------------- helpers
def _v1_hierarchies(with_unified: bool = True) -> list[Path]:
    """The mounted cgroup v1 hierarchies (and the cgroup2 one of a hybrid setup, where runc
    and the kubelet create the same paths)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields = post.split()
        if fields and (fields[0] == "cgroup" or (with_unified and fields[0] == "cgroup2")):
            out.append(Path(pre.split()[4]))
    return out


def _is_mountpoint(p: Path) -> bool:
    target = str(p)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == target:
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
