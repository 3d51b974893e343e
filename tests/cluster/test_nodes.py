"""The real nodes: cluster networking (Services, headless Services and DNS from Pods, across
nodes), the kubernetes Service and projected service-account tokens (in-cluster config),
securityContext enforced by runc, and the failures a job Pod can meet on a real node:
over its memory limit (OOMKilled), an image the node does not have (ErrImageNeverPull), a
volume its UID cannot write."""
from __future__ import annotations

import functools
import json
import textwrap
import uuid

import pytest
import support

wait_for = functools.partial(support.wait_for, interval=0.3)

pytestmark = pytest.mark.cluster

JETSON = {"nodeSelector": {"edgetune.io/device": "jetson-orin"},
          "tolerations": [{"key": "edgetune.io/edge", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]}
GPU = {"nodeSelector": {"edgetune.io/device": "x86-gpu"}}
NON_ROOT = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"}}
LOCKED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def apply(cluster, *objs):
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))


def get(cluster, kind, name, ns):
    return json.loads(cluster.kubectl("get", kind, name, "-n", ns, "-o", "json").stdout)


def pod(name, ns, code, image, extra=None, container=None):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "c", "image": image, "imagePullPolicy": "Never",
                                     "command": ["python", "-c", textwrap.dedent(code)],
                                     "terminationMessagePolicy": "FallbackToLogsOnError", **(container or {})}],
                     **(extra or {})}}


def finished(cluster, name, ns, timeout=120):
    return wait_for(lambda: (lambda p: p if p["status"].get("phase") in ("Succeeded", "Failed") else None)(
        get(cluster, "pod", name, ns)), timeout, what=f"pod {name} to finish")


def terminated(p):
    return p["status"]["containerStatuses"][0]["state"]["terminated"]


def test_services_headless_services_and_dns_across_nodes(local_cluster, namespace):
    ns, image = namespace, local_cluster.images["base"]
    server = pod("web", ns, """
        import http.server, socketserver
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = b"hello from web"
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
        socketserver.TCPServer(("", 8080), H).serve_forever()
    """, image, GPU, {"ports": [{"containerPort": 8080}]})
    server["spec"]["restartPolicy"] = "Always"
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    headless = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-pods", "namespace": ns},
                "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 8080}]}}
    apply(local_cluster, server, svc, headless)
    web = wait_for(lambda: (lambda p: p if p["status"].get("podIP") and p["status"].get("phase") == "Running"
                            else None)(get(local_cluster, "pod", "web", ns)), 120, what="web Running")
    cluster_ip = get(local_cluster, "service", "web", ns)["spec"]["clusterIP"]
    # exec through the API server, the kubelet and containerd's streaming server
    assert local_cluster.kubectl("exec", "web", "-n", ns, "--", "python", "-c",
                                 "import os; print(os.getpid())").stdout.strip().isdigit()
    client = pod("client", ns, f"""
        import json, socket, time, urllib.request
        out = {{}}
        for _ in range(60):  # the endpoints reach kube-proxy a moment after the Pod is Running
            try:
                out["body"] = urllib.request.urlopen("http://web/", timeout=2).read().decode()
                break
            except OSError as e:
                out["error"] = str(e); time.sleep(0.5)
        out["svc"] = socket.gethostbyname("web.{ns}.svc.cluster.local")
        out["headless"] = sorted({{a[4][0] for a in socket.getaddrinfo("web-pods", 8080, socket.AF_INET)}})
        out["kubernetes"] = socket.gethostbyname("kubernetes.default")
        s = socket.create_connection(("kubernetes.default.svc", 443), timeout=5); s.close()
        out["search"] = [l for l in open("/etc/resolv.conf") if l.startswith(("search", "nameserver"))]
        open("/dev/termination-log", "w").write(json.dumps(out))
    """, image, JETSON)
    apply(local_cluster, client)
    p = finished(local_cluster, "client", ns)
    assert p["status"]["phase"] == "Succeeded", terminated(p)
    assert p["spec"]["nodeName"] != web["spec"]["nodeName"]  # across nodes
    out = json.loads(terminated(p)["message"])
    assert out["body"] == "hello from web", out
    assert out["svc"] == cluster_ip
    assert out["headless"] == [web["status"]["podIP"]]
    assert out["kubernetes"] == "10.0.0.1"
    assert out["search"][0].startswith(f"search {ns}.svc.cluster.local"), out["search"]
    assert "nameserver 10.0.0.10\n" in out["search"]


def test_in_cluster_credentials_and_security_context(local_cluster, namespace):
    """A non-root Pod with a read-only root filesystem and a read-only ConfigMap mount talks to
    the API server with its projected service-account token through the `kubernetes` Service."""
    ns, image = namespace, local_cluster.images["base"]
    local_cluster.kubectl("create", "configmap", "cfg", "-n", ns, "--from-literal=k=v")
    code = """
        import json, os, ssl, urllib.request
        sa = "/var/run/secrets/kubernetes.io/serviceaccount"
        out = {"uid": os.getuid(), "gid": os.getgid()}
        for path in ("/probe", "/cfg/new"):
            try:
                open(path, "w").write("x"); out[path] = "written"
            except OSError as e:
                out[path] = e.strerror
        open("/tmp/ok", "w").write("x")  # the emptyDir is writable
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
        req = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/{open(sa + '/namespace').read()}/pods",
                                     headers={"Authorization": "Bearer " + open(sa + "/token").read()})
        try:
            urllib.request.urlopen(req, context=ctx, timeout=10)
        except urllib.error.HTTPError as e:
            out["api"] = e.code
            out["user"] = json.loads(e.read()).get("message", "")
        open("/dev/termination-log", "w").write(json.dumps(out))
    """
    p = pod("locked", ns, code, image, {"securityContext": NON_ROOT, "volumes": [
        {"name": "cfg", "configMap": {"name": "cfg"}}, {"name": "tmp", "emptyDir": {}}]},
        {"securityContext": LOCKED, "volumeMounts": [{"name": "cfg", "mountPath": "/cfg", "readOnly": True},
                                                     {"name": "tmp", "mountPath": "/tmp"}]})
    apply(local_cluster, p)
    done = finished(local_cluster, "locked", ns)
    assert done["status"]["phase"] == "Succeeded", terminated(done)
    out = json.loads(terminated(done)["message"])
    assert out["uid"] == 1000 and out["gid"] == 1000
    assert out["/probe"] == "Read-only file system"
    assert out["/cfg/new"] == "Read-only file system"
    # authenticated as the Pod's ServiceAccount, which may not list Pods: 403 names it
    assert out["api"] == 403 and f"system:serviceaccount:{ns}:default" in out["user"], out


def test_memory_limit_is_enforced_oomkilled(local_cluster, namespace):
    ns, image = namespace, local_cluster.images["base"]
    code = """
        blocks = []
        for _ in range(64):
            blocks.append(bytearray(16 * 2**20))  # 1 GiB in the end, far over the limit
        print("survived")
    """
    apply(local_cluster, pod("hog", ns, code, image, {"securityContext": NON_ROOT},
                             {"resources": {"limits": {"memory": "64Mi"}}}))
    p = finished(local_cluster, "hog", ns)
    t = terminated(p)
    assert p["status"]["phase"] == "Failed"
    assert t["reason"] == "OOMKilled" and t["exitCode"] == 137, t
    assert "survived" not in (t.get("message") or "")


def test_image_missing_on_the_node_err_image_never_pull(local_cluster, namespace):
    ns = namespace
    ref = f"localhost/edgetune/not-built:{uuid.uuid4().hex[:8]}"
    apply(local_cluster, pod("ghost", ns, "print('never')", ref, GPU))
    w = wait_for(lambda: ((get(local_cluster, "pod", "ghost", ns)["status"].get("containerStatuses") or [{}])[0]
                          .get("state") or {}).get("waiting", {}).get("reason") in ("ErrImageNeverPull",)
                 and get(local_cluster, "pod", "ghost", ns)["status"]["containerStatuses"][0]["state"]["waiting"],
                 60, what="ErrImageNeverPull")
    assert ref in w["message"], w
    assert get(local_cluster, "pod", "ghost", ns)["status"]["phase"] == "Pending"


def test_volume_not_writable_by_the_pods_uid(local_cluster, namespace, tmp_path):
    """A volume owned by root (0755): a Pod running as UID 1000 cannot write it, and its
    termination message (FallbackToLogsOnError) says so with the path."""
    ns, image = namespace, local_cluster.images["base"]
    d = local_cluster.data_dir / "pv" / f"{ns}-readonly"
    d.mkdir(parents=True)
    d.chmod(0o755)  # root's, as an NFS export or a hand-made directory may be
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"ro-{ns}"[:60]},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                   "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                   "hostPath": {"path": str(d), "type": "Directory"},
                   "claimRef": {"namespace": ns, "name": "artifacts"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "artifacts", "namespace": ns},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": pv["metadata"]["name"],
                    "resources": {"requests": {"storage": "1Gi"}}}}
    code = """
        import os
        os.makedirs("/artifacts/run1", exist_ok=True)
    """
    apply(local_cluster, pv, pvc, pod("writer", ns, code, image, {
        "securityContext": {**NON_ROOT, "fsGroup": 1000},
        "volumes": [{"name": "a", "persistentVolumeClaim": {"claimName": "artifacts"}}]},
        {"volumeMounts": [{"name": "a", "mountPath": "/artifacts"}]}))
    try:
        p = finished(local_cluster, "writer", ns)
        t = terminated(p)
        assert p["status"]["phase"] == "Failed" and t["exitCode"] == 1, t
        assert "PermissionError" in t["message"] and "/artifacts/run1" in t["message"], t
        assert not (d / "run1").exists()
    finally:
        local_cluster.kubectl("delete", "pod", "writer", "-n", ns, "--wait=true", check=False)
        local_cluster.kubectl("delete", "pvc", "artifacts", "-n", ns, "--wait=false", check=False)
        local_cluster.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)
