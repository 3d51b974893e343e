"""Steps move their artifacts through a real S3 server (SeaweedFS, authentication on): inputs
downloaded and checked against the producing step's manifest, outputs uploaded with the
manifest last, and every failure a user meets turned into a reason that names the endpoint,
the bucket and the object — never the key pair."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from store_fixtures import s3_env

from edgetune_contract.args import ExportArgs, SweepArgs
from edgetune_jobs.artifacts.s3 import StoreError
from edgetune_jobs.artifacts.transfer import Transfer

ROOT = "s3://edgetune/runs/"
FT_SET = ROOT + "ns/finetunejob/ft/finetune"


def transfer(store, upload=ROOT + "ns/modelconversion/mc/export", **env) -> Transfer:
    return Transfer.from_env(s3_env(store, upload, root=ROOT, **env))


def producer_folder(tmp_path: Path) -> Path:
    out = tmp_path / "ft-out"
    (out / "data" / "annotations").mkdir(parents=True)
    (out / "data" / "images").mkdir()
    (out / "best.pth").write_bytes(b"\x80" * 300_000)
    (out / "config.py").write_text("model = dict()\n")
    (out / "data" / "annotations" / "val.json").write_text('{"images": []}')
    (out / "data" / "images" / "a.jpg").write_bytes(b"jpg" * 1000)
    (out / "work").mkdir()
    (out / "work" / "log.txt").write_text("not an artifact")
    return out


@pytest.fixture
def published(object_store, tmp_path):
    """A finetune step's outputs, published under a fresh name (tests may damage it)."""
    name = tmp_path.name.replace("_", "-").lower()[-40:]
    upload = f"{ROOT}ns/finetunejob/{name}/finetune"
    t = transfer(object_store, upload)
    objects = t.publish(str(producer_folder(tmp_path)), "finetune")
    return upload, objects, t


def export_args(upload: str, out: Path) -> ExportArgs:
    return ExportArgs(out=str(out), checkpoint=f"{upload}/best.pth", config=f"{upload}/config.py",
                      backend="onnxruntime", image_size=64, val_dataset=f"{upload}/data")


def test_publish_uploads_everything_but_work_and_the_manifest_last(object_store, published):
    upload, objects, t = published
    assert [o["path"] for o in objects] == ["best.pth", "config.py", "data/annotations/val.json", "data/images/a.jpg"]
    s3 = object_store.client()
    prefix = upload[len("s3://edgetune/"):]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="edgetune", Prefix=prefix)["Contents"])
    assert keys == sorted([f"{prefix}/{o['path']}" for o in objects] + [f"{prefix}/edgetune-manifest.json"])
    manifest = json.loads(s3.get_object(Bucket="edgetune", Key=f"{prefix}/edgetune-manifest.json")["Body"].read())
    assert manifest["format"] == "edgetune.io/manifest/v1" and manifest["objects"] == objects
    prov = t.provenance()
    assert prov["upload_objects"] == 5 and prov["upload_bytes"] > 300_000 and prov["store"] == upload


def test_inputs_are_downloaded_checked_and_replaced_by_local_paths(object_store, published, tmp_path):
    upload, objects, _ = published
    t = transfer(object_store)
    args = t.fetch_inputs(export_args(upload, tmp_path / "scratch" / "export"))
    assert Path(args.checkpoint).read_bytes() == b"\x80" * 300_000
    assert Path(args.config).read_text() == "model = dict()\n"
    assert (Path(args.val_dataset) / "images" / "a.jpg").read_bytes() == b"jpg" * 1000
    assert Path(args.checkpoint).is_relative_to(tmp_path / "scratch")  # next to the step's own output
    assert not (Path(args.val_dataset).parent / "work").exists()
    assert t.provenance()["download_objects"] == 4  # best.pth, config.py, the dataset's 2 files


def test_a_sweeps_rows_name_models_in_s3_and_get_them_downloaded(object_store, published, tmp_path):
    """SweepArgs.models is a JSON list whose model/meta are artifacts (one per conversion)."""
    upload, _, _ = published
    rows = [{"name": "a", "model": f"{upload}/best.pth", "meta": f"{upload}/config.py", "mAP": 0.5},
            {"name": "b", "model": "/already/local.onnx", "meta": "/already/pipeline.json"}]
    args = SweepArgs(out=str(tmp_path / "scratch" / "sweep"), models=json.dumps(rows), images=f"{upload}/data/images")
    got = transfer(object_store).fetch_inputs(args)
    local = json.loads(got.models)
    assert Path(local[0]["model"]).read_bytes() == b"\x80" * 300_000 and local[0]["mAP"] == 0.5
    assert Path(local[0]["meta"]).read_text() == "model = dict()\n"
    assert local[1] == rows[1]  # a path that is not s3:// stays as it is
    assert (Path(got.images) / "a.jpg").read_bytes() == b"jpg" * 1000


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "has 1000 bytes, its manifest says 300000: truncated or changed"),
    ("change", "differs from its manifest"),
    ("delete", "is listed in its manifest but missing"),
])
def test_a_changed_or_truncated_object_is_artifact_corrupted(object_store, published, tmp_path, damage, needle):
    upload, _, _ = published
    s3, key = object_store.client(), upload[len("s3://edgetune/"):] + "/best.pth"
    if damage == "truncate":
        s3.put_object(Bucket="edgetune", Key=key, Body=b"\x80" * 1000)
    elif damage == "change":
        s3.put_object(Bucket="edgetune", Key=key, Body=b"\x81" * 300_000)
    else:
        s3.delete_object(Bucket="edgetune", Key=key)
    with pytest.raises(StoreError) as err:
        transfer(object_store).fetch_inputs(export_args(upload, tmp_path / "e"))
    assert err.value.reason == "ArtifactCorrupted" and needle in err.value.message
    assert f"s3://edgetune/{key}" in err.value.message


def test_a_set_without_manifest_is_never_read(object_store, tmp_path):
    """A step killed mid-upload leaves objects but no manifest: nothing downstream reads them."""
    s3 = object_store.client()
    s3.put_object(Bucket="edgetune", Key="runs/ns/finetunejob/killed/finetune/best.pth", Body=b"partial")
    with pytest.raises(StoreError) as err:
        transfer(object_store).fetch_inputs(export_args(ROOT + "ns/finetunejob/killed/finetune", tmp_path / "e"))
    assert err.value.reason == "ArtifactMissing" and "has no manifest" in err.value.message


def test_objects_outside_the_layout_are_taken_as_they_are(object_store, tmp_path):
    """A user's own checkpoint or dataset folder (no manifest expected)."""
    s3 = object_store.client()
    s3.put_object(Bucket="edgetune", Key="runs/models/base.pth", Body=b"base")
    s3.put_object(Bucket="edgetune", Key="runs/datasets/set/val.json", Body=b"{}")
    s3.put_object(Bucket="edgetune", Key="runs/datasets/set/images/x.jpg", Body=b"x")
    a = ExportArgs(out=str(tmp_path / "e"), checkpoint=ROOT + "models/base.pth", config=ROOT + "models/base.pth",
                   backend="onnxruntime", image_size=64, val_dataset=ROOT + "datasets/set")
    got = transfer(object_store).fetch_inputs(a)
    assert Path(got.checkpoint).read_bytes() == b"base" and (Path(got.val_dataset) / "images" / "x.jpg").exists()
    assert not Path(got.checkpoint).with_suffix(".provenance.json").exists()
    # a checkpoint's provenance sidecar comes along (the step reads it next to the checkpoint)
    s3.put_object(Bucket="edgetune", Key="runs/models/base.provenance.json", Body=b'{"stamp": "x"}')
    got = transfer(object_store).fetch_inputs(a)
    assert Path(got.checkpoint).with_suffix(".provenance.json").read_text() == '{"stamp": "x"}'
    with pytest.raises(StoreError) as err:
        transfer(object_store).fetch_inputs(ExportArgs(out=str(tmp_path / "e"), checkpoint=ROOT + "models/nope.pth",
                                                       config="c.py", backend="onnxruntime", image_size=64))
    assert err.value.reason == "ArtifactMissing" and "models/nope.pth" in err.value.message


def test_wrong_keys_are_unauthorized_and_the_secret_is_not_in_the_message(object_store, published, tmp_path):
    upload, _, _ = published
    secret = "not-the-right-secret-9f2c1e"
    for env in ({"AWS_SECRET_ACCESS_KEY": secret}, {"AWS_ACCESS_KEY_ID": "nobody", "AWS_SECRET_ACCESS_KEY": secret}):
        with pytest.raises(StoreError) as err:
            transfer(object_store, **env).fetch_inputs(export_args(upload, tmp_path / "e"))
        assert err.value.reason == "ArtifactStoreUnauthorized"
        assert object_store.endpoint in err.value.message and "bucket edgetune" in err.value.message
        assert secret not in err.value.message and object_store.secret_key not in err.value.message


def test_a_missing_bucket_is_not_found(object_store, tmp_path):
    t = Transfer.from_env(s3_env(object_store, "s3://no-such-bucket/x/ns/finetunejob/a/finetune",
                                 root="s3://no-such-bucket/x/"))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "f").write_text("x")
    with pytest.raises(StoreError) as err:
        t.publish(str(tmp_path / "o"), "finetune")
    assert err.value.reason == "ArtifactStoreNotFound" and "bucket no-such-bucket" in err.value.message


def test_an_endpoint_that_does_not_answer_is_retried_then_unavailable(object_store, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = s3_env(object_store, ROOT + "ns/finetunejob/a/finetune", root=ROOT,
                 EDGETUNE_S3_ENDPOINT=f"http://127.0.0.1:{port}", EDGETUNE_S3_RETRY_SECONDS="2")
    t = Transfer.from_env(env)
    sleeps = []
    t.s3.sleep = lambda s: sleeps.append(s)  # the back-off, without waiting for it
    with pytest.raises(StoreError) as err:
        t.fetch_inputs(ExportArgs(out=str(tmp_path / "e"), checkpoint=ROOT + "models/x.pth", config="c.py",
                                  backend="onnxruntime", image_size=64))
    assert err.value.reason == "ArtifactStoreUnavailable" and f"127.0.0.1:{port}" in err.value.message
    assert len(sleeps) >= 2 and sleeps[:3] == sorted(sleeps[:3])  # retried, backing off


def test_missing_credentials_say_so_before_any_request(object_store):
    env = s3_env(object_store, ROOT + "ns/finetunejob/a/finetune")
    del env["AWS_SECRET_ACCESS_KEY"]
    with pytest.raises(StoreError) as err:
        Transfer.from_env(env)
    assert err.value.reason == "ArtifactStoreUnauthorized" and "AWS_SECRET_ACCESS_KEY not set" in err.value.message
