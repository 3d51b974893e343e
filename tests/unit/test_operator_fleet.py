"""A fleet EdgeBenchmark (spec.fleet): which nodes it selects, one Job pinned to each Ready one,
a row per device with its own figures, the summary (worst p99 and where), what a NotReady,
cordoned or tainted node, a failed device or a non-portable engine gives, and the metrics."""
from __future__ import annotations

from test_operator_plan import S, advance, at, cond, conv_done, iso, job, parsed, pod, res, result

from prometheus_client import generate_latest

from edgetune_contract import names
from edgetune_contract.args import BenchmarkArgs
from edgetune_operator import kinds, metrics, observe
from edgetune_operator.controller.executor import merge_patch

EDGE_TAINT = {"key": "edgetune.io/edge", "value": "true", "effect": "NoSchedule"}
PRODUCTS = {"orin-nano-0": ("NVIDIA-Jetson-Orin-Nano", "6.0"), "orin-nx-0": ("NVIDIA-Jetson-Orin-NX", "5.1.2"),
            "agx-orin-0": ("NVIDIA-Jetson-AGX-Orin", "6.0")}


def node(name, *, ready="True", reason="KubeletReady", message="kubelet is posting ready status", labels=None,
         taints=(EDGE_TAINT,), unschedulable=False):
    product, jetpack = PRODUCTS.get(name, ("NVIDIA-A10G", None))
    lbl = {"kubernetes.io/hostname": name, "nvidia.com/gpu.product": product}
    if jetpack:
        lbl["nvidia.com/jetpack.version"] = jetpack
    lbl.update(labels or {})
    jetson = "nvidia.com/jetpack.version" in lbl
    lbl["edgetune.io/device"] = "jetson-orin" if jetson else "x86-gpu"
    taints = list(taints if jetson else ())
    if ready != "True":
        taints.append({"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"})
    return observe.summarize_node({"metadata": {"name": name, "labels": lbl},
                                   "spec": {"taints": taints, "unschedulable": unschedulable},
                                   "status": {"conditions": [{"type": "Ready", "status": ready, "reason": reason,
                                                              "message": message, "lastTransitionTime": iso(-60)}]}})


def fleet_nodes(**override):
    out = {n: node(n) for n in (*PRODUCTS, "gpu-node-0")}
    out.update(override)
    return out


def bench(p50, p99, device):
    return result("benchmark", metrics={
        "pipeline": {"mean_ms": p50 + 0.5, "p50_ms": p50, "p90_ms": p50 + 1, "p99_ms": p99, "min_ms": p50 - 1,
                     "max_ms": p99 + 1}, "fps": round(1000 / (p50 + 0.5), 2)},
        artifacts={"report": "latency.json"},
        provenance={"device": {"kind": "jetson", "model": device, "jetpack": "6.0"},
                    "versions": {"tensorrt": "8.6.2", "numpy": "1.26.4"}, "iterations": 200})


FLEET = {"modelConversion": "conv", "fleet": {}}


def start(nodes, spec=FLEET, related=None):
    body = res("EdgeBenchmark", spec, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=related or conv_done("onnxruntime"), nodes=nodes)
    return body, p


def test_one_pinned_job_per_matching_ready_node():
    body, p = start(fleet_nodes())
    by_node = {m["metadata"]["labels"][names.LABEL_NODE]: m for m in p.create}
    assert sorted(by_node) == ["agx-orin-0", "orin-nano-0", "orin-nx-0"]  # the x86 GPU node is not a jetson-orin
    m = by_node["orin-nx-0"]
    assert m["metadata"]["name"] == "bench-benchmark-orin-nx-0"
    spec = m["spec"]["template"]["spec"]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == {
        "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["orin-nx-0"]}]}]}
    assert spec["nodeSelector"] == {"edgetune.io/device": "jetson-orin"}
    assert {"name": "EDGETUNE_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in \
        spec["containers"][0]["env"]
    args = parsed(m, BenchmarkArgs)
    assert args.out == "/artifacts/demo/edgebenchmark/bench/benchmark@orin-nx-0"
    assert args.model == "/artifacts/demo/modelconversion/conv/build-engine/end2end.engine"
    assert [r["node"] for r in p.status["devices"]] == ["agx-orin-0", "orin-nano-0", "orin-nx-0"]
    assert {r["phase"] for r in p.status["devices"]} == {"Pending"}
    assert p.status["devices"][1]["deviceLabels"] == {"nvidia.com/gpu.product": "NVIDIA-Jetson-Orin-Nano",
                                                      "nvidia.com/jetpack.version": "6.0"}
    assert p.status["phase"] == "Pending" and p.status["fleet"]["devices"] == 3
    assert cond(p.status, "DevicesReady")["status"] == "True"


def test_three_devices_give_three_rows_and_the_summary():
    nodes = fleet_nodes()
    body, p = start(nodes)
    manifests = {m["metadata"]["labels"][names.LABEL_NODE]: m for m in p.create}
    body = advance(body, p)
    figures = {"agx-orin-0": (9.0, 11.5, "AGX Orin"), "orin-nano-0": (31.0, 44.25, "Orin Nano"),
               "orin-nx-0": (17.0, 20.0, "Orin NX")}
    # two running, one done
    jobs = [job(manifests["agx-orin-0"], complete=True, end=40), job(manifests["orin-nano-0"], active=1),
            job(manifests["orin-nx-0"], active=1)]
    pods = [pod(manifests["agx-orin-0"], phase="Succeeded", node="agx-orin-0", exit_code=0,
                message=bench(*figures["agx-orin-0"])),
            pod(manifests["orin-nano-0"], phase="Running", node="orin-nano-0"),
            pod(manifests["orin-nx-0"], phase="Running", node="orin-nx-0")]
    p = kinds.plan(body, jobs, pods, S, at(45), related=conv_done("onnxruntime"), nodes=nodes)
    assert p.status["phase"] == "Running" and not p.create
    assert [r["phase"] for r in p.status["devices"]] == ["Succeeded", "Running", "Running"]
    assert p.status["fleet"]["pending"] == 2 and p.status["fleet"]["worstNode"] == "agx-orin-0"
    body = advance(body, p)
    jobs = [job(manifests[n], complete=True, end=40) for n in figures]
    pods = [pod(manifests[n], phase="Succeeded", node=n, exit_code=0, message=bench(*figures[n])) for n in figures]
    p = kinds.plan(body, jobs, pods, S, at(60), related=conv_done("onnxruntime"), nodes=nodes)
    st = p.status
    assert st["phase"] == "Succeeded"
    rows = {r["node"]: r for r in st["devices"]}
    assert len(rows) == 3 and {r["phase"] for r in rows.values()} == {"Succeeded"}
    nano = rows["orin-nano-0"]
    assert (nano["p50Ms"], nano["p99Ms"], nano["meanMs"]) == (31.0, 44.25, 31.5)
    assert nano["device"] == "Orin Nano (JetPack 6.0)" and nano["versions"]["tensorrt"] == "8.6.2"
    assert nano["artifacts"]["report"] == \
        "pvc://edgetune-artifacts/demo/edgebenchmark/bench/benchmark@orin-nano-0/latency.json"
    assert st["provenance"]["benchmark@orin-nano-0"]["iterations"] == 200
    assert st["fleet"] == {"devices": 3, "measured": 3, "failed": 0, "skipped": 0, "pending": 0,
                           "worstP99Ms": 44.25, "worstNode": "orin-nano-0", "worstDevice": "Orin Nano (JetPack 6.0)",
                           "summary": "3/3 measured, worst p99 44.2 ms on orin-nano-0"}
    assert cond(st, "AllDevicesMeasured")["status"] == "True"
    assert [e[1] for e in p.events].count("StepSucceeded") == 2  # agx-orin-0's was announced before
    assert "worst p99 44.2 ms on orin-nano-0" in st["message"]
    # metrics: one series per device, labelled with its node
    body = advance(body, p)
    got = {(lbl["node"], lbl["quantile"]): v for n, lbl, v in kinds.samples(body)
           if n == "edgetune_benchmark_device_latency_seconds"}
    assert got[("orin-nano-0", "0.99")] == 44.25 / 1000 and got[("agx-orin-0", "0.5")] == 9.0 / 1000
    fps = {lbl["node"]: (lbl["device"], v) for n, lbl, v in kinds.samples(body)
           if n == "edgetune_benchmark_device_throughput_fps"}
    assert fps["orin-nx-0"] == ("Orin NX (JetPack 6.0)", round(1000 / 17.5, 2))
    assert "edgetune_benchmark_latency_seconds" not in {n for n, _, _ in kinds.samples(body)}
    text = generate_latest(metrics.Metrics(lambda: [body]).registry).decode()
    assert ('edgetune_benchmark_device_latency_seconds{backend="onnxruntime",device="Orin Nano (JetPack 6.0)",'
            'model="rtmdet_tiny_8xb32-300e_coco",name="bench",namespace="demo",node="orin-nano-0",precision="fp16",'
            'quantile="0.99"} 0.04425') in text
    # level-triggered: planning again changes nothing and creates nothing
    again = kinds.plan(body, jobs, pods, S, at(90), related=conv_done("onnxruntime"), nodes=nodes)
    assert merge_patch(body["status"], again.status) is None and not again.create and not again.events


def test_a_not_ready_node_gives_a_row_with_that_reason_and_the_others_succeed():
    lost = node("orin-nx-0", ready="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.")
    nodes = fleet_nodes(**{"orin-nx-0": lost})
    body, p = start(nodes)
    assert sorted(m["metadata"]["labels"][names.LABEL_NODE] for m in p.create) == ["agx-orin-0", "orin-nano-0"]
    nx = next(r for r in p.status["devices"] if r["node"] == "orin-nx-0")
    assert nx["phase"] == "Skipped" and nx["reason"] == "NodeNotReady" and "job" not in nx
    assert "Kubelet stopped posting node status." in nx["message"] and iso(-60) in nx["message"]
    assert ("Warning", "NodeNotReady") in [e[:2] for e in p.events]
    body = advance(body, p)
    manifests = {m["metadata"]["labels"][names.LABEL_NODE]: m for m in p.create}
    jobs = [job(m, complete=True, end=40) for m in manifests.values()]
    pods = [pod(m, phase="Succeeded", node=n, exit_code=0, message=bench(10.0, 12.0, n)) for n, m in manifests.items()]
    p = kinds.plan(body, jobs, pods, S, at(60), related=conv_done("onnxruntime"), nodes=nodes)
    st = p.status
    assert st["phase"] == "Succeeded"
    assert [(r["node"], r["phase"]) for r in st["devices"]] == [
        ("agx-orin-0", "Succeeded"), ("orin-nano-0", "Succeeded"), ("orin-nx-0", "Skipped")]
    assert st["fleet"]["measured"] == 2 and st["fleet"]["skipped"] == 1 and st["fleet"]["devices"] == 3
    c = cond(st, "AllDevicesMeasured")
    assert c["status"] == "False" and c["reason"] == "DevicesNotMeasured" and "orin-nx-0: Skipped (NodeNotReady)" in c["message"]
    assert ("Warning", "DevicesNotMeasured") in [e[:2] for e in p.events]
    # the node coming back later changes nothing: the fleet was fixed when its Jobs were created
    body = advance(body, p)
    back = kinds.plan(body, jobs, pods, S, at(120), related=conv_done("onnxruntime"), nodes=fleet_nodes())
    assert not back.create and merge_patch(body["status"], back.status) is None


def test_cordoned_tainted_and_unlabelled_nodes():
    nodes = fleet_nodes(**{
        "orin-nano-0": node("orin-nano-0", unschedulable=True),
        "agx-orin-0": node("agx-orin-0", taints=(EDGE_TAINT, {"key": "maintenance", "value": "true",
                                                              "effect": "NoSchedule"})),
        "orin-nx-0": node("orin-nx-0", taints=(EDGE_TAINT, {"key": "spot", "effect": "PreferNoSchedule"}))})
    body, p = start(nodes)
    rows = {r["node"]: r for r in p.status["devices"]}
    assert rows["orin-nano-0"]["reason"] == "NodeUnschedulable"
    assert rows["agx-orin-0"]["reason"] == "UntoleratedTaint" and "maintenance=true:NoSchedule" in \
        rows["agx-orin-0"]["message"]
    assert rows["orin-nx-0"]["phase"] == "Pending"  # PreferNoSchedule does not keep a Pod off
    assert [m["metadata"]["labels"][names.LABEL_NODE] for m in p.create] == ["orin-nx-0"]
    # a toleration in the target lets the tainted node run it
    spec = {**FLEET, "target": {"tolerations": [EDGE_TAINT, {"key": "maintenance", "operator": "Exists"}]}}
    _, p = start(nodes, spec)
    assert sorted(m["metadata"]["labels"][names.LABEL_NODE] for m in p.create) == ["agx-orin-0", "orin-nx-0"]


def test_no_matching_or_no_ready_node_waits():
    body, p = start({"gpu-node-0": node("gpu-node-0")})
    assert p.status["phase"] == "Waiting" and not p.create and "devices" not in p.status
    assert cond(p.status, "DevicesReady")["reason"] == "NoMatchingNodes"
    assert "edgetune.io/device=jetson-orin" in p.status["message"]
    down = {n: node(n, ready="False", reason="KubeletNotReady", message="PLEG is not healthy") for n in PRODUCTS}
    body, p = start(down)
    assert p.status["phase"] == "Waiting" and not p.create and cond(p.status, "DevicesReady")["reason"] == "NoReadyNodes"
    # one comes back: the fleet starts with it, the others are rows with their reason
    body = advance(body, p)
    p = kinds.plan(body, [], [], S, at(30), related=conv_done("onnxruntime"),
                   nodes={**down, "orin-nx-0": node("orin-nx-0")})
    assert [m["metadata"]["name"] for m in p.create] == ["bench-benchmark-orin-nx-0"]
    assert [r["reason"] for r in p.status["devices"] if r["phase"] == "Skipped"] == ["NodeNotReady", "NodeNotReady"]


def test_failed_devices_and_a_fleet_where_none_was_measured():
    nodes = {n: node(n) for n in ("orin-nano-0", "orin-nx-0")}
    body, p = start(nodes)
    manifests = {m["metadata"]["labels"][names.LABEL_NODE]: m for m in p.create}
    body = advance(body, p)
    failing = result("benchmark", ok=False, reason="InvalidModel", message="engine deserialization failed")
    jobs = [job(manifests["orin-nano-0"], failed=True), job(manifests["orin-nx-0"], complete=True, end=40)]
    pods = [pod(manifests["orin-nano-0"], phase="Failed", node="orin-nano-0", exit_code=1, message=failing),
            pod(manifests["orin-nx-0"], phase="Succeeded", node="orin-nx-0", exit_code=0,
                message=bench(17.0, 20.0, "Orin NX"))]
    p = kinds.plan(body, jobs, pods, S, at(60), related=conv_done("onnxruntime"), nodes=nodes)
    rows = {r["node"]: r for r in p.status["devices"]}
    assert rows["orin-nano-0"]["phase"] == "Failed" and rows["orin-nano-0"]["reason"] == "InvalidModel"
    assert p.status["phase"] == "Succeeded" and p.status["fleet"]["failed"] == 1
    assert ("Warning", "StepFailed") in [e[:2] for e in p.events]
    # every device failed: the resource failed, naming them
    body, p = start(nodes)
    body = advance(body, p)
    jobs = [job(m, failed=True) for m in manifests.values()]
    pods = [pod(m, phase="Failed", node=n, exit_code=1, message=failing) for n, m in manifests.items()]
    p = kinds.plan(body, jobs, pods, S, at(60), related=conv_done("onnxruntime"), nodes=nodes)
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "NoDeviceMeasured"
    assert "orin-nano-0: Failed (InvalidModel)" in p.status["message"]


def test_a_node_lost_while_its_job_runs_shows_in_its_row():
    nodes = fleet_nodes()
    body, p = start(nodes)
    manifests = {m["metadata"]["labels"][names.LABEL_NODE]: m for m in p.create}
    body = advance(body, p)
    jobs = [job(m, active=1) for m in manifests.values()]
    pods = [pod(m, phase="Running", node=n) for n, m in manifests.items()]
    lost = node("agx-orin-0", ready="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.")
    p = kinds.plan(body, jobs, pods, S, at(60), related=conv_done("onnxruntime"), nodes={**nodes, "agx-orin-0": lost})
    agx = next(r for r in p.status["devices"] if r["node"] == "agx-orin-0")
    assert agx["phase"] == "Running" and agx["reason"] == "NodeNotReady"
    assert ("Warning", "NodeNotReady") in [e[:2] for e in p.events]
    assert p.status["phase"] == "Running"


def test_a_tensorrt_engine_runs_only_on_its_own_device_group():
    conv = conv_done("tensorrt")
    conv["status"]["steps"] = [{"name": "build-engine", "phase": "Succeeded", "node": "agx-orin-0"}]
    twin = node("agx-orin-1", labels={"nvidia.com/gpu.product": "NVIDIA-Jetson-AGX-Orin",
                                      "nvidia.com/jetpack.version": "6.0"})
    body, p = start({**fleet_nodes(), "agx-orin-1": twin}, related=conv)
    rows = {r["node"]: r for r in p.status["devices"]}
    assert [n for n, r in rows.items() if r["phase"] == "Pending"] == ["agx-orin-0", "agx-orin-1"]
    nx = rows["orin-nx-0"]
    assert nx["reason"] == "EngineNotPortable" and "built on node agx-orin-0" in nx["message"]
    assert "nvidia.com/gpu.product=NVIDIA-Jetson-Orin-NX" in nx["message"]


def test_long_node_names_give_valid_job_names_and_labels():
    long = "jetson-orin-nano-devkit-rack-7-shelf-3.factory-floor.example.com"
    nodes = {long: node(long, labels={"nvidia.com/gpu.product": "NVIDIA-Jetson-Orin-Nano",
                                      "nvidia.com/jetpack.version": "6.0"})}
    body, p = start(nodes)
    (m,) = p.create
    name, label = m["metadata"]["name"], m["metadata"]["labels"][names.LABEL_NODE]
    assert len(name) <= 63 and name.startswith("bench-benchmark-") and "." not in name
    assert len(label) <= 63 and label != long
    assert m["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == [long]
    assert p.status["devices"][0]["job"] == name


# --- the executor: every node for a fleet, node events wake it ------------------------------------

def test_the_executor_gives_a_fleet_every_node_and_node_changes_wake_it():
    import asyncio
    import copy

    from test_operator_executor import FakeKube, Index

    from edgetune_operator.controller.executor import Executor
    from edgetune_operator.settings import from_env

    def raw(name, ready="True", **labels):
        product, jetpack = PRODUCTS[name]
        return {"metadata": {"name": name, "labels": {"edgetune.io/device": "jetson-orin", "nvidia.com/gpu.product": product,
                                                      "nvidia.com/jetpack.version": jetpack, **labels}},
                "spec": {"taints": [EDGE_TAINT]},
                "status": {"conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": iso(0)}]}}

    async def go():
        kube = FakeKube()
        rt = Executor(from_env({}), kube)
        rt.jobs_index, rt.pods_index = Index(), Index()
        conv = conv_done("onnxruntime")
        eb = res("EdgeBenchmark", FLEET, "bench")
        other = res("EdgeBenchmark", {"modelConversion": "conv"}, "single")
        for b in (conv, eb, other):
            kube.objects[(b["kind"], "demo", b["metadata"]["name"])] = copy.deepcopy(b)
            rt.store.put(b)
        rt.nodes_index = Index({n: [observe.summarize_node(raw(n))] for n in ("orin-nano-0", "orin-nx-0")})

        def drain():
            out = []
            while not rt.queue.queue.empty():
                out.append(rt.queue.queue.get_nowait()[2])
            rt.queue.queued.clear()
            return sorted(out)
        drain()
        await rt.reconcile(("EdgeBenchmark", "demo", "bench"))
        assert sorted(kube.jobs) == ["bench-benchmark-orin-nano-0", "bench-benchmark-orin-nx-0"]
        rows = rt.store.get(("EdgeBenchmark", "demo", "bench"))["status"]["devices"]
        assert [r["node"] for r in rows] == ["orin-nano-0", "orin-nx-0"]
        drain()
        rt.node_observed(raw("agx-orin-0"))  # a node joins: the unfinished fleet looks again
        assert drain() == [("EdgeBenchmark", "demo", "bench")]
        rt.node_observed(raw("agx-orin-0"))  # a heartbeat changes nothing
        assert drain() == []
        rt.node_observed(raw("agx-orin-0", **{"nvidia.com/jetpack.version": "6.1"}))  # relabelled
        assert drain() == [("EdgeBenchmark", "demo", "bench")]
        rt.node_observed(raw("agx-orin-0", ready="Unknown"))
        assert drain() == [("EdgeBenchmark", "demo", "bench")]
        rt.node_observed(raw("agx-orin-0"), deleted=True)
        assert drain() == [("EdgeBenchmark", "demo", "bench")]
        # a finished fleet no longer needs nodes
        done = copy.deepcopy(rt.store.get(("EdgeBenchmark", "demo", "bench")))
        done["status"]["phase"] = "Succeeded"
        done["metadata"]["resourceVersion"] = "999"
        rt.store.put(done)
        drain()
        rt.node_observed(raw("agx-orin-0"))
        assert drain() == []
    asyncio.run(go())


def test_a_part_of_a_step_has_its_own_folder_and_artifact_set():
    from edgetune_contract import store
    assert names.step_dir("benchmark", 1, "orin-nx-0") == "benchmark@orin-nx-0"
    assert names.job_name("bench", "benchmark", 1, "orin-nx-0") == "bench-benchmark-orin-nx-0"
    # a node name that is no DNS label: a cleaned prefix and a hash, distinct per name
    a, b = names.part_label("Orin.NX.0"), names.part_label("orin-nx-0.lab")
    assert a != b and all(len(x) <= 24 and x.replace("-", "").isalnum() and x == x.lower() for x in (a, b))
    s3 = store.S3Store(endpoint="http://s3:8333", bucket="b", prefix="p/", region="us-east-1", secret_name="s")
    uri = s3.artifact_uri("demo", "EdgeBenchmark", "bench", "benchmark", "latency.json", 1, "orin-nx-0")
    assert uri == "s3://b/p/demo/edgebenchmark/bench/benchmark@orin-nx-0/latency.json"
    assert store.step_set_prefix(uri, s3.root) == "s3://b/p/demo/edgebenchmark/bench/benchmark@orin-nx-0"
    assert store.step_set_prefix("s3://b/p/demo/edgebenchmark/bench/nonsense@x/f", s3.root) is None
