"""The local cluster's image cache and the disk: how many builds stay, an import that cannot
fit is refused with the figures, and a failed build quotes its own output and the free space
(CI once saw only 'building trainer-cpu failed (125)', its cause cut off)."""
from __future__ import annotations

import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from edgetune_localcluster import images

Usage = namedtuple("Usage", "total used free")
GiB = 2**30


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETUNE_CACHE", str(tmp_path))
    (tmp_path / "images").mkdir()
    calls: list[tuple[str, ...]] = []

    def fake_buildah(*args, **kw):
        calls.append(args)
        if kw.get("stdout") is not None:
            kw["stdout"].write("STEP 8/17: RUN pip install\nERROR: No space left on device\n")
            return images.subprocess.CompletedProcess(args, 125)
        return images.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(images, "buildah", fake_buildah)
    return tmp_path / "images", calls


def tarball(d: Path, name: str, age: int) -> Path:
    t = d / f"{name}.tar"
    t.write_bytes(b"x")
    t.with_suffix(".json").write_text("{}")
    os.utime(t, (1_000_000 - age, 1_000_000 - age))
    return t


def test_prune_keeps_the_current_build_and_the_newest_others(cache):
    d, calls = cache
    current = tarball(d, "trainer-cpu-cccccccccccc", age=500)  # older mtime than the others: still kept
    newer = tarball(d, "trainer-cpu-bbbbbbbbbbbb", age=10)
    older = tarball(d, "trainer-cpu-aaaaaaaaaaaa", age=20)
    other_image = tarball(d, "trainer-cpu-edge-dddddddddddd", age=30)  # another image's name
    images._prune("localhost/edgetune/trainer-cpu:cccccccccccc", keep=1)
    assert current.exists() and newer.exists() and not older.exists() and other_image.exists()
    assert not older.with_suffix(".json").exists()
    assert calls == [("rmi", "localhost/edgetune/trainer-cpu:aaaaaaaaaaaa")]
    images._prune("localhost/edgetune/trainer-cpu:cccccccccccc", keep=0)
    assert current.exists() and not newer.exists() and other_image.exists()


def test_the_ml_image_keeps_one_build_and_drops_the_old_before_writing_the_new(cache, monkeypatch):
    """The old tarball (gigabytes) is gone before the new one is written: never both."""
    d, calls = cache
    old = tarball(d, "trainer-cpu-aaaaaaaaaaaa", age=10)
    seen = []

    def push(*args, **kw):
        calls.append(args)
        if args[0] == "push":
            seen.append(old.exists())
            Path(args[2].split(":")[1]).write_bytes(b"new")
        return images.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(images, "buildah", push)
    images._finish("localhost/edgetune/trainer-cpu:bbbbbbbbbbbb", 0.0, "test", keep_builds=1)
    assert seen == [False] and not old.exists()
    assert (d / "trainer-cpu-bbbbbbbbbbbb.tar").read_bytes() == b"new"


def test_an_import_that_cannot_fit_is_refused_with_the_figures(tmp_path, monkeypatch):
    tar = tmp_path / "trainer-cpu-aaaa.tar"
    with open(tar, "wb") as f:
        f.truncate(6 * GiB)  # sparse: its size, not its blocks
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(100 * GiB, 95 * GiB, 5 * GiB))
    with pytest.raises(RuntimeError) as err:
        images.check_room(tar, tmp_path / "cluster" / "nodes", "node gpu-0")
    msg = str(err.value)
    assert "not enough disk" in msg and "node gpu-0" in msg and "5.0 GiB free" in msg and "8.0 GiB needed" in msg
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(100 * GiB, 91 * GiB, 9 * GiB))
    images.check_room(tar, tmp_path / "cluster" / "nodes", "node gpu-0")  # 6 + 1 + 1 fits in 9


def test_a_failed_build_quotes_its_output_and_the_free_space(cache, tmp_path):
    d, _ = cache
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    with pytest.raises(RuntimeError) as err:
        images.build_dockerfile("trainer-cpu", dockerfile, tmp_path, [], {}, layers=True, keep_builds=1)
    msg = str(err.value)
    assert "building trainer-cpu failed (125)" in msg
    assert "No space left on device" in msg and "GiB free on the file system of" in msg
    assert "No space left on device" in (d / "logs" / "trainer-cpu.log").read_text()


def test_a_layered_build_removes_the_layer_cache_of_earlier_builds_only(cache, monkeypatch):
    d, calls = cache
    ours_reused, ours_new, theirs = "a" * 64, "b" * 64, "c" * 64
    log = d / "trainer-cpu.log"
    log.write_text(f"[1/2] STEP 2/17: ARG X\n--> Using cache {ours_reused}\n--> {ours_reused[:11]}\n"
                   f"[2/2] STEP 9/20: RUN pip install .\n--> {ours_new[:11]}\n"
                   "Successfully tagged localhost/edgetune/trainer-cpu:abc\n")

    def fake(*args, **kw):
        calls.append(args)
        listed = [{"id": f"sha256:{i}", "names": None} for i in (ours_reused, ours_new, theirs)]
        listed.append({"id": "d" * 64, "names": ["localhost/edgetune/base:abc"]})  # tagged: never removed
        out = images.json.dumps(listed) if args[0] == "images" else ""
        return images.subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(images, "buildah", fake)
    images._prune_layer_cache(log)
    assert calls[-1] == ("rmi", "-f", theirs)
    calls.clear()
    log.write_text("an output of another form\n")  # nothing to tell ours from theirs: keep all
    images._prune_layer_cache(log)
    assert calls == []


def test_the_storage_is_emptied_once_per_generation_and_the_tarballs_stay(cache):
    d, calls = cache
    (d / "buildah" / "root").mkdir(parents=True)
    tar = tarball(d, "base-aaaaaaaaaaaa", age=1)
    images._renew_storage_once()
    assert ("rmi", "--all", "--force") in calls and tar.exists()
    assert (d / "buildah" / "generation").read_text().strip() == images.STORAGE_GENERATION
    calls.clear()
    images._renew_storage_once()
    assert calls == []
