"""The S3 client of the steps (boto3, path-style, SigV4), with the failures a user can act on
turned into step reasons — never a traceback, never a secret:

    ArtifactStoreUnauthorized  wrong or unknown key pair, or no permission (HTTP 403)
    ArtifactStoreNotFound      the bucket does not exist
    ArtifactStoreUnavailable   the endpoint did not answer (retried with back-off for a
                               bounded time: EDGETUNE_S3_RETRY_SECONDS, default 60)
    ArtifactMissing            an object (or a prefix) that should be there is not

Messages name the endpoint, the bucket and the object, and the S3 error code; the access key
pair comes from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, set from a Secret
by the operator) and is never printed.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from edgetune_contract import store as contract

from ..cli import StepError

UNAUTHORIZED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken",
                "ExpiredToken", "AuthorizationHeaderMalformed", "403", "Forbidden"}
NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
CHUNK = 1 << 20


class StoreError(StepError):
    pass


def _sha256_file(path: str) -> Tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


class S3:
    """One endpoint, from the step Pod's environment (edgetune_contract.store.ENV_*)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1",
                 ca_bundle: Optional[str] = None, retry_seconds: float = 60.0,
                 sleep: Callable[[float], None] = time.sleep):
        t0 = time.monotonic()
        import boto3
        from botocore.config import Config

        self.endpoint = endpoint
        self.retry_seconds = retry_seconds
        self.sleep = sleep
        self.client = boto3.client(
            "s3", endpoint_url=endpoint, region_name=region, verify=ca_bundle or True,
            aws_access_key_id=access_key, aws_secret_access_key=secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}, connect_timeout=5, read_timeout=120))
        # importing boto3 and loading S3's service model: a fixed cost of every step in S3 mode
        self.client_seconds = time.monotonic() - t0

    @classmethod
    def from_env(cls, env: Optional[Dict[str, str]] = None) -> "S3":
        env = os.environ if env is None else env
        endpoint = env.get(contract.ENV_S3_ENDPOINT)
        if not endpoint:
            raise StoreError("InvalidInput", f"{contract.ENV_S3_ENDPOINT} is not set")
        missing = [k for k in (contract.ENV_ACCESS_KEY_ID, contract.ENV_SECRET_ACCESS_KEY) if not env.get(k)]
        if missing:
            raise StoreError("ArtifactStoreUnauthorized", f"S3 endpoint {endpoint}: {' and '.join(missing)} "
                                                          "not set (the Secret's keys reach the Pod as these)")
        return cls(endpoint, env[contract.ENV_ACCESS_KEY_ID], env[contract.ENV_SECRET_ACCESS_KEY],
                   env.get(contract.ENV_S3_REGION) or "us-east-1", env.get(contract.ENV_S3_CA_BUNDLE),
                   float(env.get("EDGETUNE_S3_RETRY_SECONDS", "60")))

    # --- one call, with the failure mapping ---

    def call(self, what: str, bucket: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import (ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, ReadTimeoutError, SSLError)

        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        where = f"S3 endpoint {self.endpoint}, bucket {bucket}"
        while True:
            try:
                return fn(Bucket=bucket, **kwargs)
            except SSLError as exc:
                raise StoreError("ArtifactStoreUnavailable", f"{where}: TLS: {exc} (a CA bundle: "
                                                             "spec.artifacts.s3.caBundle)") from None
            except (ClientError, S3UploadFailedError) as exc:
                # boto3's transfer manager wraps the ClientError of a failed upload
                client_error = exc if isinstance(exc, ClientError) else exc.__context__
                response = getattr(client_error, "response", None) or {}
                code = str(response.get("Error", {}).get("Code") or "")
                status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if code in UNAUTHORIZED or status == 403:
                    raise StoreError("ArtifactStoreUnauthorized", f"{where}: {what}: {code or 'HTTP 403'} "
                                                                  "(check the credentials Secret)") from None
                if code == "NoSuchBucket":
                    raise StoreError("ArtifactStoreNotFound", f"{where}: the bucket does not exist") from None
                if code in NOT_FOUND or status == 404:
                    raise StoreError("ArtifactMissing", f"{where}: {what}: not found") from None
                if not (status and status >= 500) or time.monotonic() > deadline:
                    raise StoreError("ArtifactStoreUnavailable" if status and status >= 500 else "ArtifactStoreError",
                                     f"{where}: {what}: {code or status}") from None
            except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as exc:
                if time.monotonic() > deadline:  # no answer: connection refused, timeouts, DNS
                    raise StoreError("ArtifactStoreUnavailable",
                                     f"{where}: no answer for {self.retry_seconds:.0f} s ({type(exc).__name__})") from None
            self.sleep(delay)
            delay = min(delay * 2, 10.0)

    # --- objects ---

    def get_bytes(self, bucket: str, key: str) -> bytes:
        obj = self.call(f"get {key}", bucket, self.client.get_object, Key=key)
        return obj["Body"].read()

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self.call(f"head {key}", bucket, self.client.head_object, Key=key)
            return True
        except StoreError as exc:
            if exc.reason == "ArtifactMissing":
                return False
            raise

    def list(self, bucket: str, prefix: str) -> Iterator[Dict[str, Any]]:
        token = None
        while True:
            kw: Dict[str, Any] = {"Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            page = self.call(f"list {prefix}", bucket, self.client.list_objects_v2, **kw)
            yield from page.get("Contents") or []
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def download(self, bucket: str, key: str, path: str) -> Tuple[str, int]:
        """Download to path (atomically); returns (sha256, bytes)."""
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".part"
        obj = self.call(f"get {key}", bucket, self.client.get_object, Key=key)
        h, n = hashlib.sha256(), 0
        with open(tmp, "wb") as fh:
            for block in iter(lambda: obj["Body"].read(CHUNK), b""):
                fh.write(block)
                h.update(block)
                n += len(block)
        os.replace(tmp, path)
        return h.hexdigest(), n

    def upload(self, path: str, bucket: str, key: str) -> Tuple[str, int]:
        """Upload a file (multipart above 8 MiB, by boto3's transfer manager); (sha256, bytes)."""
        digest, size = _sha256_file(path)
        self.call(f"put {key}", bucket, lambda Bucket: self.client.upload_file(path, Bucket, key))
        return digest, size

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "application/json") -> None:
        self.call(f"put {key}", bucket, self.client.put_object, Key=key, Body=data, ContentType=content_type)
