"""Container images built on this machine and loaded into every node (no registry is reachable).

- ``base``: Debian bookworm (``mmdebstrap --variant=minbase`` from the Debian archive this
  machine's apt uses, the suite pinned here) with python3 (3.11, matching the project's cp311
  wheels), python3-venv, python-is-python3 and ca-certificates. It stands in for
  ``python:3.11-slim-bookworm``, the images' production base, which cannot be pulled here.
- ``pause``: the Pod sandbox image, ``cmd/pause`` (stdlib Go) alone in a scratch image, UID 65535.
- more (the operator and job images) from the Dockerfiles in ``images/``: see ``build_dockerfile``.

Builder: buildah (Debian's package, Apache-2.0) — it builds Dockerfiles without a daemon, as
root, with its own storage under ``${EDGETUNE_CACHE}/images/buildah``; an image becomes a
``docker-archive`` tarball ``${EDGETUNE_CACHE}/images/<name>-<hash>.tar`` that
``ctr images import`` loads into each node's containerd. An image's tag is the hash of its
recipe (for the base: suite, packages, the archive's sources, mmdebstrap's version; for a
Dockerfile build: the Dockerfile, the files it copies, the build args and the parent image's
tag), so a changed recipe builds a new image and an unchanged one is reused from the cache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import build

SUITE = "bookworm"
BASE_PACKAGES = ["python3", "python3-venv", "python-is-python3", "ca-certificates"]
REPO = "localhost/edgetune"


def _log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


def images_dir() -> Path:
    base = os.environ.get("EDGETUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgetune")
    return Path(base) / "images"


def archive_path(ref: str) -> Path:
    """``localhost/edgetune/base:abc`` -> ``<cache>/images/base-abc.tar``."""
    name, tag = ref.rsplit("/", 1)[1].split(":")
    return images_dir() / f"{name}-{tag}.tar"


def buildah(*args: str, check: bool = True, capture: bool = True, cwd: str | None = None,
            stdout=None) -> subprocess.CompletedProcess:
    """``stdout``: a file for the output, stderr included, when it is not captured."""
    d = images_dir() / "buildah"
    cmd = ["buildah", "--root", str(d / "root"), "--runroot", str(d / "runroot"), "--storage-driver", "overlay",
           *args]
    if capture:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    else:
        p = subprocess.run(cmd, text=True, cwd=cwd, stdout=stdout, stderr=subprocess.STDOUT if stdout else None)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{(p.stderr or '')[-4000:]}")
    return p


def _existing(path: Path) -> Path:
    """``path`` or its nearest folder that exists (what disk_usage can be asked about)."""
    while not path.exists():
        path = path.parent
    return path


def disk_report(path: Path | None = None) -> str:
    """Free space at ``path`` (default: where the images live), for an error message: a build,
    an import or a server that fails for want of it says so."""
    path = _existing(path or images_dir())
    return f"{shutil.disk_usage(path).free / 2**30:.1f} GiB free on the file system of {path}"


def check_room(tar: Path, where: Path, what: str) -> None:
    """Refuse to unpack ``tar`` under ``where`` unless its size fits with the kubelet's margin
    (an image takes about its tarball's size unpacked; the local cluster's kubelets evict and
    taint at 1 % free): a clear error here, not DiskPressure taints and failed Pods later."""
    where = _existing(where)
    usage = shutil.disk_usage(where)
    need = tar.stat().st_size + usage.total // 100 + 2**30
    if usage.free < need:
        raise RuntimeError(f"not enough disk to load {tar.name} into {what}: {usage.free / 2**30:.1f} GiB free on "
                           f"the file system of {where}, {need / 2**30:.1f} GiB needed (the image, 1 % that the "
                           "kubelet keeps free, 1 GiB of margin); stop other local clusters (make cluster-down, "
                           "make demo-down) or free space there")


def tail(log: Path, lines: int = 40, offset: int = 0) -> str:
    """The last ``lines`` of a log from byte ``offset`` on (a log appended to by several runs:
    the last run's part), for an error message."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc})"


def _h(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


class _Lock:
    def __init__(self, name: str):
        images_dir().mkdir(parents=True, exist_ok=True)
        self.path = images_dir() / f".{name}.lock"

    def __enter__(self):
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        self.fh.close()


def _finish(ref: str, t0: float, what: str, keep_builds: int = 2) -> str:
    """Write the image as a docker-archive tarball (+ figures), drop the working container.
    Older builds beyond ``keep_builds`` go first, so that their tarballs and the new one are
    never on the disk together."""
    _prune(ref, keep_builds - 1)
    tar = archive_path(ref)
    tmp = tar.with_name(tar.name + ".tmp")
    tmp.unlink(missing_ok=True)
    buildah("push", ref, f"docker-archive:{tmp}:{ref}")
    os.replace(tmp, tar)
    info = {"ref": ref, "what": what, "seconds": round(time.monotonic() - t0, 1), "bytes": tar.stat().st_size,
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tar.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    _log(f"built image {ref} ({what}) in {info['seconds']:.0f}s, {info['bytes'] / 2**20:.1f} MiB")
    return ref


def _prune(ref: str, keep: int = 1) -> None:
    """Keep ``ref`` and the newest ``keep`` other builds of an image (tarball and buildah storage)."""
    name, current = ref.rsplit("/", 1)[1].split(":")
    tars = sorted((t for t in images_dir().glob(f"{name}-*.tar") if t.stem != f"{name}-{current}"),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in tars[keep:]:
        tag = old.stem[len(name) + 1:]
        if "-" in tag:  # another image whose name starts like this one
            continue
        buildah("rmi", f"{REPO}/{name}:{tag}", check=False)
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)


def _have(ref: str) -> bool:
    """The image is built: its tarball exists and it is in buildah's storage (the parent of
    the next build). A tarball that outlived the storage (pruned to free disk, a fresh
    storage) is loaded back -- seconds, where building it again takes up to 12 minutes."""
    tar = archive_path(ref)
    if not tar.exists():
        return False
    if _in_storage(ref):
        return True
    _log(f"loading {ref} from {tar} into buildah's storage")
    return buildah("pull", "--quiet", f"docker-archive:{tar}", check=False).returncode == 0 and _in_storage(ref)


def _in_storage(ref: str) -> bool:
    return buildah("inspect", "--type", "image", ref, check=False).returncode == 0


def _debian_sources() -> str:
    """This machine's apt sources for Debian (deb822 or one-line), with its codename replaced
    by the pinned suite: the image comes from the same archive as the machine's packages."""
    texts = []
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        if f.is_file() and (f.name == "sources.list" or f.suffix in (".list", ".sources")):
            t = f.read_text()
            if "debian" in t:
                texts.append((f.suffix or ".list", t))
    if not texts:
        raise RuntimeError("no Debian apt sources on this machine (/etc/apt/sources.list[.d])")
    codename = ""
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            codename = line.split("=", 1)[1].strip().strip('"')
    out = []
    for _, t in texts:
        if codename and codename != SUITE:
            t = re.sub(rf"\b{codename}\b", SUITE, t)
        out.append(t)
    return "\n".join(out)


def base_image() -> str:
    sources = _debian_sources()
    mmv = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True).stdout.strip()
    ref = f"{REPO}/base:{_h(SUITE, ' '.join(BASE_PACKAGES), sources, mmv)}"
    with _Lock("base"):
        if _have(ref):
            return ref
        t0 = time.monotonic()
        d = images_dir() / "work"
        d.mkdir(parents=True, exist_ok=True)
        src = d / "debian.sources" if "Types:" in sources else d / "sources.list"
        src.write_text(sources)
        rootfs = d / "base-rootfs.tar"
        _log(f"making the Debian {SUITE} base image with mmdebstrap (about a minute)")
        subprocess.run(["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                        "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                        "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                        "--skip=output/dev", "--quiet", SUITE, str(rootfs), str(src)], check=True)
        c = buildah("from", "scratch").stdout.strip()
        try:
            buildah("add", c, str(rootfs), "/")
            buildah("config", "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env", "LANG=C.UTF-8", "--cmd", "/bin/bash", "--label", f"org.edgetune.debian-suite={SUITE}", c)
            buildah("commit", "--format", "docker", "--rm", c, ref)
        except BaseException:
            buildah("rm", c, check=False)
            raise
        rootfs.unlink()
        return _finish(ref, t0, f"Debian {SUITE} minbase + {' '.join(BASE_PACKAGES)}")


def pause_image(pause_binary: Path) -> str:
    ref = f"{REPO}/pause:{_h(pause_binary.read_bytes())}"
    with _Lock("pause"):
        if _have(ref):
            return ref
        t0 = time.monotonic()
        c = buildah("from", "scratch").stdout.strip()
        try:
            buildah("copy", "--chmod", "0755", c, str(pause_binary), "/pause")
            buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", c)
            buildah("commit", "--format", "docker", "--rm", c, ref)
        except BaseException:
            buildah("rm", c, check=False)
            raise
        return _finish(ref, t0, "Pod sandbox (cmd/pause)")


def build_dockerfile(name: str, dockerfile: Path, context: Path, files: list[Path], build_args: dict[str, str],
                     volumes: list[str] = (), network: str = "none", keep: bool = True,
                     layers: bool = False, keep_builds: int = 2) -> str:
    """Build ``dockerfile`` with buildah; the tag hashes the Dockerfile, ``files`` (what it
    copies from ``context``), the build args (parent images by their tags) and the volumes.
    ``keep=False``: only the tarball stays (no image is built FROM it; saves its size in
    buildah's storage). ``layers=True``: buildah keeps each instruction's layer and reuses
    it while the instructions and files before it are unchanged (a code change then rebuilds
    only the layers from its COPY on, not the pip install of the ML stack). ``keep_builds``:
    how many builds' tarballs stay, this one included (the multi-gigabyte ones keep one)."""
    h = hashlib.sha256()
    h.update(dockerfile.read_bytes())
    for f in sorted(files):
        rel = str(f.relative_to(context)) if f.is_relative_to(context) else f.name
        h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(json.dumps([sorted(build_args.items()), list(volumes), network]).encode())
    ref = f"{REPO}/{name}:{h.hexdigest()[:12]}"
    with _Lock(name):
        if archive_path(ref).exists() and (not keep or _have(ref)):
            return ref
        t0 = time.monotonic()
        log = images_dir() / "logs" / f"{name}.log"
        _log(f"building image {name} from {dockerfile.relative_to(context)} with buildah (output: {log})")
        args = ["bud", "--pull=never", f"--layers={str(layers).lower()}", "--force-rm", "--format", "docker",
                f"--network={network}",
                "-f", str(dockerfile), "-t", ref]
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        if ignore.exists():
            args += ["--ignorefile", str(ignore)]
        for k, v in build_args.items():
            args += ["--build-arg", f"{k}={v}"]
        for v in volumes:
            args += ["--volume", v]
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:  # the whole output stays there; an error quotes its end
            p = buildah(*args, str(context), capture=False, cwd=str(context), check=False, stdout=out)
        if not layers:
            buildah("rmi", "--prune", check=False)  # the build stages' images
        if p.returncode != 0:
            raise RuntimeError(f"building {name} failed ({p.returncode}); {disk_report()}; "
                               f"the last lines of {log}:\n{tail(log)}")
        if layers:
            _prune_layer_cache(log)
        _finish(ref, t0, f"{dockerfile.relative_to(context)}", keep_builds=keep_builds if keep else 1)
        if not keep:
            buildah("rmi", ref, check=False)
        return ref


def wheelhouse() -> Path:
    """The project's wheelhouse (scripts/install-ml.sh fills it with requirements/ml.txt);
    requirements/base.txt is added here once, for the image builds (no index inside them)."""
    base = os.environ.get("EDGETUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgetune")
    return Path(base) / "wheels"


def ensure_wheels(*requirements: Path) -> Path:
    pypi = wheelhouse() / "pypi"
    pypi.mkdir(parents=True, exist_ok=True)
    reqs = [a for r in requirements for a in ("-r", str(r))]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    check = subprocess.run(pip + ["install", "--dry-run", "-q", "--ignore-installed", "--no-index", "--find-links",
                                  str(pypi), *reqs], capture_output=True, text=True)
    if check.returncode != 0:
        _log(f"fetching the wheels of {' '.join(r.name for r in requirements)} into {pypi}")
        subprocess.run(pip + ["wheel", "-q", "-w", str(pypi), *reqs], check=True)
    return pypi


def _tree(root: Path, *paths: str) -> list[Path]:
    out = []
    for p in paths:
        q = root / p
        if q.is_file():
            out.append(q)
        else:
            out += [f for f in q.rglob("*") if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc"]
    return out


def operator_image(base: str) -> str:
    """images/operator/Dockerfile on the local base, pip from the wheelhouse."""
    root = build.MODULE_DIR.parent
    ensure_wheels(root / "requirements" / "base.txt")
    files = _tree(root, "requirements/base.txt", "pyproject.toml", "contract/edgetune_contract",
                  "operator/edgetune_operator")
    return build_dockerfile("operator", root / "images" / "operator" / "Dockerfile", root, files,
                            {"PYTHON_IMAGE": base, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels/pypi"},
                            volumes=[f"{wheelhouse()}:/wheels:ro"])


def trainer_cpu_image(base: str) -> str:
    """images/trainer-cpu/Dockerfile on the local base: the ML stack from the wheelhouse
    (scripts/install-ml.sh fills it and caches the mmcv wheel next to it), apt for opencv's
    libraries (the build's only network use: Debian's archive)."""
    root = build.MODULE_DIR.parent
    ensure_wheels(root / "requirements" / "base.txt", root / "requirements" / "ml.txt")
    mmcv = sorted(wheelhouse().glob("cp311-torch*/mmcv-*.whl"))
    if not mmcv:
        raise RuntimeError(f"no cached mmcv wheel in {wheelhouse()}/cp311-torch*/: run scripts/install-ml.sh first")
    links = f"/wheels/pypi /wheels/{mmcv[-1].parent.name}"
    files = _tree(root, "requirements/base.txt", "requirements/ml.txt", "pyproject.toml", "contract/edgetune_contract",
                  "jobs/edgetune_jobs") + [mmcv[-1]]
    return build_dockerfile("trainer-cpu", root / "images" / "trainer-cpu" / "Dockerfile", root, files,
                            {"PYTHON_IMAGE": base, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": links},
                            volumes=[f"{wheelhouse()}:/wheels:ro"], network="host", layers=True, keep_builds=1)


def _prune_layer_cache(log: Path) -> None:
    """Remove the layer cache of earlier layered builds; keep this build's. Every step of a
    ``--layers`` build is an untagged image, and a changed step leaves the old chain behind:
    with nothing removing it, each change of the ML stack (and, before the project moved to
    the last layer, each change of its code) left gigabytes in the storage for good. This
    build's images are the ones its output names ('--> Using cache <id>', '--> <id>')."""
    ours = set(re.findall(r"^--> (?:Using cache )?([0-9a-f]{11,64})\s*$", log.read_text(errors="replace"), re.M))
    if not ours:  # an output we cannot read: keep everything rather than guess
        return
    listed = json.loads(buildah("images", "--all", "--no-trunc", "--json", check=False).stdout or "[]")
    # untagged: the steps' images of layered builds ("dangling" in buildah means only the
    # leaves among them)
    untagged = [i["id"].removeprefix("sha256:") for i in listed if not i.get("names")]
    stale = [i for i in untagged if not any(i.startswith(o) for o in ours)]
    if stale:
        buildah("rmi", "-f", *stale, check=False)
        _log(f"removed {len(stale)} cached layer images of earlier builds")


# Raised when the storage's contents from earlier versions of this module must go: 2 = the
# layer caches leaked before _prune_layer_cache (gigabytes per change of the project's code).
STORAGE_GENERATION = "2"


def _renew_storage_once() -> None:
    """Empty buildah's storage once per STORAGE_GENERATION. The tarballs stay, and ``_have``
    loads each one back when it is needed (seconds)."""
    stamp = images_dir() / "buildah" / "generation"
    if stamp.exists() and stamp.read_text().strip() == STORAGE_GENERATION:
        return
    if (images_dir() / "buildah" / "root").exists():
        _log(f"emptying buildah's storage (generation {STORAGE_GENERATION}: earlier builds' layers leaked)")
        buildah("rm", "--all", check=False)
        buildah("rmi", "--all", "--force", check=False)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(STORAGE_GENERATION + "\n")


def ensure_node_images(tools: dict[str, Path]) -> dict[str, str]:
    """The images every node gets: ``pause`` (the sandbox) and ``base`` (Debian + Python)."""
    with _Lock("storage"):
        _renew_storage_once()
    return {"pause": pause_image(tools["pause"]), "base": base_image()}


def figures() -> dict[str, dict]:
    return {j.stem: json.loads(j.read_text()) for j in sorted(images_dir().glob("*.json"))}


if __name__ == "__main__":  # python -m edgetune_localcluster.images: build the node images
    from . import tools as _tools
    print(json.dumps(ensure_node_images(_tools.ensure_all()), indent=1))
    _ = build
