"""The object-storage fixtures every test folder may use (tests/conftest.py registers them):

- object_store -> ObjectStore: a real SeaweedFS S3 server (edgetune_localcluster.objectstore:
  built from source once, cached), authentication on, on loopback, in a temporary folder, with
  the buckets "edgetune" and "scratch"; stopped at the end of the session.
- s3_env(store, upload_uri) -> dict: the environment the operator gives a step Pod in S3 mode.
"""
from __future__ import annotations

import pytest

BUCKETS = ("edgetune", "scratch")


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    pytest.importorskip("boto3", reason="boto3 is not installed (run `make install`)")
    from edgetune_localcluster.objectstore import ObjectStore

    store = ObjectStore(tmp_path_factory.mktemp("seaweedfs")).up(buckets=BUCKETS)
    yield store
    store.down()


def s3_env(store, upload_uri: str, root: str = "s3://edgetune/", **extra: str) -> dict:
    from edgetune_contract import store as contract

    return {contract.ENV_STORE: "s3", contract.ENV_UPLOAD_URI: upload_uri, contract.ENV_S3_ROOT: root,
            contract.ENV_S3_ENDPOINT: store.endpoint, contract.ENV_S3_REGION: "us-east-1",
            contract.ENV_ACCESS_KEY_ID: store.access_key, contract.ENV_SECRET_ACCESS_KEY: store.secret_key,
            "EDGETUNE_S3_RETRY_SECONDS": "3", **extra}
