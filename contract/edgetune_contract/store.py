"""Where artifacts live: a PersistentVolumeClaim every step mounts, or S3-compatible object
storage the steps read and write themselves (the usual edge site: the GPU server and the
Jetsons share no volume).

Both sides agree here on the artifact URIs in status (`pvc://<claim>/<ns>/<kind>/<name>/<step>/
<file>` or `s3://<bucket>/<prefix><ns>/<kind>/<name>/<step>/<file>`), on what a step gets as
an input argument (a path under the mounted claim, or the s3:// URI it downloads), on the
environment that tells a step where to upload, and on the manifest that makes a set of
uploaded artifacts visible only once complete.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any, Dict, List, Mapping, Optional

from .names import ARTIFACT_MOUNT, ARTIFACT_SCHEME, KINDS, STEPS, rel_dir

S3_SCHEME = "s3"
MANIFEST = "edgetune-manifest.json"  # written last into a step's prefix: the set is complete
MANIFEST_FORMAT = "edgetune.io/manifest/v1"

# The step Pod's environment in S3 mode (the key pair comes from the Secret via secretKeyRef)
ENV_STORE = "EDGETUNE_ARTIFACT_STORE"          # "pvc" or "s3"
ENV_UPLOAD_URI = "EDGETUNE_ARTIFACT_URI"       # s3://bucket/prefix/<ns>/<kind>/<name>/<step>: outputs go here
ENV_S3_ROOT = "EDGETUNE_S3_ROOT"               # s3://bucket/prefix/: below it, the steps' sets need a manifest
ENV_S3_ENDPOINT = "EDGETUNE_S3_ENDPOINT"
ENV_S3_REGION = "EDGETUNE_S3_REGION"
ENV_S3_CA_BUNDLE = "EDGETUNE_S3_CA_BUNDLE"     # a PEM file in the Pod (from a ConfigMap)
ENV_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"          # the names boto3 and every S3 client read
ENV_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
CA_MOUNT = "/etc/edgetune/s3-ca"


@dataclasses.dataclass(frozen=True)
class S3Store:
    """An S3-compatible bucket (spec.artifacts.s3, or the operator's default)."""

    endpoint: str
    bucket: str
    secret_name: str
    prefix: str = ""
    region: str = "us-east-1"
    access_key_id_key: str = "accessKeyID"
    secret_access_key_key: str = "secretAccessKey"
    ca_bundle_configmap: str = ""
    ca_bundle_key: str = "ca.crt"

    @classmethod
    def from_spec(cls, s3: Mapping[str, Any]) -> "S3Store":
        creds = s3.get("credentialsSecret") or {}
        ca = s3.get("caBundle") or {}
        prefix = str(s3.get("prefix") or "").strip("/")
        return cls(endpoint=s3["endpoint"], bucket=s3["bucket"], prefix=prefix + "/" if prefix else "",
                   region=s3.get("region") or "us-east-1", secret_name=creds["name"],
                   access_key_id_key=creds.get("accessKeyIDKey") or "accessKeyID",
                   secret_access_key_key=creds.get("secretAccessKeyKey") or "secretAccessKey",
                   ca_bundle_configmap=ca.get("configMap") or "", ca_bundle_key=ca.get("key") or "ca.crt")

    @property
    def root(self) -> str:
        return f"{S3_SCHEME}://{self.bucket}/{self.prefix}"

    def step_uri(self, namespace: str, kind: str, name: str, step: str, run: int = 1,
                 part: Optional[str] = None) -> str:
        return self.root + rel_dir(namespace, kind, name, step, run, part)

    def artifact_uri(self, namespace: str, kind: str, name: str, step: str, rel: str, run: int = 1,
                     part: Optional[str] = None) -> str:
        return f"{self.step_uri(namespace, kind, name, step, run, part)}/{rel.lstrip('/')}"

    def in_pod(self, uri: str) -> Optional[str]:
        """A status URI as a step's input argument: an s3:// URI of this bucket (the step
        downloads it); None for an artifact on a claim or another bucket."""
        if uri.startswith(f"{ARTIFACT_SCHEME}://"):
            return None
        if uri.startswith(f"{S3_SCHEME}://"):
            return uri if split_s3_uri(uri)[0] == self.bucket else None
        return uri  # an http(s) URL passes through

    def spec_path(self, value: str) -> str:
        """A spec path relative to the store's root (e.g. datasets/balloon) as an s3:// URI."""
        return value if "://" in value else self.root + value.lstrip("/")


@dataclasses.dataclass(frozen=True)
class PvcStore:
    """A PersistentVolumeClaim mounted at /artifacts in every step Pod."""

    claim: str

    def artifact_uri(self, namespace: str, kind: str, name: str, step: str, rel: str, run: int = 1,
                     part: Optional[str] = None) -> str:
        return (f"{ARTIFACT_SCHEME}://{self.claim}/{rel_dir(namespace, kind, name, step, run, part)}/"
                f"{rel.lstrip('/')}")

    def in_pod(self, uri: str) -> Optional[str]:
        """pvc://<claim>/<path> -> /artifacts/<path> (None: another claim, or object storage)."""
        prefix = f"{ARTIFACT_SCHEME}://"
        if uri.startswith(f"{S3_SCHEME}://"):
            return None
        if not uri.startswith(prefix):
            return uri
        claim, _, path = uri[len(prefix):].partition("/")
        return f"{ARTIFACT_MOUNT}/{path}" if claim == self.claim else None

    def spec_path(self, value: str) -> str:
        return value if "://" in value else f"{ARTIFACT_MOUNT}/{value.lstrip('/')}"


def split_s3_uri(uri: str) -> tuple:
    """s3://bucket/key -> (bucket, key)."""
    if not uri.startswith(f"{S3_SCHEME}://"):
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME) + 3:].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {uri!r}")
    return bucket, key


def step_set_prefix(uri: str, root: str) -> Optional[str]:
    """The s3:// prefix of the step artifact set that holds uri, when uri lies in the
    operator's layout under root (<root><ns>/<kind>/<name>/<step>[-<run>][@<part>]/...), else None.
    Such a set is complete only with its manifest."""
    if not root or not uri.startswith(root):
        return None
    parts = uri[len(root):].split("/")
    if len(parts) < 5 or parts[1] not in {k.lower() for k in KINDS}:
        return None
    folder = parts[3].partition("@")[0]  # a fleet's node, a device group: a set of its own
    step, _, run = folder.rpartition("-")
    if folder not in STEPS and not (run.isdigit() and step in STEPS):
        return None
    return root + "/".join(parts[:4])


def manifest(objects: List[Dict[str, Any]], step: str) -> Dict[str, Any]:
    """The manifest of a complete artifact set: every object's key (relative to the step's
    prefix), size and sha256."""
    return {"format": MANIFEST_FORMAT, "step": step,
            "objects": sorted(objects, key=lambda o: o["path"])}


def manifest_key(step_prefix_key: str) -> str:
    return posixpath.join(step_prefix_key.rstrip("/"), MANIFEST)
