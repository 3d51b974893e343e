"""The node agent: a small kubelet that runs Pods as local processes.

It registers the nodes of ``nodes.py`` (labels, taints, capacity of the real machines),
keeps their Leases and Ready condition fresh, runs every Pod bound to them as local
processes (one per container, each in its own process group), reports their status
(Pending -> Running -> Succeeded/Failed, exit code, reason, termination message), kills
them when the Pod is deleted, serves the kubelet's ``/containerLogs`` endpoint over HTTPS
(so ``kubectl logs`` works through the API server) and provisions hostPath
PersistentVolumes for claims (a tiny static provisioner).

Paths: a container sees no private filesystem, so every volume mountPath and the
terminationMessagePath are rewritten, wherever they occur as a path prefix in the command,
args, env values and workingDir, to the local folder (or file) that backs them. The map is
also given to the process as JSON in ``EDGETUNE_PATH_MAP`` for code that builds paths
itself. See README.md.

Run by the launcher: ``python -m edgetune_localcluster.agent <agent.json>``.
"""
from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import logging
import os
import re
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse
from pathlib import Path

from kubernetes import config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("node-agent")

SMP = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
AGENT_VERSION = "v1.37.2-edgetune-localprocess"
STORAGE_CLASS = "local-path"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
PROVISIONER = "edgetune.io/local-process"
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(s: str | None) -> float | None:
    if not s:
        return None
    return dt.datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.timezone.utc).timestamp()


class Kube:
    """A thin JSON-over-REST layer on the official client's ApiClient (its kubeconfig loading,
    TLS and urllib3 pool). The typed API methods are not used: they validate every call with
    pydantic, which costs seconds per method on first use — too slow for a node agent that
    must be up in a moment — and turn objects into models we only turn back into dicts."""

    def __init__(self, kubeconfig: str):
        self.api = config.new_client_from_config(config_file=kubeconfig)

    def request(self, method: str, path: str, body=None, query: dict | None = None,
                content_type: str = "application/json", timeout: float = 30, stream: bool = False):
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        q = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items() if v is not None]
        req = self.api.param_serialize(method=method, resource_path=path, query_params=q, header_params=headers,
                                       body=body, auth_settings=["BearerToken"])
        resp = self.api.call_api(*req, _request_timeout=None if stream else timeout)
        if not 200 <= resp.status <= 299:
            resp.read()
            raise ApiException.from_response(http_resp=resp, body=None, data=None)
        if stream:
            return resp.response
        resp.read()
        return json.loads(resp.data) if resp.data else None

    def get(self, path: str, **query):
        return self.request("GET", path, query=query)

    def post(self, path: str, body: dict):
        return self.request("POST", path, body)

    def patch(self, path: str, body: dict, content_type: str = MERGE):
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, body: dict | None = None):
        return self.request("DELETE", path, body)

    def watch(self, path: str, rv: str, timeout_seconds: int = 120, **query):
        """Yield watch events from ``rv``; stops at the server's timeout or at an ERROR event
        (e.g. 410 Gone), after which the caller lists again."""
        resp = self.request("GET", path, query=dict(query, watch=True, resourceVersion=rv,
                                                    timeoutSeconds=timeout_seconds, allowWatchBookmarks=True),
                            stream=True)
        try:
            for line in iter_resp_lines(resp):
                if not line:
                    continue
                ev = json.loads(line)
                if ev.get("type") == "ERROR":
                    return
                yield ev
        finally:
            resp.release_conn()


class ContainerError(Exception):
    """A container cannot be started (reason, message), like CreateContainerConfigError."""

    def __init__(self, reason: str, message: str, retry: bool = False):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry = retry


# --------------------------------------------------------------------------- path rewriting
_PATH_CHARS = r"A-Za-z0-9_.\-"


def rewrite(s: str, mapping: list[tuple[str, str]]) -> str:
    """Replace each mount path in ``s`` (where it stands as a path: not preceded by a path
    character or '/', not followed by a name character) with its local path. One pass, the
    longest mount path first, so a replacement is never rewritten again."""
    if not s or not mapping:
        return s
    table = {src.rstrip("/") or "/": dst for src, dst in mapping}
    alts = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    pat = r"(?<![" + _PATH_CHARS + r"/])(" + alts + r")(?![" + _PATH_CHARS + r"])"
    return re.sub(pat, lambda m: table[m.group(1)], s)


def expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: $(VAR) -> value if defined, $$ -> $."""
    out = []
    i = 0
    while i < len(s):
        if s.startswith("$$", i):
            out.append("$")
            i += 2
        elif s.startswith("$(", i):
            j = s.find(")", i + 2)
            if j < 0:
                out.append(s[i:])
                break
            name = s[i + 2:j]
            out.append(env[name] if name in env else s[i:j + 1])
            i = j + 1
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_quantity(q: str) -> float:
    q = str(q)
    suffixes = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                "n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    for suf in sorted(suffixes, key=len, reverse=True):
        if q.endswith(suf):
            return float(q[: -len(suf)]) * suffixes[suf]
    return float(q)


# --------------------------------------------------------------------------- the agent
class Agent:
    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.data_dir = Path(cfg["data_dir"])
        self.pki = Path(cfg["pki_dir"])
        self.port = int(cfg["port"])
        self.nodes = {n["name"]: n for n in cfg["nodes"]}
        self.kubeconfig = cfg["kubeconfig"]
        self.pods_dir = self.data_dir / "pods"
        self.pid_dir = self.data_dir / "run" / "pods"
        self.pv_dir = self.data_dir / "pv"
        for d in (self.pods_dir, self.pid_dir, self.pv_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.kube = Kube(self.kubeconfig)  # shared by the Pod workers (urllib3's pool is thread-safe)
        self.workers: dict[str, PodWorker] = {}
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        # the environment the Pods start from: the agent's own, with its Python first on PATH
        env = dict(os.environ)
        bindir = os.path.dirname(os.path.abspath(sys.executable))
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        if os.path.exists(os.path.join(bindir, "activate")):
            env["VIRTUAL_ENV"] = os.path.dirname(bindir)
        env.pop("KUBECONFIG", None)  # the admin credentials do not leak into Pods
        self.base_env = env

    def api(self) -> Kube:
        return Kube(self.kubeconfig)

    # ------------------------------------------------------------------ nodes
    def register_nodes(self) -> None:
        v1 = self.api()
        for name, n in self.nodes.items():
            body = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **n["labels"]}},
                    "spec": {"taints": n.get("taints") or []}}
            try:
                v1.post("/api/v1/nodes", body)
                log.info("registered node %s", name)
            except ApiException as e:
                if e.status != 409:
                    raise
                # keep taints others added (e.g. the node lifecycle controller's), set ours
                cur = v1.get(f"/api/v1/nodes/{name}")
                taints = [t for t in cur["spec"].get("taints") or []
                          if t.get("key", "").startswith("node.kubernetes.io/")]
                patch = {"metadata": {"labels": body["metadata"]["labels"]},
                         "spec": {"taints": taints + (n.get("taints") or []), "unschedulable": False}}
                v1.patch(f"/api/v1/nodes/{name}", patch)
            self.update_node_status(v1, name)

    def update_node_status(self, v1, name: str) -> None:
        n = self.nodes[name]
        t = now()
        conds = [
            {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory",
             "message": "kubelet has sufficient memory available"},
            {"type": "DiskPressure", "status": "False", "reason": "KubeletHasNoDiskPressure",
             "message": "kubelet has no disk pressure"},
            {"type": "PIDPressure", "status": "False", "reason": "KubeletHasSufficientPID",
             "message": "kubelet has sufficient PID available"},
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "edgetune node agent is posting ready status"},
        ]
        for c in conds:
            c["lastHeartbeatTime"] = t
            c["lastTransitionTime"] = t
        status = {
            "capacity": n["capacity"], "allocatable": n.get("allocatable", n["capacity"]),
            "conditions": conds,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {"machineID": name, "systemUUID": name, "bootID": str(os.getpid()),
                         "kernelVersion": n.get("kernel", ""), "osImage": n.get("os_image", ""),
                         "containerRuntimeVersion": "localprocess://0.1", "kubeletVersion": AGENT_VERSION,
                         "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": n.get("architecture", "amd64")},
        }
        # keep lastTransitionTime when the status does not change
        try:
            cur = v1.get(f"/api/v1/nodes/{name}/status")
            old = {c["type"]: c for c in cur.get("status", {}).get("conditions") or []}
            for c in conds:
                o = old.get(c["type"])
                if o and o.get("status") == c["status"] and o.get("lastTransitionTime"):
                    c["lastTransitionTime"] = o["lastTransitionTime"]
        except ApiException:
            pass
        v1.patch(f"/api/v1/nodes/{name}/status", {"status": status}, SMP)

    def renew_leases(self) -> None:
        v1 = self.api()
        last_status = 0.0
        while not self.stopping.is_set():
            for name in self.nodes:
                try:
                    self._renew_lease(v1, name)
                except Exception as e:  # keep going; the API server may be restarting
                    log.warning("lease %s: %s", name, e)
            if time.monotonic() - last_status > 60:
                for name in self.nodes:
                    try:
                        self.update_node_status(v1, name)
                    except Exception as e:
                        log.warning("node status %s: %s", name, e)
                last_status = time.monotonic()
            self.stopping.wait(10)

    def _renew_lease(self, v1: Kube, name: str) -> None:
        spec = {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_micro()}
        try:
            v1.patch(f"{LEASES}/{name}", {"spec": spec})
        except ApiException as e:
            if e.status != 404:
                raise
            node = v1.get(f"/api/v1/nodes/{name}")
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-node-lease", "ownerReferences": [
                        {"apiVersion": "v1", "kind": "Node", "name": name, "uid": node["metadata"]["uid"]}]},
                    "spec": spec}
            v1.post(LEASES, body)

    # ------------------------------------------------------------------ storage
    def ensure_storage_class(self) -> None:
        body = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS,
                             "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": PROVISIONER, "reclaimPolicy": "Retain", "volumeBindingMode": "Immediate"}
        try:
            self.api().post("/apis/storage.k8s.io/v1/storageclasses", body)
        except ApiException as e:
            if e.status != 409:
                raise

    def provision_loop(self) -> None:
        v1 = self.api()
        while not self.stopping.is_set():
            try:
                lst = v1.get("/api/v1/persistentvolumeclaims")
                for pvc in lst["items"]:
                    self._provision(v1, pvc)
                self._reap_released(v1)
                for ev in v1.watch("/api/v1/persistentvolumeclaims", lst["metadata"]["resourceVersion"], 60):
                    if self.stopping.is_set():
                        break
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._provision(v1, ev["object"])
                    elif ev["type"] == "DELETED":
                        self._reap_released(v1)
                self._reap_released(v1)
            except Exception as e:
                if not self.stopping.is_set():
                    log.warning("provisioner: %s", e)
                    self.stopping.wait(1)

    def _provision(self, v1, pvc: dict) -> None:
        md, spec = pvc["metadata"], pvc["spec"]
        if spec.get("volumeName") or pvc.get("status", {}).get("phase") != "Pending" or md.get("deletionTimestamp"):
            return
        if spec.get("selector") or spec.get("dataSource"):
            return  # those ask for a particular volume: not ours to make
        ns, claim = md["namespace"], md["name"]
        path = self.pv_dir / f"{ns}-{claim}"
        path.mkdir(parents=True, exist_ok=True)
        storage = (spec.get("resources", {}).get("requests") or {}).get("storage", "1Gi")
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": f"pvc-{md['uid']}",
                           "labels": {"edgetune.io/localcluster-provisioned": "true"},
                           "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
              "spec": {"capacity": {"storage": storage},
                       "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                       "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
                       "persistentVolumeReclaimPolicy": "Retain",
                       "storageClassName": spec.get("storageClassName") or "",
                       "volumeMode": spec.get("volumeMode") or "Filesystem",
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                                    "name": claim, "uid": md["uid"]}}}
        try:
            v1.post("/api/v1/persistentvolumes", pv)
            log.info("provisioned %s for claim %s/%s at %s", pv["metadata"]["name"], ns, claim, path)
        except ApiException as e:
            if e.status != 409:
                raise

    def _reap_released(self, v1) -> None:
        """Delete the PersistentVolume objects we made whose claims are gone (the data stay)."""
        time.sleep(0.5)  # the PV controller marks the volume Released after the claim is gone
        lst = v1.get("/api/v1/persistentvolumes", labelSelector="edgetune.io/localcluster-provisioned=true")
        for pv in lst["items"]:
            if pv.get("status", {}).get("phase") == "Released":
                try:
                    v1.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
                except ApiException:
                    pass

    # ------------------------------------------------------------------ pods
    def watch_pods(self, node: str) -> None:
        v1 = self.api()
        sel = f"spec.nodeName={node}"
        while not self.stopping.is_set():
            try:
                lst = v1.get("/api/v1/pods", fieldSelector=sel)
                seen = set()
                for pod in lst["items"]:
                    seen.add(pod["metadata"]["uid"])
                    self.on_pod(pod)
                with self.lock:
                    gone = [w for uid, w in self.workers.items() if w.node == node and uid not in seen]
                for w in gone:
                    w.on_deleted()
                rv = lst["metadata"]["resourceVersion"]
                for ev in v1.watch("/api/v1/pods", rv, 120, fieldSelector=sel):
                    if self.stopping.is_set():
                        break
                    obj = ev["object"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self.on_pod(obj)
                    elif ev["type"] == "DELETED":
                        with self.lock:
                            wk = self.workers.get(obj["metadata"]["uid"])
                        if wk:
                            wk.on_deleted()
            except Exception as e:
                if not self.stopping.is_set():
                    log.warning("pod watch %s: %s", node, e)
                    self.stopping.wait(1)

    def on_pod(self, pod: dict) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            w = self.workers.get(uid)
            if w is not None:
                w.update(pod)
                return
            phase = pod.get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if pod["metadata"].get("deletionTimestamp"):
                    # finished earlier (or before an agent restart): nothing runs, let it go
                    threading.Thread(target=self._final_delete, args=(pod,), daemon=True).start()
                return
            w = PodWorker(self, pod)
            self.workers[uid] = w
        w.start()

    def _final_delete(self, pod: dict) -> None:
        md = pod["metadata"]
        try:
            self.kube.delete(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}",
                              {"preconditions": {"uid": md["uid"]}, "gracePeriodSeconds": 0})
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("delete pod %s/%s: %s", md["namespace"], md["name"], e)

    def find_log(self, ns: str, pod: str, container: str, previous: bool) -> tuple[Path | None, "PodWorker | None"]:
        with self.lock:
            cands = [w for w in self.workers.values() if w.ns == ns and w.name == pod]
        if cands:
            w = cands[-1]
            return w.log_path(container, previous), w
        dirs = sorted(self.pods_dir.glob(f"{ns}_{pod}_*"), key=lambda p: p.stat().st_mtime)
        if not dirs:
            return None, None
        logs = sorted((dirs[-1] / "logs" / container).glob("*.log"), key=lambda p: int(p.stem))
        if not logs:
            return None, None
        if previous:
            return (logs[-2] if len(logs) > 1 else None), None
        return logs[-1], None

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        # started next to the API server: wait for it
        deadline = time.monotonic() + 120
        while True:
            try:
                self.register_nodes()
                self.ensure_storage_class()
                break
            except Exception as e:
                if time.monotonic() > deadline or self.stopping.is_set():
                    raise
                log.debug("API server not ready: %s", e)
                time.sleep(0.2)
        server = LogServer(self)
        threads = [threading.Thread(target=server.serve_forever, name="logs", daemon=True),
                   threading.Thread(target=self.renew_leases, name="leases", daemon=True),
                   threading.Thread(target=self.provision_loop, name="provisioner", daemon=True)]
        threads += [threading.Thread(target=self.watch_pods, args=(n,), name=f"pods-{n}", daemon=True)
                    for n in self.nodes]
        for t in threads:
            t.start()
        log.info("node agent up: nodes %s, kubelet endpoint https://127.0.0.1:%d", list(self.nodes), self.port)
        self.stopping.wait()
        log.info("stopping: killing pod processes")
        with self.lock:
            workers = list(self.workers.values())
        procs = [c.proc for w in workers for c in w.init_containers + w.containers
                 if c.proc is not None and c.proc.poll() is None]
        for p in procs:  # all at once: SIGTERM, 2 s, SIGKILL
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 2
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for p in procs:
            _killpg(p.pid, signal.SIGKILL)
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
        for p in Path(self.pid_dir).glob("*.pid"):
            p.unlink(missing_ok=True)
        server.shutdown()


# --------------------------------------------------------------------------- one Pod
class Container:
    def __init__(self, spec: dict, init: bool):
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.started_at: str | None = None
        self.term_file: Path | None = None
        self.next_start = 0.0
        self.done = False  # terminated and not to be restarted

    def status(self) -> dict:
        st = {"name": self.name, "image": self.spec.get("image", ""), "imageID": "",
              "ready": "running" in self.state, "started": "running" in self.state,
              "restartCount": self.restarts,
              "state": {k: self.state.get(k) for k in ("waiting", "running", "terminated")},
              "lastState": {k: self.last_state.get(k) for k in ("waiting", "running", "terminated")}}
        if self.proc is not None:
            st["containerID"] = f"localprocess://{self.proc.pid}"
        return st


class PodWorker(threading.Thread):
    def __init__(self, agent: Agent, pod: dict):
        md = pod["metadata"]
        super().__init__(name=f"pod-{md['namespace']}/{md['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid = md["uid"]
        self.ns = md["namespace"]
        self.name = md["name"]
        self.node = pod["spec"]["nodeName"]
        self.wake = threading.Event()
        self.deleted = False  # the object is gone from the API
        self.dir = agent.pods_dir / f"{self.ns}_{self.name}_{self.uid}"
        self.v1 = agent.kube
        spec = pod["spec"]
        self.init_containers = [Container(c, True) for c in spec.get("initContainers") or []]
        self.containers = [Container(c, False) for c in spec.get("containers") or []]
        self.mounts: dict[str, Path] = {}  # volume name -> local path
        self.phase = "Pending"
        self.conditions: dict[str, dict] = {}
        self.start_time: str | None = None
        self.reason: str | None = None
        self.message: str | None = None
        self._last_report: str | None = None
        self.killed = False

    # events from the watch
    def update(self, pod: dict) -> None:
        self.pod = pod
        self.wake.set()

    def on_deleted(self) -> None:
        self.deleted = True
        self.wake.set()

    def deleting(self) -> bool:
        return self.deleted or bool(self.pod["metadata"].get("deletionTimestamp")) or self.agent.stopping.is_set()

    def log_path(self, container: str, previous: bool = False) -> Path | None:
        for c in self.init_containers + self.containers:
            if c.name == container:
                n = c.restarts - (1 if previous else 0)  # one log file per run
                return self.dir / "logs" / container / f"{n}.log" if n >= 0 else None
        return None

    def is_running(self, container: str) -> bool:
        for c in self.init_containers + self.containers:
            if c.name == container:
                return c.proc is not None and c.proc.poll() is None
        return False

    # -------------------------------------------------------------- main loop
    def run(self) -> None:
        try:
            self._run()
        except Exception as e:
            log.error("pod %s/%s: %s", self.ns, self.name, traceback.format_exc())
            if not self.deleting():
                self.phase, self.reason, self.message = "Failed", "NodeAgentError", str(e)
                self.report(force=True)
        finally:
            with self.agent.lock:
                if self.agent.workers.get(self.uid) is self:
                    del self.agent.workers[self.uid]

    def _run(self) -> None:
        if self.deleting():
            self.finish_deletion()
            return
        self.adopt_lost()
        if self.phase in ("Succeeded", "Failed"):
            self.report(force=True)
            self.wait_deletion()
            return
        self.start_time = self.pod.get("status", {}).get("startTime") or now()
        self.set_cond("PodScheduled", "True")
        self.set_cond("Initialized", "False", "ContainersNotInitialized" if self.init_containers else None)
        self.set_cond("ContainersReady", "False", "ContainersNotReady")
        self.set_cond("Ready", "False", "ContainersNotReady")
        self.report()
        while True:  # volumes: retry while something they need is missing
            try:
                self.prepare_volumes()
                break
            except ContainerError as e:
                for c in self.init_containers + self.containers:
                    c.state = {"waiting": {"reason": e.reason, "message": e.message}}
                self.report()
                if not e.retry:
                    self.phase, self.reason, self.message = "Failed", e.reason, e.message
                    self.report(force=True)
                    self.wait_deletion()
                    return
                if self.wait(1.0):
                    self.finish_deletion()
                    return
        self.set_cond("PodReadyToStartContainers", "True")
        policy = self.pod["spec"].get("restartPolicy", "Always")
        # init containers, one after the other
        for c in self.init_containers:
            while True:
                if not self.start_container(c) and "waiting" in c.state:
                    self.report()  # e.g. CreateContainerConfigError: retry until it resolves
                    if self.wait(1.0):
                        self.finish_deletion()
                        return
                    continue
                self.report()
                while c.proc is not None and c.proc.poll() is None:
                    if self.wait(0.2):
                        self.finish_deletion()
                        return
                    if self.deadline_exceeded():
                        return
                if c.proc is not None and "running" in c.state:
                    self.collect(c)
                code = (c.state.get("terminated") or {}).get("exitCode", 1)
                self.report()
                if code == 0:
                    break
                if policy == "Never":
                    return self.fail_pod("Init container failed")
                c.restarts += 1
                c.last_state, c.state = c.state, {"waiting": {"reason": "CrashLoopBackOff"}}
                if self.wait(min(10.0, 2.0 ** (c.restarts - 1))):
                    self.finish_deletion()
                    return
        self.set_cond("Initialized", "True")
        for c in self.containers:
            self.start_container(c)
        self.update_phase()
        self.report()
        while True:
            if self.wait(0.2):
                self.finish_deletion()
                return
            if self.deadline_exceeded():
                return
            changed = False
            for c in self.containers:
                if c.proc is not None and "running" in c.state and c.proc.poll() is not None:
                    self.collect(c)
                    code = c.state["terminated"]["exitCode"]
                    if policy == "Always" or (policy == "OnFailure" and code != 0):
                        c.next_start = time.monotonic() + min(10.0, 2.0 ** c.restarts) - 1
                    else:
                        c.done = True
                    changed = True
                if c.done or time.monotonic() < c.next_start:
                    continue
                if "terminated" in c.state:
                    c.restarts += 1
                    c.last_state = c.state
                    self.start_container(c)
                    changed = True
                elif "waiting" in c.state and c.proc is None:  # could not be created yet: retry
                    self.start_container(c)
                    changed = True
            if changed:
                self.update_phase()
                self.report()
            if all(c.done for c in self.containers):
                self.wait_deletion()
                return

    def wait(self, secs: float) -> bool:
        """Sleep until something happens; True if the Pod is being deleted."""
        self.wake.wait(secs)
        self.wake.clear()
        return self.deleting()

    def wait_deletion(self) -> None:
        while not self.wait(5):
            pass
        self.finish_deletion()

    def adopt_lost(self) -> None:
        """After an agent restart: containers the API says were running have no process any
        more (the kubelet reports such containers as ContainerStatusUnknown)."""
        statuses = {s["name"]: s for s in self.pod.get("status", {}).get("containerStatuses") or []}
        lost = [c for c in self.containers if "running" in (statuses.get(c.name, {}).get("state") or {})]
        if not lost:
            return
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for c in self.containers:
            s = statuses.get(c.name) or {}
            c.restarts = s.get("restartCount", 0)
            if c in lost:
                c.state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown",
                                          "message": "The container could not be located when the node agent restarted",
                                          "finishedAt": now(), "startedAt": s["state"]["running"].get("startedAt")}}
            elif "terminated" in (s.get("state") or {}):
                c.state = s["state"]
                c.done = True
        if policy == "Never":
            for c in self.containers:
                c.done = True
            self.update_phase()
        else:
            for c in lost:
                c.restarts += 1
                c.last_state, c.state = c.state, {"waiting": {"reason": "ContainerCreating"}}

    def fail_pod(self, message: str) -> None:
        self.phase, self.message = "Failed", message
        self.report(force=True)
        self.wait_deletion()

    def deadline_exceeded(self) -> bool:
        ads = self.pod["spec"].get("activeDeadlineSeconds")
        st = parse_time(self.start_time)
        if ads is None or st is None or time.time() - st < ads:
            return False
        self.kill_all(grace=self.grace(), report=True)
        self.phase, self.reason = "Failed", "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        self.report(force=True)
        self.wait_deletion()
        return True

    def grace(self) -> float:
        g = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(g)

    def finish_deletion(self) -> None:
        self.kill_all(grace=self.grace(), report=not self.deleted and not self.agent.stopping.is_set())
        if self.agent.stopping.is_set():
            return
        if not self.deleted:
            self.agent._final_delete(self.pod)
        log.info("pod %s/%s deleted", self.ns, self.name)

    def kill_all(self, grace: float, report: bool) -> None:
        procs = [c for c in self.init_containers + self.containers if c.proc is not None and c.proc.poll() is None]
        for c in procs:
            _killpg(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(c.proc.poll() is None for c in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        for c in procs:
            _killpg(c.proc.pid, signal.SIGKILL)
            try:
                c.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            _killpg(c.proc.pid, signal.SIGKILL)  # stragglers of the group
            self.collect(c)
            c.done = True
        self.killed = True
        if report and procs:
            self.update_phase()
            self.report(force=True)

    # -------------------------------------------------------------- status
    def set_cond(self, typ: str, status: str, reason: str | None = None) -> None:
        old = self.conditions.get(typ)
        if old and old["status"] == status and old.get("reason") == reason:
            return
        c = {"type": typ, "status": status, "lastProbeTime": None, "lastTransitionTime": now()}
        if reason:
            c["reason"] = reason
        self.conditions[typ] = c

    def update_phase(self) -> None:
        cs = self.containers
        if self.phase in ("Succeeded", "Failed"):
            return
        if any("running" in c.state for c in cs):
            self.phase = "Running"
        if all(c.done for c in cs):
            codes = [(c.state.get("terminated") or {}).get("exitCode", 1) for c in cs]
            self.phase = "Succeeded" if all(x == 0 for x in codes) else "Failed"
        elif any("terminated" in c.state for c in cs) and not any("waiting" in c.state for c in cs) \
                and self.phase == "Pending":
            self.phase = "Running"
        ready = all("running" in c.state for c in cs)
        if self.phase in ("Succeeded", "Failed"):
            self.set_cond("ContainersReady", "False", "PodCompleted")
            self.set_cond("Ready", "False", "PodCompleted")
        else:
            self.set_cond("ContainersReady", "True" if ready else "False", None if ready else "ContainersNotReady")
            self.set_cond("Ready", "True" if ready else "False", None if ready else "ContainersNotReady")

    def report(self, force: bool = False) -> None:
        gen = self.pod["metadata"].get("generation")
        for c in self.conditions.values():
            if gen is not None:
                c["observedGeneration"] = gen
        status = {
            "observedGeneration": gen,
            "phase": self.phase,
            "conditions": list(self.conditions.values()),
            "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "containerStatuses": [c.status() for c in self.containers],
            "reason": self.reason, "message": self.message,
        }
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        key = json.dumps(status, sort_keys=True)
        if key == self._last_report and not force:
            return
        for attempt in range(5):
            try:
                self.v1.patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", {"status": status}, SMP)
                self._last_report = key
                return
            except ApiException as e:
                if e.status == 404:
                    self.deleted = True
                    return
                log.warning("status of %s/%s: %s %s", self.ns, self.name, e.status, e.body)
                if e.status == 422:
                    return
            except Exception as e:
                log.warning("status of %s/%s: %s", self.ns, self.name, e)
            time.sleep(0.5 * (attempt + 1))

    # -------------------------------------------------------------- volumes
    def _get(self, kind: str, name: str) -> dict | None:
        try:
            if kind == "configmap":
                return self.v1.get(f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
            if kind == "secret":
                return self.v1.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
            if kind == "pvc":
                return self.v1.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{name}")
            if kind == "pv":
                return self.v1.get(f"/api/v1/persistentvolumes/{name}")
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        raise ValueError(kind)

    @staticmethod
    def _kv(obj: dict, kind: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if kind == "secret":
            for k, v in (obj.get("data") or {}).items():
                out[k] = base64.b64decode(v)
            for k, v in (obj.get("stringData") or {}).items():
                out[k] = v.encode()
        else:
            for k, v in (obj.get("data") or {}).items():
                out[k] = v.encode()
            for k, v in (obj.get("binaryData") or {}).items():
                out[k] = base64.b64decode(v)
        return out

    def _write_items(self, dest: Path, kv: dict[str, bytes], items: list | None) -> None:
        if items:
            for it in items:
                if it["key"] in kv:
                    p = dest / it["path"]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(kv[it["key"]])
        else:
            for k, v in kv.items():
                (dest / k).write_bytes(v)

    def _source_kv(self, kind: str, name: str, optional: bool, what: str) -> dict[str, bytes] | None:
        obj = self._get(kind, name)
        if obj is None:
            if optional:
                return None
            raise ContainerError("ContainerCreating", f'{what} "{name}" not found', retry=True)
        return self._kv(obj, kind)

    def _field(self, path: str) -> str:
        md = self.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return (md.get(m.group(1)) or {}).get(m.group(2), "")
        simple = {
            "metadata.name": md["name"], "metadata.namespace": md["namespace"], "metadata.uid": md["uid"],
            "spec.nodeName": self.node, "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", ""),
            "status.hostIP": "127.0.0.1", "status.hostIPs": "127.0.0.1", "status.podIP": "127.0.0.1",
            "status.podIPs": "127.0.0.1",
        }
        if path in ("metadata.labels", "metadata.annotations"):
            d = md.get(path.split(".")[1]) or {}
            return "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
        if path not in simple:
            raise ContainerError("CreateContainerConfigError", f"unsupported fieldRef {path}")
        return simple[path]

    def _resource(self, ref: dict, container: dict) -> str:
        res = ref["resource"]  # e.g. limits.cpu
        kind, _, name = res.partition(".")
        val = (container.get("resources", {}).get(kind) or {}).get(name)
        if val is None:  # no limit: the node's allocatable
            node = self.agent.nodes[self.node]
            val = node["capacity"].get(name, "0")
        div = parse_quantity(ref.get("divisor", "1") or "1")
        q = parse_quantity(val) / div
        return str(int(-(-q // 1)))  # rounded up

    def _sa_token(self, audience: str | None, seconds: int) -> str:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"audiences": [audience] if audience else [], "expirationSeconds": seconds,
                         "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}}}
        resp = self.v1.post(f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
        return resp["status"]["token"]

    def prepare_volumes(self) -> None:
        vols = self.dir / "volumes"
        for v in self.pod["spec"].get("volumes") or []:
            name = v["name"]
            dest = vols / name
            if "emptyDir" in v:
                dest.mkdir(parents=True, exist_ok=True)
                self.mounts[name] = dest
            elif "hostPath" in v:
                # the node is this machine: hostPath is the local path itself
                hp = v["hostPath"]
                p = Path(hp["path"])
                typ = hp.get("type") or ""
                if typ == "DirectoryOrCreate" or (typ == "" and not p.exists()):  # "" : as container runtimes do
                    p.mkdir(parents=True, exist_ok=True)
                elif typ == "FileOrCreate" and not p.exists():
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.touch()
                elif typ in ("Directory", "File") and not p.exists():
                    raise ContainerError("ContainerCreating", f"hostPath {p} does not exist", retry=True)
                self.mounts[name] = p
            elif "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                pvc = self._get("pvc", claim)
                if pvc is None or not pvc["spec"].get("volumeName") or pvc.get("status", {}).get("phase") != "Bound":
                    raise ContainerError("ContainerCreating", f'persistentvolumeclaim "{claim}" is not bound', retry=True)
                pv = self._get("pv", pvc["spec"]["volumeName"])
                if pv is None or "hostPath" not in pv["spec"] and "local" not in pv["spec"]:
                    raise ContainerError("ContainerCreating", f"volume of claim {claim} is not a local path volume")
                p = Path((pv["spec"].get("hostPath") or pv["spec"].get("local"))["path"])
                p.mkdir(parents=True, exist_ok=True)
                self.mounts[name] = p
            elif "configMap" in v or "secret" in v:
                kind = "configmap" if "configMap" in v else "secret"
                src = v["configMap"] if kind == "configmap" else v["secret"]
                ref = src.get("name") if kind == "configmap" else src.get("secretName")
                kv = self._source_kv(kind, ref, src.get("optional", False), kind)
                dest.mkdir(parents=True, exist_ok=True)
                if kv is not None:
                    self._write_items(dest, kv, src.get("items"))
                self.mounts[name] = dest
            elif "projected" in v or "downwardAPI" in v:
                dest.mkdir(parents=True, exist_ok=True)
                sources = v["projected"].get("sources") or [] if "projected" in v else [{"downwardAPI": v["downwardAPI"]}]
                for s in sources:
                    if "serviceAccountToken" in s:
                        t = s["serviceAccountToken"]
                        tok = self._sa_token(t.get("audience"), int(t.get("expirationSeconds", 3607)))
                        (dest / t["path"]).write_text(tok)
                    elif "configMap" in s or "secret" in s:
                        kind = "configmap" if "configMap" in s else "secret"
                        src = s["configMap"] if kind == "configmap" else s["secret"]
                        kv = self._source_kv(kind, src["name"], src.get("optional", False), kind)
                        if kv is not None:
                            self._write_items(dest, kv, src.get("items"))
                    elif "downwardAPI" in s:
                        for it in s["downwardAPI"].get("items") or []:
                            if "fieldRef" in it:
                                (dest / it["path"]).write_text(self._field(it["fieldRef"]["fieldPath"]))
                    # clusterTrustBundle, podCertificate: not supported, skipped
                self.mounts[name] = dest
            else:
                kind = next((k for k in v if k != "name"), "?")
                raise ContainerError("ContainerCreating", f"volume {name}: type {kind} is not supported by the local node agent")

    # -------------------------------------------------------------- processes
    def container_env(self, spec: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for ef in spec.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            for kind, key in (("configmap", "configMapRef"), ("secret", "secretRef")):
                if key in ef:
                    ref = ef[key]
                    obj = self._get(kind, ref["name"])
                    if obj is None:
                        if ref.get("optional"):
                            continue
                        raise ContainerError("CreateContainerConfigError", f'{kind} "{ref["name"]}" not found', retry=True)
                    for k, val in self._kv(obj, kind).items():
                        env[prefix + k] = val.decode(errors="replace")
        for e in spec.get("env") or []:
            name = e["name"]
            if "valueFrom" not in e:
                env[name] = expand(e.get("value", ""), env)
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[name] = self._field(vf["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in vf:
                env[name] = self._resource(vf["resourceFieldRef"], spec)
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "secret" if "secretKeyRef" in vf else "configmap"
                ref = vf["secretKeyRef"] if kind == "secret" else vf["configMapKeyRef"]
                obj = self._get(kind, ref["name"])
                kv = self._kv(obj, kind) if obj is not None else None
                if kv is None or ref["key"] not in kv:
                    if ref.get("optional"):
                        continue
                    what = f'{kind} "{ref["name"]}"' if kv is None else f'key "{ref["key"]}" in {kind} "{ref["name"]}"'
                    raise ContainerError("CreateContainerConfigError", f"couldn't find {what}", retry=True)
                env[name] = kv[ref["key"]].decode(errors="replace")
            else:
                raise ContainerError("CreateContainerConfigError", f"env {name}: unsupported valueFrom")
        return env

    def path_map(self, c: Container) -> tuple[list[tuple[str, str]], Path]:
        spec = c.spec
        cdir = self.dir / "containers" / c.name
        cdir.mkdir(parents=True, exist_ok=True)
        mapping: list[tuple[str, str]] = []
        for m in spec.get("volumeMounts") or []:
            base = self.mounts.get(m["name"])
            if base is None:
                raise ContainerError("CreateContainerConfigError", f"volumeMount {m['name']}: no such volume")
            local = base
            sub = m.get("subPath") or ""
            if m.get("subPathExpr"):
                sub = expand(m["subPathExpr"], self.container_env(spec))
            if sub:
                local = base / sub
                if not local.exists():
                    local.mkdir(parents=True, exist_ok=True)
            mapping.append((m["mountPath"], str(local)))
        tmp = spec.get("terminationMessagePath") or "/dev/termination-log"
        term = cdir / f"termination-log.{c.restarts}"
        if term.exists():
            term.unlink()
        term.touch()
        c.term_file = term
        mapping.append((tmp, str(term)))
        mapping.sort(key=lambda kv: len(kv[0]), reverse=True)
        return mapping, cdir

    def start_container(self, c: Container) -> bool:
        """Start one container; False (with a terminated or waiting state) if it cannot."""
        spec = c.spec
        try:
            mapping, cdir = self.path_map(c)
            env = self.container_env(spec)
        except ContainerError as e:
            c.state = {"waiting": {"reason": e.reason, "message": e.message}}
            c.proc = None
            c.next_start = time.monotonic() + 1
            return False
        env = {k: rewrite(v, mapping) for k, v in env.items()}
        argv = [expand(x, env) for x in (spec.get("command") or [])] + [expand(x, env) for x in (spec.get("args") or [])]
        argv = [rewrite(a, mapping) for a in argv]
        t = now()
        if not spec.get("command"):
            return self._start_error(c, "the local node agent runs the container's command; this container has none "
                                        f"(image {spec.get('image')} entrypoint is not known)", t)
        wd = rewrite(spec.get("workingDir") or "", mapping) or str(cdir / "rootfs")
        if not spec.get("workingDir"):
            Path(wd).mkdir(parents=True, exist_ok=True)
        if not os.path.isdir(wd):
            return self._start_error(c, f"workingDir {spec.get('workingDir')} (local {wd}) does not exist", t)
        penv = dict(self.agent.base_env)
        penv.update({"HOSTNAME": self.name, "EDGETUNE_LOCALCLUSTER_NODE": self.node,
                     "EDGETUNE_PATH_MAP": json.dumps(dict(mapping))})
        penv.update(env)
        logp = self.dir / "logs" / c.name / f"{c.restarts}.log"
        logp.parent.mkdir(parents=True, exist_ok=True)
        with open(logp, "ab") as out:
            try:
                c.proc = subprocess.Popen(argv, cwd=wd, env=penv, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                return self._start_error(c, f"exec {argv[0]!r}: {e.strerror}", t)
        from .cluster import write_pidfile
        write_pidfile(self.agent.pid_dir / f"{self.uid}-{c.name}.pid", c.proc.pid)
        c.started_at = t
        c.state = {"running": {"startedAt": t}}
        log.info("pod %s/%s container %s: pid %d: %s", self.ns, self.name, c.name, c.proc.pid, argv)
        return True

    def _start_error(self, c: Container, msg: str, t: str) -> bool:
        c.proc = None
        c.state = {"terminated": {"exitCode": 128, "reason": "StartError", "message": msg,
                                  "startedAt": t, "finishedAt": t}}
        c.done = self.pod["spec"].get("restartPolicy", "Always") == "Never"
        c.next_start = time.monotonic() + min(10.0, 2.0 ** c.restarts)
        return False

    def collect(self, c: Container) -> None:
        """Record the end of a container's process: exit code, reason, termination message."""
        if c.proc is None:
            return
        code = c.proc.wait()
        try:
            (self.agent.pid_dir / f"{self.uid}-{c.name}.pid").unlink()
        except FileNotFoundError:
            pass
        if code < 0:  # killed by a signal: the shell convention, as container runtimes report it
            code = 128 - code
        msg = ""
        if c.term_file is not None and c.term_file.exists():
            msg = c.term_file.read_bytes()[:MAX_TERMINATION_MESSAGE].decode(errors="replace")
        policy = c.spec.get("terminationMessagePolicy", "File")
        if not msg and code != 0 and policy == "FallbackToLogsOnError":
            lp = self.dir / "logs" / c.name / f"{c.restarts}.log"
            if lp.exists():
                lines = lp.read_bytes().splitlines(keepends=True)[-FALLBACK_LOG_LINES:]
                msg = b"".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
        reason = "Completed" if code == 0 else ("OOMKilled" if False else "Error")
        term = {"exitCode": code, "reason": reason, "startedAt": c.started_at, "finishedAt": now(),
                "containerID": f"localprocess://{c.proc.pid}"}
        if msg:
            term["message"] = msg
        c.state = {"terminated": term}
        log.info("pod %s/%s container %s exited %d", self.ns, self.name, c.name, code)


def _killpg(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------- log endpoint
class LogServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, agent: Agent):
        self.agent = agent
        super().__init__(("127.0.0.1", agent.port), LogHandler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(agent.pki / "kubelet.crt", agent.pki / "kubelet.key")
        ctx.load_verify_locations(agent.pki / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED  # the API server presents --kubelet-client-certificate
        self.socket = ctx.wrap_socket(self.socket, server_side=True)


class LogHandler(http.server.BaseHTTPRequestHandler):
    server: LogServer

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):
        u = urllib.parse.urlsplit(self.path)
        q = urllib.parse.parse_qs(u.query)
        parts = [p for p in u.path.split("/") if p]
        if parts in (["healthz"], ["readyz"], ["livez"]):
            return self._send(200, b"ok")
        if len(parts) == 4 and parts[0] == "containerLogs":
            return self._logs(parts[1], parts[2], parts[3], q)
        return self._send(404, b"not found (the local node agent serves /containerLogs and /healthz only)")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _logs(self, ns: str, pod: str, container: str, q: dict) -> None:
        previous = q.get("previous", ["false"])[0] == "true"
        follow = q.get("follow", ["false"])[0] == "true"
        tail = int(q["tailLines"][0]) if "tailLines" in q else None
        limit = int(q["limitBytes"][0]) if "limitBytes" in q else None
        path, worker = self.server.agent.find_log(ns, pod, container, previous)
        if path is None or not path.exists():
            return self._send(404, f'container "{container}" in pod "{pod}" has no logs here'.encode())
        data = path.read_bytes()
        if tail is not None:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail:]) if tail > 0 else b""
        offset = path.stat().st_size if tail is not None else len(data)
        sent = 0

        def out(b: bytes) -> bool:
            nonlocal sent
            if limit is not None:
                b = b[: max(0, limit - sent)]
            if b:
                self.wfile.write(b)
                self.wfile.flush()
                sent += len(b)
            return limit is None or sent < limit

        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        if not out(data) or not follow or previous:
            return
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                chunk = f.read(65536)
                if chunk:
                    if not out(chunk):
                        return
                    continue
                if worker is None or not worker.is_running(container):
                    rest = f.read()
                    out(rest)
                    return
                time.sleep(0.2)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s: %(message)s",
                        stream=sys.stdout)
    cfg = json.loads(Path(sys.argv[1]).read_text())
    agent = Agent(cfg)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
