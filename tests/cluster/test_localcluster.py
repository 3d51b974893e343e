"""The local cluster itself: real API server, scheduler, Job controller and garbage collector,
and real nodes (kubelet + containerd + runc + CNI) running the locally built images."""
from __future__ import annotations

import functools
import json
import textwrap
import time

import pytest
import support

wait_for = functools.partial(support.wait_for, interval=0.2)

pytestmark = pytest.mark.cluster

JETSON = {"nodeSelector": {"edgetune.io/device": "jetson-orin"},
          "tolerations": [{"key": "edgetune.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]}


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get(cluster, kind, name=None, ns=None, selector=None):
    args = ["get", kind] + ([name] if name else []) + (["-n", ns] if ns else []) + (["-l", selector] if selector else [])
    return json.loads(cluster.kubectl(*args, "-o", "json").stdout)


def job(name, ns, container, pod_extra=None, backoff=0):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
            "spec": {"backoffLimit": backoff, "template": {"spec": {
                "restartPolicy": "Never", "containers": [container], **(pod_extra or {})}}}}


def job_pods(cluster, ns, name):
    return get(cluster, "pods", ns=ns, selector=f"job-name={name}")["items"]


def py(code: str) -> list[str]:
    return ["python", "-c", textwrap.dedent(code)]


def base(cluster) -> str:
    """The Debian + Python image every node has (built here, never pulled)."""
    return cluster.images["base"]


def container_pid(cluster, node: str, container_id: str) -> int | None:
    """The host pid of a running container's process (containerd's task list on its node)."""
    cid = container_id.split("://", 1)[1]
    for line in cluster.ctr(node, "tasks", "ls").stdout.splitlines()[1:]:
        f = line.split()
        if f and f[0] == cid and f[2] == "RUNNING":
            return int(f[1])
    return None


def pid_alive(pid: int) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_nodes_modelled_on_real_ones(local_cluster):
    nodes = {n["metadata"]["name"]: n for n in get(local_cluster, "nodes")["items"]}
    gpu, jet = nodes["gpu-node-0"], nodes["jetson-orin-0"]
    assert gpu["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
    assert gpu["metadata"]["labels"]["edgetune.io/device"] == "x86-gpu"
    assert gpu["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    assert not [t for t in gpu["spec"].get("taints") or [] if t["key"] == "edgetune.io/edge"]
    assert jet["metadata"]["labels"]["edgetune.io/device"] == "jetson-orin"
    assert "nvidia.com/jetpack.version" in jet["metadata"]["labels"]
    assert {"key": "edgetune.io/edge", "value": "true", "effect": "NoSchedule"} in jet["spec"]["taints"]
    assert jet["status"]["allocatable"]["nvidia.com/gpu"] == "1"
    ips = set()
    for n in (gpu, jet):
        ready = [c for c in n["status"]["conditions"] if c["type"] == "Ready"][0]
        assert ready["status"] == "True"
        assert n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == 10250
        # real kubelets on this machine: its one CPU architecture (what stays simulated)
        assert n["metadata"]["labels"]["kubernetes.io/arch"] == "amd64"
        info = n["status"]["nodeInfo"]
        assert info["kubeletVersion"] == "v1.37.2"
        assert info["containerRuntimeVersion"].startswith("containerd://2."), info
        (ip,) = [a["address"] for a in n["status"]["addresses"] if a["type"] == "InternalIP"]
        assert not ip.startswith("127.")
        ips.add(ip)
    assert len(ips) == 2
    leases = get(local_cluster, "leases", ns="kube-node-lease")["items"]
    assert {"gpu-node-0", "jetson-orin-0"} <= {lease["metadata"]["name"] for lease in leases}


def test_jetson_job_pvc_and_termination_message(local_cluster, namespace):
    ns = namespace
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "work", "namespace": ns},
           "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    code = """
        import argparse, json, os, platform
        ap = argparse.ArgumentParser(); ap.add_argument("--out"); a = ap.parse_args()
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        open(a.out, "w").write("weights")
        with open(os.environ["EDGETUNE_RESULT_PATH"], "w") as f:
            json.dump({"ok": True, "node": os.environ["NODE"], "pod": os.environ["POD"]}, f)
        print("done")
    """
    c = {"name": "bench", "image": base(local_cluster), "imagePullPolicy": "Never", "command": py(code),
         "args": ["--out", "/artifacts/run1/x.bin"],
         "env": [{"name": "EDGETUNE_RESULT_PATH", "value": "/dev/termination-log"},
                 {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                 {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
         "volumeMounts": [{"name": "work", "mountPath": "/artifacts"}],
         "resources": {"limits": {"nvidia.com/gpu": "1"}}}
    apply(local_cluster, pvc, job("edge", ns, c, {**JETSON, "volumes": [
        {"name": "work", "persistentVolumeClaim": {"claimName": "work"}}]}))

    def done():
        j = get(local_cluster, "job", "edge", ns)
        return [x for x in j.get("status", {}).get("conditions") or [] if x["status"] == "True"
                and x["type"] in ("Complete", "Failed")]
    conds = wait_for(done, 60, what="job to finish")
    assert conds[-1]["type"] == "Complete", conds
    (pod,) = job_pods(local_cluster, ns, "edge")
    assert pod["spec"]["nodeName"] == "jetson-orin-0"
    assert pod["status"]["phase"] == "Succeeded"
    term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert json.loads(term["message"]) == {"ok": True, "node": "jetson-orin-0", "pod": pod["metadata"]["name"]}
    assert (local_cluster.pvc_path(ns, "work") / "run1" / "x.bin").read_text() == "weights"
    assert pod["status"]["containerStatuses"][0]["image"] == base(local_cluster)


def test_fallback_to_logs_env_sources_and_volumes(local_cluster, namespace):
    ns = namespace
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": ns},
          "data": {"mode": "fast", "config.yaml": "lr: 0.01\n"}}
    sec = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": ns},
           "stringData": {"token": "s3cret"}}
    code = """
        import os, sys
        assert os.environ["MODE"] == "fast", os.environ.get("MODE")
        assert os.environ["TOKEN"] == "s3cret"
        assert os.environ["GREETING"] == "mode=fast"
        assert open("/etc/cfg/config.yaml").read() == "lr: 0.01\\n"
        assert open("/etc/creds/token").read() == "s3cret"
        open("/scratch/a", "w").write("x")
        assert os.path.exists("a")  # workingDir /scratch is the emptyDir
        print("something went wrong: boom")
        sys.exit(3)
    """
    c = {"name": "main", "image": base(local_cluster), "command": py(code), "workingDir": "/scratch",
         "terminationMessagePolicy": "FallbackToLogsOnError",
         "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                 {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                 {"name": "GREETING", "value": "mode=$(MODE)"}],
         "volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}, {"name": "creds", "mountPath": "/etc/creds"},
                          {"name": "scratch", "mountPath": "/scratch"}]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": ns},
           "spec": {"restartPolicy": "Never", "containers": [c], "volumes": [
               {"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "creds", "secret": {"secretName": "creds"}},
               {"name": "scratch", "emptyDir": {}}]}}
    apply(local_cluster, cm, sec, pod)
    p = wait_for(lambda: (lambda x: x if x["status"].get("phase") in ("Succeeded", "Failed") else None)(
        get(local_cluster, "pod", "p", ns)), 60, what="pod to finish")
    assert p["spec"]["nodeName"] == "gpu-node-0"  # no toleration: never the Jetson
    assert p["status"]["phase"] == "Failed"
    term = p["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3, term
    assert term["reason"] == "Error"
    assert "boom" in term["message"], term


def test_gpu_overcommit_is_unschedulable_and_taint_keeps_pods_off_jetson(local_cluster, namespace):
    ns = namespace
    big = {"name": "c", "image": "x", "command": ["sleep", "1"], "resources": {"limits": {"nvidia.com/gpu": "2"}}}
    apply(local_cluster, job("two-gpus", ns, big, JETSON))
    # asks for the Jetson but does not tolerate its taint
    intolerant = {"name": "c", "image": "x", "command": ["sleep", "1"]}
    apply(local_cluster, job("no-toleration", ns, intolerant, {"nodeSelector": {"edgetune.io/device": "jetson-orin"}}))
    # ordinary Pods: wherever the scheduler likes, but never on the tainted edge node
    ordinary = job("ordinary", ns, {"name": "c", "image": base(local_cluster), "command": ["true"]})
    ordinary["spec"].update({"parallelism": 4, "completions": 4})
    apply(local_cluster, ordinary)

    def unschedulable(name):
        def f():
            pods = job_pods(local_cluster, ns, name)
            for p in pods:
                for c in p["status"].get("conditions") or []:
                    if c["type"] == "PodScheduled" and c["status"] == "False" and c.get("reason") == "Unschedulable":
                        return p, c
            return None
        return f
    p, cond = wait_for(unschedulable("two-gpus"), 30, what="Unschedulable")
    assert "nvidia.com/gpu" in cond["message"], cond
    assert p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")
    p, cond = wait_for(unschedulable("no-toleration"), 30, what="Unschedulable")
    assert "untolerated taint" in cond["message"], cond
    wait_for(lambda: get(local_cluster, "job", "ordinary", ns).get("status", {}).get("succeeded") == 4, 60,
             what="4 completions")
    assert {p["spec"]["nodeName"] for p in job_pods(local_cluster, ns, "ordinary")} == {"gpu-node-0"}
    time.sleep(1)
    for name in ("two-gpus", "no-toleration"):
        for p in job_pods(local_cluster, ns, name):
            assert p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")


def test_deleting_a_job_collects_its_pods_and_kills_the_process(local_cluster, namespace):
    ns = namespace
    c = {"name": "c", "image": base(local_cluster),
         "command": py("import time\nprint('up', flush=True)\ntime.sleep(600)")}
    apply(local_cluster, job("sleeper", ns, c))

    def running_pid():
        for p in job_pods(local_cluster, ns, "sleeper"):
            for s in p["status"].get("containerStatuses") or []:
                if "running" in (s.get("state") or {}) and s.get("containerID"):
                    return container_pid(local_cluster, p["spec"]["nodeName"], s["containerID"])
        return None
    pid = wait_for(running_pid, 60, what="running pod")
    assert pid_alive(pid)
    # the kubectl default (background propagation): the garbage collector deletes the Pods
    local_cluster.kubectl("delete", "job", "sleeper", "-n", ns, "--wait=false")
    wait_for(lambda: not job_pods(local_cluster, ns, "sleeper"), 60, what="pods collected")
    wait_for(lambda: not pid_alive(pid), 10, what="process killed")


def test_kubectl_logs_of_a_running_pod(local_cluster, namespace):
    ns = namespace
    code = "import time\nfor i in range(3): print(f'line {i}', flush=True)\ntime.sleep(600)"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker", "namespace": ns},
           "spec": {"terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "c", "image": base(local_cluster), "command": py(code)}]}}
    apply(local_cluster, pod)
    wait_for(lambda: get(local_cluster, "pod", "talker", ns)["status"].get("phase") == "Running", 60, what="Running")
    out = wait_for(lambda: (lambda r: r.stdout if "line 2" in r.stdout else None)(
        local_cluster.kubectl("logs", "talker", "-n", ns, check=False)), 20, what="logs")
    assert out.splitlines() == ["line 0", "line 1", "line 2"]
    assert local_cluster.kubectl("logs", "talker", "-n", ns, "--tail=1").stdout == "line 2\n"
    local_cluster.kubectl("delete", "pod", "talker", "-n", ns, "--wait=true", "--timeout=30s")


def test_kubectl_logs_follow_until_the_process_ends(local_cluster, namespace):
    ns = namespace
    code = "import time\nfor i in range(4):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)"
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ticker", "namespace": ns},
           "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "c", "image": base(local_cluster), "command": py(code)}]}}
    apply(local_cluster, pod)
    wait_for(lambda: get(local_cluster, "pod", "ticker", ns)["status"].get("phase") in ("Running", "Succeeded"),
             60, what="Running")
    out = local_cluster.kubectl("logs", "-f", "ticker", "-n", ns, timeout=30).stdout
    assert out.splitlines() == [f"tick {i}" for i in range(4)]


def test_cel_rule_rejects_a_bad_object(local_cluster):
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "ranges.test.edgetune.io"},
           "spec": {"group": "test.edgetune.io", "scope": "Namespaced",
                    "names": {"plural": "ranges", "singular": "range", "kind": "Range"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "properties": {"spec": {
                            "type": "object",
                            "x-kubernetes-validations": [{"rule": "self.low <= self.high",
                                                          "message": "low must not exceed high"}],
                            "properties": {"low": {"type": "integer", "default": 0}, "high": {"type": "integer"}},
                            "required": ["high"]}}}}}]}}
    apply(local_cluster, crd)
    wait_for(lambda: any(c["type"] == "Established" and c["status"] == "True" for c in
                         get(local_cluster, "crd", "ranges.test.edgetune.io")["status"].get("conditions") or []),
             30, what="CRD established")

    def obj(name, low, high):
        return {"apiVersion": "test.edgetune.io/v1", "kind": "Range", "metadata": {"name": name, "namespace": "default"},
                "spec": {"low": low, "high": high}}
    bad = wait_for(lambda: (lambda r: r if "not found" not in r.stderr else None)(local_cluster.kubectl(
        "create", "-f", "-", input=json.dumps(obj("bad", 5, 1)), check=False)), 20, what="CRD served")
    assert bad.returncode != 0
    assert "low must not exceed high" in bad.stderr, bad.stderr
    local_cluster.kubectl("create", "-f", "-", input=json.dumps(obj("good", 1, 5)))
    local_cluster.kubectl("delete", "crd", "ranges.test.edgetune.io", "--wait=false")


def test_serviceaccount_kubeconfig_has_only_its_rbac(local_cluster, namespace):
    ns = namespace
    kc = local_cluster.serviceaccount_kubeconfig(ns, "robot", create=True)
    denied = local_cluster.kubectl("get", "pods", "-n", ns, kubeconfig=kc, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    local_cluster.kubectl("create", "role", "pod-reader", "--verb=get,list,watch", "--resource=pods", "-n", ns)
    local_cluster.kubectl("create", "rolebinding", "robot-reads", "--role=pod-reader",
                          f"--serviceaccount={ns}:robot", "-n", ns)
    wait_for(lambda: local_cluster.kubectl("get", "pods", "-n", ns, kubeconfig=kc, check=False).returncode == 0,
             10, what="RBAC grant")
    assert local_cluster.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}",
                                 kubeconfig=kc).stdout == f"system:serviceaccount:{ns}:robot"
    assert local_cluster.kubectl("get", "pods", "-A", kubeconfig=kc, check=False).returncode != 0


def test_missing_configmap_waits_and_missing_executable_fails(local_cluster, namespace):
    ns = namespace
    waiting = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "needs-cfg", "namespace": ns},
               "spec": {"restartPolicy": "Never", "containers": [{
                   "name": "c", "image": base(local_cluster), "command": ["sh", "-c", "test \"$V\" = late"],
                   "env": [{"name": "V", "valueFrom": {"configMapKeyRef": {"name": "later", "key": "v"}}}]}]}}
    broken = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "no-such-binary", "namespace": ns},
              "spec": {"restartPolicy": "Never", "containers": [{
                  "name": "c", "image": base(local_cluster), "command": ["/nonexistent/tool", "--flag"]}]}}
    apply(local_cluster, waiting, broken)

    def state(name):
        st = get(local_cluster, "pod", name, ns)["status"].get("containerStatuses") or [{}]
        return st[0].get("state") or {}
    w = wait_for(lambda: state("needs-cfg").get("waiting", {}).get("reason") == "CreateContainerConfigError"
                 and state("needs-cfg")["waiting"], 30, what="CreateContainerConfigError")
    assert "later" in w["message"]
    t = wait_for(lambda: state("no-such-binary").get("terminated"), 30, what="StartError")
    assert t["reason"] == "StartError" and t["exitCode"] == 128 and "/nonexistent/tool" in t["message"]
    wait_for(lambda: get(local_cluster, "pod", "no-such-binary", ns)["status"]["phase"] == "Failed", 30,
             what="pod Failed")
    apply(local_cluster, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later", "namespace": ns},
                          "data": {"v": "late"}})
    wait_for(lambda: get(local_cluster, "pod", "needs-cfg", ns)["status"].get("phase") == "Succeeded", 30,
             what="pod to succeed once the ConfigMap exists")


def test_an_image_tarball_refills_pruned_buildah_storage(local_cluster):
    """Pruning buildah's storage to free disk (the README says how) must not make the next run
    build the images again: the cached tarball is loaded back, unchanged."""
    from edgetune_localcluster import images, tools

    ref = images.pause_image(tools.pause_binary())
    tar = images.archive_path(ref)
    stamp = (tar.stat().st_mtime_ns, tar.stat().st_size)
    images.buildah("rmi", "-f", ref)
    assert images.buildah("inspect", "--type", "image", ref, check=False).returncode != 0
    assert images.pause_image(tools.pause_binary()) == ref
    assert images.buildah("inspect", "--type", "image", ref, check=False).returncode == 0
    assert (tar.stat().st_mtime_ns, tar.stat().st_size) == stamp, "the image was built again, not loaded"
