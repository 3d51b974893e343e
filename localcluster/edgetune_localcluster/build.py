"""Build (once) and locate the multi-call control-plane binary ``edgetune-k8s``.

The binary lives in ``${EDGETUNE_CACHE:-~/.cache/edgetune}/localcluster/bin/edgetune-k8s-<stamp>``.
The stamp is a hash of everything that decides its content (go.mod, go.sum, the Go sources,
the Go toolchain version and the build flags), so a fresh clone on the same machine reuses
it and any change to the pinned release rebuilds it. The Go build cache for it is kept in
the same cache folder (``.../localcluster/gocache``) so that a rebuild after a small change
only relinks.
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

MODULE_DIR = Path(__file__).resolve().parent.parent  # localcluster/
BINARY_NAME = "edgetune-k8s"


def k8s_version() -> str:
    """The k8s.io/kubernetes release go.mod pins (e.g. v1.37.2)."""
    for line in (MODULE_DIR / "go.mod").read_text().splitlines():
        parts = line.replace("require", "").split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise RuntimeError("k8s.io/kubernetes not found in localcluster/go.mod")


def _version_ldflags() -> str:
    # what the upstream build (hack/lib/version.sh) stamps in: kubectl version, /version, the
    # components' --version report the pinned release instead of v0.0.0-master
    v = k8s_version()
    major, minor = v.lstrip("v").split(".")[:2]
    out = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        out += [f"-X {pkg}.gitVersion={v}", f"-X {pkg}.gitMajor={major}", f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean", f"-X {pkg}.gitCommit="]
    return " ".join(out)


LDFLAGS = "-s -w " + _version_ldflags()
BUILD_FLAGS = ["-trimpath"]


def cache_dir() -> Path:
    base = os.environ.get("EDGETUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgetune")
    return Path(base) / "localcluster"


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        for cand in ("/usr/local/go/bin/go", "/usr/lib/go/bin/go"):
            if os.path.exists(cand):
                return cand
        raise RuntimeError("the Go toolchain (go) is needed to build the local cluster; not found on PATH")
    return go


def go_version() -> str:
    return subprocess.run([_go(), "env", "GOVERSION"], capture_output=True, text=True, check=True).stdout.strip()


def stamp() -> str:
    h = hashlib.sha256()
    files = [MODULE_DIR / "go.mod", MODULE_DIR / "go.sum"]
    files += sorted((MODULE_DIR / "cmd" / BINARY_NAME).rglob("*.go"))
    for f in files:
        h.update(str(f.relative_to(MODULE_DIR)).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    h.update(go_version().encode())
    h.update(" ".join(BUILD_FLAGS + [LDFLAGS, "CGO_ENABLED=0"]).encode())
    return h.hexdigest()[:16]


def binary_path(st: str | None = None) -> Path:
    return cache_dir() / "bin" / f"{BINARY_NAME}-{st or stamp()}"


def _log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def ensure_binary(force: bool = False) -> Path:
    """Return the path of an up-to-date binary, building it first if needed."""
    st = stamp()
    path = binary_path(st)
    if path.exists() and not force:
        return path
    cdir = cache_dir()
    (cdir / "bin").mkdir(parents=True, exist_ok=True)
    with open(cdir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time (parallel test runs, CI)
        if path.exists() and not force:
            return path
        gocache = cdir / "gocache"
        cold = not gocache.exists() or not any(gocache.iterdir())
        env = dict(os.environ, GOFLAGS="-mod=mod", CGO_ENABLED="0", GOCACHE=str(gocache))
        tmp = path.with_name(path.name + ".tmp")
        cmd = [_go(), "build", *BUILD_FLAGS, "-ldflags", f"{LDFLAGS} -X main.stamp={st}", "-o", str(tmp), "./cmd/edgetune-k8s"]
        _log(f"building {BINARY_NAME} (stamp {st}, {'cold' if cold else 'warm'} Go cache {gocache}); "
             "from a cold cache this takes a long time")
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=MODULE_DIR, env=env)
        secs = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"go build failed (exit {proc.returncode}): {' '.join(cmd)}")
        os.replace(tmp, path)
        size = path.stat().st_size
        info = {"stamp": st, "seconds": round(secs, 1), "cold_go_cache": cold, "bytes": size,
                "go": go_version(), "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (cdir / "bin" / f"{path.name}.json").write_text(json.dumps(info, indent=1) + "\n")
        _log(f"built {path} in {secs:.0f}s ({'cold' if cold else 'warm'} Go cache), size {size / 2**20:.1f} MiB")
        # keep the cache small: drop binaries of other stamps, but the two newest (checkouts of
        # neighbouring commits on one machine, e.g. a worktree, share the cache)
        others = sorted((p for p in (cdir / "bin").glob(f"{BINARY_NAME}-*")
                         if not p.name.startswith(path.name) and not p.name.endswith((".json", ".tmp"))),
                        key=lambda p: p.stat().st_mtime, reverse=True)
        for old in others[2:]:
            for f in (old, old.with_name(old.name + ".json")):
                try:
                    f.unlink()
                except OSError:
                    pass
    return path


def build_info() -> dict | None:
    p = binary_path()
    j = p.with_name(p.name + ".json")
    if j.exists():
        return json.loads(j.read_text())
    return None
