"""Fetching a dataset (or a checkpoint): download a URL (urllib, atomically), extract a zip/tar
safely, resolve a path (pvc://CLAIM/PATH is PATH under $EDGETUNE_PVC_MOUNT, default
/artifacts, where the operator mounts the claim), or generate the synthetic set."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from ..cli import StepError


class DataError(StepError):
    pass


def not_found(msg: str) -> DataError:
    return DataError("DatasetNotFound", msg)


def invalid(msg: str) -> DataError:
    return DataError("InvalidDataset", msg)


def download(url: str, dest_dir: str | os.PathLike[str], timeout: float = 60.0,
             what: str = "dataset") -> Path:
    """Download url into dest_dir (atomically). Raises DataError(DatasetNotFound)."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(urllib.request.url2pathname(url.split("?")[0].rstrip("/"))) or "download"
    dest = dest_dir / name
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as fh, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, fh, 1 << 20)
        os.replace(tmp, dest)
    except urllib.error.HTTPError as exc:
        raise not_found(f"could not download the {what} from {url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise not_found(f"could not download the {what} from {url}: {reason}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def is_archive(path: Path) -> bool:
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def extract(archive: Path, dest: Path) -> Path:
    """Extract a zip or tar archive safely (no paths outside dest)."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for member in zf.namelist():
                    target = (dest / member).resolve()
                    if root != target and root not in target.parents:
                        raise invalid(f"{archive.name}: unsafe path {member!r} in the archive")
                zf.extractall(dest)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(dest, filter="data")
        else:
            raise invalid(f"{archive.name} is not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        raise invalid(f"{archive.name}: broken archive: {exc}") from None
    return dest


def resolve_path(path: str) -> Path:
    if path.startswith("pvc://"):
        rest = path[len("pvc://"):]
        claim, _, sub = rest.partition("/")
        if not claim:
            raise not_found(f"bad PVC path {path!r}: expected pvc://CLAIM/PATH")
        return Path(os.environ.get("EDGETUNE_PVC_MOUNT", "/artifacts")) / sub
    if path.startswith("file://"):
        return Path(urllib.request.url2pathname(path[len("file://"):]))
    return Path(path)


def fetch(source: str, *, url: str | None = None, path: str | None = None, work_dir: Path,
          generate_images: int = 24, generate_seed: int = 0, generate_size: int = 320) -> Path:
    """The local folder that holds the dataset (downloaded/extracted/generated as needed)."""
    if source == "url":
        if not url:
            raise DataError("InvalidInput", "--dataset-url is required with --dataset-source url")
        archive = download(url, work_dir / "download")
        if not is_archive(archive):
            raise invalid(f"{url} is not a zip or tar archive")
        return extract(archive, work_dir / "extracted")
    if source == "path":
        if not path:
            raise DataError("InvalidInput", "--dataset-path is required with --dataset-source path")
        p = resolve_path(path)
        if not p.exists():
            raise not_found(f"dataset path {path} does not exist")
        if p.is_file():
            if not is_archive(p):
                raise invalid(f"dataset path {path} is a file but not a zip or tar archive")
            return extract(p, work_dir / "extracted")
        return p
    if source == "generate":
        from . import generate
        target = work_dir / "generated"
        if target.exists():
            shutil.rmtree(target)
        generate.generate(target, images=generate_images, seed=generate_seed, size=generate_size)
        return target
    raise DataError("InvalidInput", f"unknown dataset source {source!r} (url, path, generate)")
