"""The local cluster's volume provisioner: hostPath PersistentVolumes for claims.

Every node of the local cluster is this machine, so a folder of the cluster's data dir is
reachable from every node: for each Pending claim without ``volumeName``/selector/dataSource
it creates a PersistentVolume ``pvc-<uid>`` (hostPath ``<data>/pv/<ns>-<claim>``, mode 0777
like rancher's local-path-provisioner, reclaim policy Retain) pre-bound to the claim; the
real PV controller binds them. When a claim is deleted the Released volume object is deleted
and the folder kept (a claim re-created with the same name sees the old files). It also
creates the default StorageClass ``local-path`` (provisioner ``edgetune.io/local-path``).

Run by the launcher as ``python -m edgetune_localcluster.provisioner <provisioner.json>`` with
the admin kubeconfig (the kubelets' node identities may not create volumes).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from kubernetes import config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("provisioner")

MERGE = "application/merge-patch+json"
STORAGE_CLASS = "local-path"
PROVISIONER = "edgetune.io/local-path"
LABEL = "edgetune.io/localcluster-provisioned"


class Kube:
    """A thin JSON-over-REST layer on the official client's ApiClient (its kubeconfig loading,
    TLS and urllib3 pool); the typed API methods validate every call with pydantic, which is
    slow on first use, and turn objects into models we only turn back into dicts."""

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


class Provisioner:
    def __init__(self, kubeconfig: str, pv_dir: Path):
        self.kube = Kube(kubeconfig)
        self.pv_dir = pv_dir
        self.pv_dir.mkdir(parents=True, exist_ok=True)
        self.stopping = threading.Event()

    def ensure_storage_class(self) -> None:
        body = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {"name": STORAGE_CLASS,
                             "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
                "provisioner": PROVISIONER, "reclaimPolicy": "Retain", "volumeBindingMode": "Immediate"}
        try:
            self.kube.post("/apis/storage.k8s.io/v1/storageclasses", body)
        except ApiException as e:
            if e.status != 409:
                raise

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.ensure_storage_class()
                lst = self.kube.get("/api/v1/persistentvolumeclaims")
                for pvc in lst["items"]:
                    self.provision(pvc)
                self.reap_released()
                for ev in self.kube.watch("/api/v1/persistentvolumeclaims", lst["metadata"]["resourceVersion"], 60):
                    if self.stopping.is_set():
                        break
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self.provision(ev["object"])
                    elif ev["type"] == "DELETED":
                        self.reap_released()
                self.reap_released()
            except Exception as e:  # the API server may be restarting
                if not self.stopping.is_set():
                    log.warning("provisioner: %s", e)
                    self.stopping.wait(1)

    def provision(self, pvc: dict) -> None:
        md, spec = pvc["metadata"], pvc["spec"]
        if spec.get("volumeName") or pvc.get("status", {}).get("phase") != "Pending" or md.get("deletionTimestamp"):
            return
        if spec.get("selector") or spec.get("dataSource"):
            return  # those ask for a particular volume: not ours to make
        sc = spec.get("storageClassName")
        if sc not in (None, STORAGE_CLASS):
            return  # another class ("" = static binding only)
        ns, claim = md["namespace"], md["name"]
        path = self.pv_dir / f"{ns}-{claim}"
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o777)  # any Pod UID may write, as with local-path-provisioner
        storage = (spec.get("resources", {}).get("requests") or {}).get("storage", "1Gi")
        pv = {"apiVersion": "v1", "kind": "PersistentVolume",
              "metadata": {"name": f"pvc-{md['uid']}", "labels": {LABEL: "true"},
                           "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
              "spec": {"capacity": {"storage": storage},
                       "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
                       "hostPath": {"path": str(path), "type": "Directory"},
                       "persistentVolumeReclaimPolicy": "Retain",
                       "storageClassName": sc or STORAGE_CLASS,
                       "volumeMode": spec.get("volumeMode") or "Filesystem",
                       "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns,
                                    "name": claim, "uid": md["uid"]}}}
        try:
            self.kube.post("/api/v1/persistentvolumes", pv)
            log.info("provisioned %s for claim %s/%s at %s", pv["metadata"]["name"], ns, claim, path)
        except ApiException as e:
            if e.status != 409:
                raise

    def reap_released(self) -> None:
        """Delete the PersistentVolume objects we made whose claims are gone (the data stay)."""
        time.sleep(0.5)  # the PV controller marks the volume Released after the claim is gone
        lst = self.kube.get("/api/v1/persistentvolumes", labelSelector=f"{LABEL}=true")
        for pv in lst["items"]:
            if pv.get("status", {}).get("phase") == "Released":
                try:
                    self.kube.delete(f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
                except ApiException:
                    pass


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = Provisioner(cfg["kubeconfig"], Path(cfg["pv_dir"]))
    signal.signal(signal.SIGTERM, lambda *_: (p.stopping.set(), sys.exit(0)))
    p.run()


if __name__ == "__main__":
    main()
