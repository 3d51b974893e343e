"""What the real nodes need besides the Kubernetes binary, installed (once) by the project itself.

- Debian packages (``apt-get``): runc, the CNI plugins (bridge, host-local, portmap, loopback),
  iptables and conntrack (kube-proxy), buildah and mmdebstrap (the images, see images.py).
- Built from the Go module proxy, cached in ``${EDGETUNE_CACHE}/localcluster/tools/`` under a
  version stamp (module version, Go version, build flags):
  containerd v2 (``containerd``, ``ctr``, ``containerd-shim-runc-v2``) and CoreDNS.
- Built from this folder: ``edgetune-pause`` (cmd/pause), the Pod sandbox's process, which
  becomes the sandbox image (registry.k8s.io/pause cannot be pulled here).

Licences: containerd, CoreDNS, runc, the CNI plugins and buildah are Apache-2.0; iptables and
conntrack GPL-2.0; mmdebstrap MIT.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import build

CONTAINERD_MODULE = "github.com/containerd/containerd/v2"
CONTAINERD_VERSION = "v2.4.2"
COREDNS_MODULE = "github.com/coredns/coredns"
COREDNS_VERSION = "v1.15.0"
GO_LDFLAGS = "-s -w"

# Debian package -> a file it installs that we use
APT_PACKAGES = {
    "runc": "/usr/sbin/runc",
    "containernetworking-plugins": "/usr/lib/cni/bridge",
    "iptables": "/usr/sbin/iptables",
    "conntrack": "/usr/sbin/conntrack",
    "buildah": "/usr/bin/buildah",
    "mmdebstrap": "/usr/bin/mmdebstrap",
}
CNI_BIN_DIR = "/usr/lib/cni"
RUNC = "/usr/sbin/runc"


def _log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def tools_dir() -> Path:
    return build.cache_dir() / "tools"


def ensure_apt_packages() -> None:
    """Install the Debian packages the nodes need (``apt-get``, as root, once)."""
    missing = [p for p, f in APT_PACKAGES.items() if not os.path.exists(f)]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise RuntimeError(f"the local cluster's nodes need the Debian packages {missing}; no apt-get here")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _log(f"apt-get install {' '.join(missing)}")
    lock = build.cache_dir() / "apt.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        subprocess.run(sudo + ["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing], check=True,
                       env=env, stdout=subprocess.DEVNULL)
    still = [p for p, f in APT_PACKAGES.items() if not os.path.exists(f)]
    if still:
        raise RuntimeError(f"apt-get did not install {still}")


def _stamp(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts + (build.go_version(), GO_LDFLAGS, "CGO_ENABLED=0", "-trimpath"):
        h.update(p.encode() + b"\0")
    return h.hexdigest()[:12]


def _go_install(dest: Path, packages: list[str], what: str) -> None:
    """``go install pkg@version ...`` into ``dest`` (atomically, under a lock), with timing."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if dest.exists():
            return
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "bin").mkdir(parents=True)
        env = dict(os.environ, GOBIN=str(tmp / "bin"), CGO_ENABLED="0", GOFLAGS="",
                   GOCACHE=str(build.cache_dir() / "tools-gocache"))
        _log(f"building {what} from the Go module proxy (a few minutes the first time)")
        t0 = time.monotonic()
        proc = subprocess.run([build._go(), "install", "-trimpath", "-ldflags", GO_LDFLAGS, *packages],
                              env=env, cwd=tmp)
        if proc.returncode != 0:
            raise RuntimeError(f"building {what} failed (exit {proc.returncode})")
        secs = time.monotonic() - t0
        size = sum(f.stat().st_size for f in (tmp / "bin").iterdir())
        (tmp / "build.json").write_text(json.dumps({"what": what, "seconds": round(secs, 1), "bytes": size,
                                                    "go": build.go_version(),
                                                    "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=1) + "\n")
        os.replace(tmp, dest)
        _log(f"built {what} in {secs:.0f}s, {size / 2**20:.1f} MiB -> {dest}")


def containerd_dir() -> Path:
    """Folder holding bin/containerd, bin/ctr, bin/containerd-shim-runc-v2."""
    v = CONTAINERD_VERSION
    d = tools_dir() / f"containerd-{v}-{_stamp(CONTAINERD_MODULE, v)}"
    _go_install(d, [f"{CONTAINERD_MODULE}/cmd/{c}@{v}" for c in ("containerd", "ctr", "containerd-shim-runc-v2")],
                f"containerd {v}")
    return d


def coredns_binary() -> Path:
    v = COREDNS_VERSION
    d = tools_dir() / f"coredns-{v}-{_stamp(COREDNS_MODULE, v)}"
    _go_install(d, [f"{COREDNS_MODULE}@{v}"], f"CoreDNS {v}")
    return d / "bin" / "coredns"


def pause_binary() -> Path:
    """cmd/pause built from this folder (stdlib only): the Pod sandbox's PID 1."""
    src = build.MODULE_DIR / "cmd" / "pause" / "main.go"
    st = hashlib.sha256(src.read_bytes() + build.go_version().encode()).hexdigest()[:12]
    d = tools_dir() / f"pause-{st}"
    path = d / "bin" / "edgetune-pause"
    if path.exists():
        return path
    (d / "bin").mkdir(parents=True, exist_ok=True)
    with open(d / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds at once (parallel make targets, test runs)
        if path.exists():
            return path
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod", GOCACHE=str(build.cache_dir() / "gocache"))
        subprocess.run([build._go(), "build", "-trimpath", "-ldflags", GO_LDFLAGS, "-o", str(path) + ".tmp",
                        "./cmd/pause"], cwd=build.MODULE_DIR, env=env, check=True)
        os.replace(str(path) + ".tmp", path)
    return path


def ensure_all() -> dict[str, Path]:
    """Everything the nodes need; returns the paths used by the launcher."""
    ensure_apt_packages()
    c = containerd_dir()
    return {"containerd": c / "bin" / "containerd", "ctr": c / "bin" / "ctr",
            "shim": c / "bin" / "containerd-shim-runc-v2", "coredns": coredns_binary(),
            "pause": pause_binary(), "runc": Path(RUNC), "cni_bin": Path(CNI_BIN_DIR)}


def build_figures() -> dict[str, dict]:
    out = {}
    for d in sorted(tools_dir().glob("*/build.json")):
        out[d.parent.name] = json.loads(d.read_text())
    return out
