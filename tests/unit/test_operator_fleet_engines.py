"""A ModelConversion with spec.fleet builds one engine per device group among the Ready nodes its
target selects; verify measures one group's engine on a node of that group; a fleet
EdgeBenchmark runs each node's own group's engine, and a node whose group has no engine gets a
row saying so."""
from __future__ import annotations

from test_operator_fleet import FLEET, bench, node
from test_operator_plan import S, advance, at, cond, ft_done, job, parsed, pod, res, result

from edgetune_contract import names
from edgetune_contract.args import BenchmarkArgs, BuildEngineArgs, VerifyArgs
from edgetune_operator import kinds

MC = {"source": {"finetuneJob": "balloon"}, "backend": "tensorrt", "precision": "fp16", "fleet": {},
      "verify": {"maxMapDrop": 0.02}}
EXPORT = result("export", metrics={"onnx_bytes": 1234}, artifacts={"onnx": "end2end.onnx", "meta": "pipeline.json"})
NX = {"nvidia.com/gpu.product": "NVIDIA-Jetson-Orin-NX", "nvidia.com/jetpack.version": "5.1.2"}
AGX = {"nvidia.com/gpu.product": "NVIDIA-Jetson-AGX-Orin", "nvidia.com/jetpack.version": "6.0"}
NANO = {"nvidia.com/gpu.product": "NVIDIA-Jetson-Orin-Nano", "nvidia.com/jetpack.version": "6.0"}


def nodes(**override):
    out = {n: node(n) for n in ("agx-orin-0", "orin-nano-0", "orin-nx-0", "gpu-node-0")}
    out["agx-orin-1"] = node("agx-orin-1", labels=AGX)  # a second AGX Orin: same device group
    out.update(override)
    return out


def built(manifest, node_name, t=200):
    doc = result("build-engine", metrics={"build_seconds": 30.0, "engine_bytes": 7e6},
                 artifacts={"engine": "end2end.engine"}, provenance={"tensorrt": "8.6.2"})
    return job(manifest, complete=True, start=t - 10, end=t), pod(manifest, phase="Succeeded", node=node_name,
                                                                  exit_code=0, message=doc, suffix=node_name[:5])


def through_export(n):
    body = res("ModelConversion", MC, "conv")
    p = kinds.plan(body, [], [], S, at(0), related=ft_done(), nodes=n)
    (export,) = p.create
    body = advance(body, p)
    jobs = [job(export, complete=True, start=90, end=100)]
    pods = [pod(export, phase="Succeeded", node="gpu-node-0", exit_code=0, message=EXPORT)]
    return body, jobs, pods


def test_one_build_per_device_group_then_verify_on_its_group():
    n = nodes()
    body, jobs, pods = through_export(n)
    p = kinds.plan(body, jobs, pods, S, at(101), nodes=n)
    by_group = {m["metadata"]["labels"][names.LABEL_DEVICE_GROUP]: m for m in p.create}
    assert len(by_group) == 3  # AGX Orin (2 nodes), Orin NX, Orin Nano
    engines = p.status["engines"]
    assert [e["labels"] for e in engines] == sorted([AGX, NX, NANO], key=lambda g: engines_order(g))
    agx = next(e for e in engines if e["labels"] == AGX)
    assert agx["nodes"] == ["agx-orin-0", "agx-orin-1"] and agx["phase"] == "Pending"
    m = by_group[agx["group"]]
    assert m["metadata"]["name"] == f"conv-build-engine-{agx['group']}" and len(m["metadata"]["name"]) <= 63
    # any node of the group may build it: the target's selector plus the group's labels, no pin
    spec = m["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"edgetune.io/device": "jetson-orin", **AGX} and "affinity" not in spec
    args = parsed(m, BuildEngineArgs)
    assert args.out == f"/artifacts/demo/modelconversion/conv/build-engine@{agx['group']}"
    assert args.onnx == "/artifacts/demo/modelconversion/conv/export/end2end.onnx"
    assert p.status["stage"] == "build-engine" and p.status["phase"] == "Pending"
    body = advance(body, p)

    # two built, one still running: no verify yet
    ms = {e["labels"]["nvidia.com/gpu.product"]: by_group[e["group"]] for e in engines}
    j1, p1 = built(ms["NVIDIA-Jetson-AGX-Orin"], "agx-orin-1")
    j2, p2 = built(ms["NVIDIA-Jetson-Orin-NX"], "orin-nx-0")
    j3 = job(ms["NVIDIA-Jetson-Orin-Nano"], active=1)
    p3 = pod(ms["NVIDIA-Jetson-Orin-Nano"], phase="Running", node="orin-nano-0")
    p = kinds.plan(body, jobs + [j1, j2, j3], pods + [p1, p2, p3], S, at(201), nodes=n)
    assert not p.create and p.status["phase"] == "Running"
    assert "2 of 3 device group(s) built, 1 building" in p.status["message"]
    body = advance(body, p)
    j3, p3 = built(ms["NVIDIA-Jetson-Orin-Nano"], "orin-nano-0", t=250)
    p = kinds.plan(body, jobs + [j1, j2, j3], pods + [p1, p2, p3], S, at(251), nodes=n)
    (verify,) = p.create
    st = p.status
    rows = {e["labels"]["nvidia.com/gpu.product"]: e for e in st["engines"]}
    assert rows["NVIDIA-Jetson-AGX-Orin"]["node"] == "agx-orin-1"
    assert rows["NVIDIA-Jetson-AGX-Orin"]["engine"] == \
        f"pvc://edgetune-artifacts/demo/modelconversion/conv/build-engine@{agx['group']}/end2end.engine"
    assert st["provenance"][f"build-engine@{agx['group']}"] == {"tensorrt": "8.6.2"}
    first = st["engines"][0]
    assert first["verified"] and sum(bool(e.get("verified")) for e in st["engines"]) == 1
    assert st["artifacts"]["engine"] == first["engine"] and st["metrics"]["engineBytes"] == 7e6
    vargs = parsed(verify, VerifyArgs)
    assert vargs.model == first["engine"].replace("pvc://edgetune-artifacts", "/artifacts")
    assert verify["spec"]["template"]["spec"]["nodeSelector"] == {"edgetune.io/device": "jetson-orin",
                                                                  **first["labels"]}
    assert cond(st, "AllGroupsBuilt")["status"] == "True"
    assert [s["name"] for s in st["steps"]] == ["export", "build-engine", "verify"]
    assert st["steps"][1]["phase"] == "Succeeded"


def engines_order(labels):
    from edgetune_operator.kinds.modelconversion_fleet import group_id
    return group_id(labels)


def test_a_failed_group_is_recorded_and_no_build_at_all_fails():
    n = {k: v for k, v in nodes().items() if k in ("orin-nx-0", "orin-nano-0", "gpu-node-0")}
    body, jobs, pods = through_export(n)
    p = kinds.plan(body, jobs, pods, S, at(101), nodes=n)
    ms = {m["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]: m for m in p.create}
    body = advance(body, p)
    bad = result("build-engine", ok=False, reason="EngineBuildFailed", message="out of memory building the engine")
    jf = job(ms["NVIDIA-Jetson-Orin-Nano"], failed=True)
    pf = pod(ms["NVIDIA-Jetson-Orin-Nano"], phase="Failed", node="orin-nano-0", exit_code=1, message=bad)
    jo, po = built(ms["NVIDIA-Jetson-Orin-NX"], "orin-nx-0")
    p = kinds.plan(body, jobs + [jf, jo], pods + [pf, po], S, at(201), nodes=n)
    assert len(p.create) == 1  # the verify, on the NX engine
    c = cond(p.status, "AllGroupsBuilt")
    assert c["status"] == "False" and "EngineBuildFailed" in c["message"] and "Orin-Nano" in c["message"]
    assert ("Warning", "StepFailed") in [e[:2] for e in p.events]
    # every group failed: the conversion fails with the step's reason
    body, jobs, pods = through_export(n)
    p = kinds.plan(body, jobs, pods, S, at(101), nodes=n)
    body = advance(body, p)
    jf2 = [job(m, failed=True) for m in ms.values()]
    pf2 = [pod(m, phase="Failed", node="x", exit_code=1, message=bad) for m in ms.values()]
    p = kinds.plan(body, jobs + jf2, pods + pf2, S, at(201), nodes=n)
    assert p.status["phase"] == "Failed" and cond(p.status, "Failed")["reason"] == "EngineBuildFailed"
    assert not p.create


def test_no_ready_node_to_build_on_waits():
    down = {k: node(k, ready="Unknown", reason="NodeStatusUnknown") for k in ("orin-nx-0", "orin-nano-0")}
    body, jobs, pods = through_export(down)
    p = kinds.plan(body, jobs, pods, S, at(101), nodes=down)
    assert not p.create and p.status["phase"] == "Pending" and p.status["stage"] == "build-engine"
    assert "orin-nx-0: NodeNotReady" in p.status["message"]
    assert kinds.wants_all_nodes(advance(body, p))


def test_a_fleet_benchmark_runs_each_nodes_own_engine():
    group = {"NX": "nx-group", "AGX": "agx-group"}
    conv = res("ModelConversion", {**MC, "verify": {"enabled": False}}, "conv", status={
        "phase": "Succeeded", "model": "rtmdet",
        "artifacts": {"engine": "pvc://edgetune-artifacts/demo/modelconversion/conv/build-engine@nx-group/e.engine",
                      "meta": "pvc://edgetune-artifacts/demo/modelconversion/conv/export/pipeline.json"},
        "engines": [{"group": group[k], "labels": labels, "phase": "Succeeded",
                     "engine": f"pvc://edgetune-artifacts/demo/modelconversion/conv/build-engine@{group[k]}/e.engine"}
                    for k, labels in (("AGX", AGX), ("NX", NX))]})
    n = nodes()
    body = res("EdgeBenchmark", FLEET, "bench")
    p = kinds.plan(body, [], [], S, at(0), related=conv, nodes=n)
    models = {m["metadata"]["labels"][names.LABEL_NODE]: parsed(m, BenchmarkArgs).model for m in p.create}
    assert models == {"agx-orin-0": "/artifacts/demo/modelconversion/conv/build-engine@agx-group/e.engine",
                      "agx-orin-1": "/artifacts/demo/modelconversion/conv/build-engine@agx-group/e.engine",
                      "orin-nx-0": "/artifacts/demo/modelconversion/conv/build-engine@nx-group/e.engine"}
    rows = {r["node"]: r for r in p.status["devices"]}
    assert rows["orin-nano-0"]["phase"] == "Skipped" and rows["orin-nano-0"]["reason"] == "NoEngineForDevice"
    assert rows["agx-orin-1"]["model"].endswith("build-engine@agx-group/e.engine")
    # the rows' figures come back per node as before
    body = advance(body, p)
    ms = {m["metadata"]["labels"][names.LABEL_NODE]: m for m in p.create}
    jobs = [job(m, complete=True, end=40) for m in ms.values()]
    pods = [pod(m, phase="Succeeded", node=k, exit_code=0, message=bench(10.0, 12.0 + i, k))
            for i, (k, m) in enumerate(sorted(ms.items()))]
    p = kinds.plan(body, jobs, pods, S, at(60), related=conv, nodes=n)
    assert p.status["phase"] == "Succeeded"
    assert p.status["fleet"]["worstNode"] == "orin-nx-0" and p.status["fleet"]["worstP99Ms"] == 14.0
