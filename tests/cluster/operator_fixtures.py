"""Fixtures for the operator's cluster tests (used via ``pytest_plugins``).

- ``crds`` (session): the CRDs from crds/ applied to the local cluster and Established.
- ``operator_sa_kubeconfig`` (session): operator/rbac/rbac.yaml applied (namespace
  edgetune-system) and a kubeconfig for the operator's own ServiceAccount, bound to exactly
  those rules: the operator under test never runs as admin.
- ``ns`` (function): a namespace with the ``edgetune-artifacts`` claim.
- ``standin_env`` (session): the operator image and the stand-in image (operator image +
  tests/cluster/standin_step.py, tests/cluster/standin.Dockerfile) built here and loaded into
  every node; the operator settings that make the Jobs run the stand-in in it.
- ``ml_image`` (session): images/trainer-cpu (the real steps: torch, mmdet, mmdeploy,
  onnxruntime) built here and loaded into every node, for the tests that run the real steps.
- ``operator`` (function): a running operator serving ``ns`` with the stand-in step command.
- ``OperatorProcess``: start/stop/kill more operators (restarts, two replicas).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from support import free_port, wait_for  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NS = "edgetune-system"
SA = "edgetune-operator"
STANDIN = ["python", "/opt/edgetune/standin_step.py"]  # its path in the stand-in image


def build_standin_images(cluster) -> dict[str, str]:
    """The operator image (images/operator/Dockerfile on the local Debian base) and the
    stand-in image on top of it, built (cached by content) and loaded into every node."""
    from edgetune_localcluster import images
    operator = images.operator_image(cluster.images["base"])
    standin = images.build_dockerfile("standin", ROOT / "tests" / "cluster" / "standin.Dockerfile", ROOT,
                                      [ROOT / "tests" / "cluster" / "standin_step.py"], {"OPERATOR_IMAGE": operator})
    cluster.load_image(operator, "operator")
    cluster.load_image(standin, "standin")
    return {"operator": operator, "standin": standin}


def standin_settings(standin_image: str) -> dict[str, str]:
    """Operator settings: every step runs the stand-in, in its image, as the operator's
    default non-root job user."""
    return {
        "EDGETUNE_STEP_COMMAND_OVERRIDE": json.dumps(STANDIN),
        "EDGETUNE_TRAINER_IMAGE": standin_image,
        "EDGETUNE_JETSON_IMAGE": standin_image,
        "EDGETUNE_IMAGE_PULL_POLICY": "Never",
    }


class Kube:
    """kubectl helpers bound to a cluster (admin credentials: for the tests, not the operator)."""

    def __init__(self, cluster):
        self.cluster = cluster

    def run(self, *args, check=True, input=None):
        return self.cluster.kubectl(*args, check=check, input=input)

    def apply(self, *objs, check=True):
        return self.run("apply", "-f", "-", check=check,
                        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))

    def create(self, obj, *, dry_run=False, check=True):
        args = ["create", "-f", "-"] + (["--dry-run=server"] if dry_run else [])
        return self.run(*args, check=check, input=json.dumps(obj))

    def get(self, kind, name=None, ns=None, selector=None, check=True):
        args = ["get", kind] + ([name] if name else []) + (["-n", ns] if ns else []) + \
               (["-l", selector] if selector else []) + ["-o", "json"]
        p = self.run(*args, check=check)
        if p.returncode != 0:
            return None
        return json.loads(p.stdout)

    def status(self, kind, name, ns):
        obj = self.get(kind, name, ns, check=False)
        return (obj or {}).get("status") or {}

    def cond(self, kind, name, ns, type_):
        for c in self.status(kind, name, ns).get("conditions") or []:
            if c["type"] == type_:
                return c
        return None

    def jobs(self, ns, selector="app.kubernetes.io/managed-by=edgetune-operator"):
        return self.get("jobs", ns=ns, selector=selector)["items"]

    def pods(self, ns, selector="app.kubernetes.io/managed-by=edgetune-operator"):
        return self.get("pods", ns=ns, selector=selector)["items"]

    def events(self, ns, name):
        items = self.get("events", ns=ns)["items"]
        return [e for e in items if e["involvedObject"]["name"] == name]

    def wait_phase(self, kind, name, ns, phases, timeout=90):
        phases = (phases,) if isinstance(phases, str) else tuple(phases)
        return wait_for(lambda: self.status(kind, name, ns).get("phase") in phases and self.status(kind, name, ns),
                        timeout=timeout, what=f"{kind} {ns}/{name} phase in {phases}")


class OperatorProcess:
    """The operator as a separate process: `python -m edgetune_operator` with the ServiceAccount's
    kubeconfig, serving the given namespaces, the stand-in as the step command."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], log_dir: Path, *, lease: str,
                 standin_env: dict, identity: str | None = None, extra_env: dict | None = None):
        self.kubeconfig, self.namespaces, self.lease = kubeconfig, namespaces, lease
        self.standin_env = standin_env
        self.identity = identity
        self.metrics_port, self.health_port = free_port(), free_port()
        self.log_path = log_dir / f"operator-{lease}-{time.time_ns()}.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(self.standin_env)
        env.update({
            "EDGETUNE_LEASE_NAMESPACE": OPERATOR_NS,
            "EDGETUNE_LEASE_NAME": self.lease,
            "EDGETUNE_LEASE_DURATION": "6",
            "EDGETUNE_LEASE_RENEW_PERIOD": "2",
            "EDGETUNE_PROGRESS_INTERVAL": "1",
            "EDGETUNE_BIND_ADDRESS": "127.0.0.1",
            "EDGETUNE_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        })
        env.pop("KUBECONFIG", None)
        if self.identity:
            env["EDGETUNE_IDENTITY"] = self.identity
        env.update(self.extra_env)
        return env

    def start(self) -> "OperatorProcess":
        args = [sys.executable, "-m", "edgetune_operator", "--kubeconfig", str(self.kubeconfig),
                "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port)]
        for ns in self.namespaces:
            args += ["--namespace", ns]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=self.env(), cwd=ROOT,
                                     start_new_session=True)
        wait_for(self.healthy, timeout=30, what=f"operator /healthz ({self.log_path})")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"operator exited ({self.proc and self.proc.returncode}):\n{self.logs()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def leading(self) -> bool:
        return "acquired Lease" in self.logs()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0


@pytest.fixture(scope="session")
def standin_images(local_cluster) -> dict[str, str]:
    return build_standin_images(local_cluster)


@pytest.fixture(scope="session")
def ml_image(local_cluster) -> str:
    from edgetune_localcluster import images
    image = images.trainer_cpu_image(local_cluster.images["base"])
    local_cluster.load_image(image, "trainer-cpu")
    return image


def real_steps_settings(image: str) -> dict[str, str]:
    """Operator settings: the real steps, in the CPU job image, on every node."""
    return {"EDGETUNE_STEP_COMMAND_OVERRIDE": "", "EDGETUNE_TRAINER_IMAGE": image, "EDGETUNE_JETSON_IMAGE": image,
            "EDGETUNE_IMAGE_PULL_POLICY": "Never"}


@pytest.fixture(scope="session")
def standin_env(standin_images) -> dict[str, str]:
    return standin_settings(standin_images["standin"])


@pytest.fixture(scope="session")
def kube(local_cluster) -> Kube:
    return Kube(local_cluster)


@pytest.fixture(scope="session")
def crds(local_cluster, kube):
    kube.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube.run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
    # the discovery cache of kubectl may lag right after the CRDs appear
    wait_for(lambda: kube.run("get", "finetunejobs", "-A", check=False).returncode == 0, timeout=30,
             what="the CRDs to be served")
    return ROOT / "crds"


@pytest.fixture(scope="session")
def operator_sa_kubeconfig(local_cluster, kube, crds) -> Path:
    if kube.run("get", "namespace", OPERATOR_NS, check=False).returncode != 0:
        kube.run("create", "namespace", OPERATOR_NS)
    kube.run("apply", "-f", str(ROOT / "operator" / "rbac" / "rbac.yaml"))
    return Path(local_cluster.serviceaccount_kubeconfig(OPERATOR_NS, SA))


@pytest.fixture(scope="session")
def log_dir(local_cluster) -> Path:
    d = Path(local_cluster.data_dir) / "operator-logs"
    d.mkdir(parents=True, exist_ok=True)
    return d


def artifacts_claim(ns: str) -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "local" / "00-artifacts-pvc.yaml").read_text())
    doc["metadata"]["namespace"] = ns
    return doc


@pytest.fixture
def ns(namespace, kube, crds) -> str:
    kube.apply(artifacts_claim(namespace))
    wait_for(lambda: (kube.get("pvc", "edgetune-artifacts", namespace).get("status") or {}).get("phase") == "Bound",
             timeout=30, what="the artifacts claim to be bound")
    return namespace


@pytest.fixture
def start_operator(operator_sa_kubeconfig, log_dir, standin_env, request):
    started: list[OperatorProcess] = []

    def start(namespaces, *, lease=None, identity=None, extra_env=None, wait_leader=True) -> OperatorProcess:
        op = OperatorProcess(operator_sa_kubeconfig, namespaces, log_dir, lease=lease or f"op-{namespaces[0]}",
                             standin_env=standin_env, identity=identity, extra_env=extra_env)
        started.append(op)
        op.start()
        if wait_leader:
            wait_for(op.leading, timeout=30, what="the operator to hold its Lease")
        return op

    yield start
    for op in started:
        op.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for op in started:
            print(f"--- {op.log_path} ---\n{op.logs()[-5000:]}")


@pytest.fixture
def operator(ns, start_operator) -> OperatorProcess:
    return start_operator([ns])


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
