"""The whole pipeline with the real steps and object storage, as at an edge site where the GPU
server and the Jetson share no volume: FinetuneJob -> ModelConversion (onnxruntime, verify)
-> EdgeBenchmark on a small generated set, every artifact moving through the cluster's S3
server (SeaweedFS, authentication on). The figures in status equal the reports the steps
stored in the bucket, and the key pair appears in no status, Event, Job or log."""
from __future__ import annotations

import json

import pytest

from edgetune_contract.store import MANIFEST
from operator_fixtures import real_steps_settings, wait_for  # noqa: E402

pytest_plugins = ["operator_fixtures"]
pytestmark = [pytest.mark.cluster, pytest.mark.ml]
BUCKET = "edgetune"


def res(kind, name, ns, spec):
    return {"apiVersion": "edgetune.io/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}


def test_real_pipeline_through_object_storage(local_cluster, kube, namespace, crds, start_operator, ml_image):
    store = local_cluster.object_store(buckets=(BUCKET,))
    ns = namespace  # no artifacts claim in this namespace: nothing can fall back to a volume
    kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys", "namespace": ns},
                "stringData": {"accessKeyID": store.access_key, "secretAccessKey": store.secret_key}})
    artifacts = {"s3": {"endpoint": store.endpoint, "bucket": BUCKET, "prefix": f"e2e/{ns}",
                        "credentialsSecret": {"name": "s3-keys"}}}
    start_operator([ns], extra_env=real_steps_settings(ml_image))  # the real steps in their image
    kube.apply(
        res("FinetuneJob", "ft", ns, {"dataset": {"generate": {"images": 8}}, "artifacts": artifacts,
                                      "training": {"epochs": 2, "batchSize": 2, "imageSize": 64, "workers": 0,
                                                   "valInterval": 1, "device": "cpu"}}),
        res("ModelConversion", "mc", ns, {"source": {"finetuneJob": "ft"}, "backend": "onnxruntime",
                                          "precision": "fp32", "imageSize": 64, "artifacts": artifacts,
                                          "export": {"device": "cpu"}, "verify": {"maxMapDrop": 0.05}}),
        res("EdgeBenchmark", "eb", ns, {"modelConversion": "mc", "warmup": 2, "iterations": 30, "threads": 1,
                                        "artifacts": artifacts}))
    st = kube.wait_phase("EdgeBenchmark", "eb", ns, ("Succeeded", "Failed"), timeout=900)
    ft, mc = kube.status("FinetuneJob", "ft", ns), kube.status("ModelConversion", "mc", ns)
    assert (ft["phase"], mc["phase"], st["phase"]) == ("Succeeded",) * 3, (ft.get("message"), mc.get("message"), st)

    # every artifact is an object of the bucket, under the resource's prefix
    root = f"s3://{BUCKET}/e2e/{ns}/{ns}/"
    assert ft["artifacts"]["checkpoint"] == root + "finetunejob/ft/finetune/best.pth"
    assert mc["artifacts"]["model"] == root + "modelconversion/mc/build-engine/end2end.onnx"
    s3 = store.client()

    def report(uri):
        return json.loads(s3.get_object(Bucket=BUCKET, Key=uri[len(f"s3://{BUCKET}/"):])["Body"].read())

    for step in ("finetunejob/ft/finetune", "modelconversion/mc/export", "modelconversion/mc/build-engine",
                 "modelconversion/mc/verify", "edgebenchmark/eb/benchmark"):
        assert report(f"{root}{step}/{MANIFEST}")["objects"], step  # each set complete, with its manifest
    # the figures in status are the ones the steps stored
    verify = report(root + "modelconversion/mc/verify/verify.json")
    assert mc["metrics"]["converted"]["mAP"] == verify["converted"]["mAP"]
    assert mc["metrics"]["mapDrop"] == verify["map_drop"]
    bench = report(root + "edgebenchmark/eb/benchmark/benchmark.json")
    assert st["latency"]["pipeline"]["p50Ms"] == round(bench["metrics"]["pipeline"]["p50_ms"], 4)
    assert st["throughputFps"] == bench["metrics"]["fps"]
    # what measured the figures, as the spec asked (warm-up and iterations), with the versions
    prov = st["provenance"]["benchmark"]
    assert (prov["warmup"], prov["iterations"], prov["threads"]) == (2, 30, 1), prov
    assert prov["versions"]["onnxruntime"] and prov["precision"] == "fp32", prov
    # transfer time in each step's provenance
    for status, step in ((ft, "finetune"), (mc, "export"), (mc, "verify"), (st, "benchmark")):
        t = status["provenance"][step]["transfer"]
        assert t["store"].startswith(root) and t["upload_objects"] >= 1 and t["upload_seconds"] >= 0, (step, t)
    # no volume anywhere, and the key pair nowhere
    secret = store.secret_key
    for job in kube.jobs(ns):
        podspec = job["spec"]["template"]["spec"]
        assert not any("persistentVolumeClaim" in v for v in podspec["volumes"]), job["metadata"]["name"]
        assert secret not in json.dumps(job)
    assert secret not in json.dumps([ft, mc, st]) and secret not in json.dumps(kube.get("events", ns=ns))
    for pod in kube.pods(ns):
        logs = kube.run("logs", pod["metadata"]["name"], "-n", ns, check=False).stdout
        assert secret not in logs


@pytest.mark.parametrize("secret", [None, {"accessKeyID": "id-only"}], ids=["no-secret", "no-key"])
def test_a_missing_secret_or_key_shows_in_status(kube, ns, operator, secret):
    """The Pod cannot start: the kubelet's reason and message (which Secret, which key) in
    status, not a silent Pending."""
    if secret is not None:
        kube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-keys", "namespace": ns},
                    "stringData": secret})
    artifacts = {"s3": {"endpoint": "http://127.0.0.1:9", "bucket": "no-server", "credentialsSecret": {"name": "s3-keys"}}}
    kube.apply(res("FinetuneJob", "ft", ns, {"dataset": {"generate": {}}, "artifacts": artifacts}))
    # the kubelet says `secret "s3-keys" not found` / `couldn't find key secretAccessKey in Secret ...`
    want = '"s3-keys"' if secret is None else "secretAccessKey"
    st = wait_for(lambda: want in (kube.status("FinetuneJob", "ft", ns).get("message") or "")
                  and kube.status("FinetuneJob", "ft", ns), timeout=60, what=f"'{want}' in the status message")
    assert st["phase"] == "Pending"
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "CreateContainerConfigError" and want in ready["message"]
