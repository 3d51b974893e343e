"""Moving a step's artifacts through object storage (the operator's S3 mode, spec.artifacts.s3).

Before the step runs, every input argument that is an s3:// URI (the fields its arguments
class marks artifact=True) is downloaded to the Pod's scratch volume and replaced by the local
path. An artifact in the operator's layout under $EDGETUNE_S3_ROOT (<ns>/<kind>/<name>/<step>/)
is read through that step's manifest (edgetune-manifest.json: every object's path, size and
sha256, written last): an object missing from it or differing from it fails the step with
ArtifactCorrupted, a set without a manifest (a step killed mid-upload) with ArtifactMissing —
nothing runs on a partial set. Objects a user put elsewhere (a dataset archive, a checkpoint)
have no manifest and are taken as they are.

After the step succeeds, everything in its output folder (but its work/ folder) is uploaded
under $EDGETUNE_ARTIFACT_URI, then the manifest. The seconds and bytes of both directions go
into the result's provenance["transfer"].
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgetune_contract import store as contract
from edgetune_contract.cliargs import StepArgs

from .s3 import S3, StoreError

PROVENANCE_SIDECAR = ".provenance.json"  # training.base_model.sidecar_path's suffix

SKIP_DIRS = {"work"}    # a step's scratch (mmengine logs, downloads): not an artifact


@dataclasses.dataclass
class TransferStats:
    seconds: float = 0.0
    bytes: int = 0
    objects: int = 0

    def add(self, size: int, seconds: float = 0.0) -> None:
        self.bytes += size
        self.objects += 1
        self.seconds += seconds


class Transfer:
    def __init__(self, s3: S3, upload_uri: str, root: str = ""):
        self.s3 = s3
        self.upload_uri = upload_uri.rstrip("/")
        self.root = root
        self.down, self.up = TransferStats(), TransferStats()
        self._manifests: Dict[Tuple[str, str], Optional[Dict[str, Any]]] = {}

    @classmethod
    def from_env(cls, env: Optional[Dict[str, str]] = None) -> Optional["Transfer"]:
        """The transfer of a step Pod in S3 mode, else None (the artifacts are on a volume)."""
        env = os.environ if env is None else env
        if env.get(contract.ENV_STORE) != contract.S3_SCHEME:
            return None
        uri = env.get(contract.ENV_UPLOAD_URI) or ""
        if not uri.startswith("s3://"):
            raise StoreError("InvalidInput", f"{contract.ENV_UPLOAD_URI} must be an s3:// URI, got {uri!r}")
        return cls(S3.from_env(env), uri, env.get(contract.ENV_S3_ROOT) or "")

    # --- inputs ---

    def fetch_inputs(self, args: StepArgs) -> StepArgs:
        """args with every s3:// input downloaded next to the step's output folder."""
        scratch = Path(args.out).resolve().parent / ".inputs"
        changes = {}
        for name in args.artifact_fields():
            value = getattr(args, name)
            if isinstance(value, str) and value.startswith("s3://"):
                local = self.fetch(value, scratch)
                # a dataset URL stays a URL for the step's downloader (urllib reads file://)
                changes[name] = local.as_uri() if name == "dataset_url" else str(local)
        for name, keys in args.artifact_list_fields().items():
            value = getattr(args, name)
            rows = json.loads(value) if isinstance(value, str) and value else None
            if not isinstance(rows, list):
                continue
            fetched = False
            for row in rows:
                for key in keys:
                    if isinstance(row, dict) and str(row.get(key, "")).startswith("s3://"):
                        row[key], fetched = str(self.fetch(row[key], scratch)), True
            if fetched:
                changes[name] = json.dumps(rows, separators=(",", ":"), sort_keys=True)
        return dataclasses.replace(args, **changes) if changes else args

    def _manifest(self, bucket: str, prefix: str) -> Optional[Dict[str, Any]]:
        key = contract.manifest_key(prefix)
        if (bucket, key) not in self._manifests:
            if self.s3.exists(bucket, key):
                doc = json.loads(self.s3.get_bytes(bucket, key))
                if not isinstance(doc, dict) or doc.get("format") != contract.MANIFEST_FORMAT:
                    raise StoreError("ArtifactCorrupted", f"s3://{bucket}/{key} is not an edgetune manifest")
                self._manifests[(bucket, key)] = doc
            else:
                self._manifests[(bucket, key)] = None
        return self._manifests[(bucket, key)]

    def fetch(self, uri: str, scratch: Path) -> Path:
        """Download the object or folder at uri; the local path that stands for it."""
        bucket, key = contract.split_s3_uri(uri)
        key = key.rstrip("/")
        local = scratch / bucket / key
        step_set = contract.step_set_prefix(uri, self.root)
        if step_set is not None:
            prefix = contract.split_s3_uri(step_set)[1]
            doc = self._manifest(bucket, prefix)
            if doc is None:
                raise StoreError("ArtifactMissing", f"{step_set} has no manifest: the step that writes it did not "
                                                    "finish (its artifacts are not complete)")
            rel = key[len(prefix) + 1:]
            wanted = [o for o in doc["objects"] if o["path"] == rel or o["path"].startswith(rel + "/")]
            if not wanted:
                raise StoreError("ArtifactMissing", f"{uri} is not in the manifest of s3://{bucket}/{prefix}")
            for obj in wanted:
                self._get_checked(bucket, f"{prefix}/{obj['path']}", scratch / bucket / prefix / obj["path"], obj)
            return local
        # no manifest: an object or a folder someone put there
        if self.s3.exists(bucket, key):
            self._get_checked(bucket, key, local, None)
            # a checkpoint's provenance sidecar (<stem>.provenance.json, training.base_model)
            # travels with it, so that the step can say what it started from
            companion = key.rsplit(".", 1)[0] + PROVENANCE_SIDECAR
            if companion != key and self.s3.exists(bucket, companion):
                self._get_checked(bucket, companion, scratch / bucket / companion, None)
            return local
        listed = [o for o in self.s3.list(bucket, key + "/") if not o["Key"].endswith("/")]
        if not listed:
            raise StoreError("ArtifactMissing", f"{uri}: no such object or folder in S3 endpoint {self.s3.endpoint}")
        for obj in listed:
            self._get_checked(bucket, obj["Key"], scratch / bucket / obj["Key"], {"size": obj.get("Size")})
        return local

    def _get_checked(self, bucket: str, key: str, path: Path, expected: Optional[Dict[str, Any]]) -> None:
        t0 = time.monotonic()
        try:
            digest, size = self.s3.download(bucket, key, str(path))
        except StoreError as exc:
            if exc.reason == "ArtifactMissing" and expected and "sha256" in expected:
                raise StoreError("ArtifactCorrupted", f"s3://{bucket}/{key} is listed in its manifest but missing")
            raise
        self.down.add(size, time.monotonic() - t0)
        if expected and expected.get("size") is not None and size != expected["size"]:
            raise StoreError("ArtifactCorrupted", f"s3://{bucket}/{key} has {size} bytes, its manifest says "
                                                  f"{expected['size']}: truncated or changed")
        if expected and expected.get("sha256") and digest != expected["sha256"]:
            raise StoreError("ArtifactCorrupted", f"s3://{bucket}/{key}: sha256 {digest[:16]}... differs from its "
                                                  f"manifest's {expected['sha256'][:16]}...: changed after upload")

    # --- outputs ---

    def publish(self, out: str, step: str) -> List[Dict[str, Any]]:
        """Upload the output folder, then the manifest that makes the set visible."""
        bucket, prefix = contract.split_s3_uri(self.upload_uri)
        root = Path(out)
        objects = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if rel.split("/")[0] in SKIP_DIRS or any(part.startswith(".") for part in rel.split("/")):
                continue
            t0 = time.monotonic()
            digest, size = self.s3.upload(str(path), bucket, f"{prefix}/{rel}")
            self.up.add(size, time.monotonic() - t0)
            objects.append({"path": rel, "size": size, "sha256": digest})
        t0 = time.monotonic()
        data = json.dumps(contract.manifest(objects, step), indent=1).encode()
        self.s3.put_bytes(bucket, contract.manifest_key(prefix), data)
        self.up.add(len(data), time.monotonic() - t0)
        return objects

    def provenance(self) -> Dict[str, Any]:
        return {"store": self.upload_uri, "client_seconds": round(getattr(self.s3, "client_seconds", 0.0), 3),
                "download_seconds": round(self.down.seconds, 3),
                "download_bytes": self.down.bytes, "download_objects": self.down.objects,
                "upload_seconds": round(self.up.seconds, 3), "upload_bytes": self.up.bytes,
                "upload_objects": self.up.objects}
