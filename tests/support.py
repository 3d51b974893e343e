"""Small helpers shared by the test modules (tests/conftest.py puts this folder on sys.path)."""
from __future__ import annotations

import os
import shutil
import socket
import time
from pathlib import Path

import pytest


def cache_dir() -> Path:
    """Where the installers keep their builds: $EDGETUNE_CACHE, ~/.cache/edgetune by default."""
    return Path(os.environ.get("EDGETUNE_CACHE") or Path.home() / ".cache" / "edgetune")


def tool(name: str) -> str:
    """A tool from scripts/install-tools.sh (cached under $EDGETUNE_CACHE/tools/bin) or PATH.
    Missing: skipped with the reason here, a failure in CI (CI=true) where it must exist."""
    found = shutil.which(name, path=str(cache_dir() / "tools" / "bin")) or shutil.which(name)
    if found:
        return found
    msg = f"{name} not found: run scripts/install-tools.sh (make tools)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn, timeout=60.0, interval=0.25, what="condition", retry: tuple[type[BaseException], ...] = ()):
    """Poll fn until it returns something truthy; exceptions in `retry` count as 'not yet'
    (the last one is reported on time-out)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except retry as exc:
            last = exc
        if last and not isinstance(last, BaseException):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def decoded(text):
    """A result document as the step wrote it (a dict), after checking that the operator's
    typed decoder (edgetune_contract.results.decode) accepts it."""
    import json

    from edgetune_contract import results

    if not isinstance(text, str):
        text = json.dumps(text)
    results.decode(text)
    return json.loads(text)


def tree_digest(folder: Path) -> str:
    """sha256 over a folder's file names and contents (a generator's output, byte for byte)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()
