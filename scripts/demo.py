"""`make demo`: the whole pipeline on the local cluster, end to end.

local cluster up -> its S3 server (SeaweedFS, authentication on) with a bucket and a Secret
holding the key pair -> CRDs -> operator (its own ServiceAccount, exactly its RBAC; object
storage as its default artifact store, as at an edge site where the GPU server and the Jetson
share no volume) -> examples/local (FinetuneJob, ModelConversion, EdgeBenchmark) -> progress
while it works -> `kubectl get` tables with AP and latency, where every artifact went, and where
the metrics are.

The cluster and the operator keep running afterwards so that you can look around
(`kubectl`, the metrics endpoint); `make demo-down` stops everything.

    python scripts/demo.py up|down|status
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from edgetune_contract import names
from edgetune_contract.results import STAGES
from edgetune_localcluster import LocalCluster, images

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".demo"
NAMESPACE = "edgetune-demo"
OPERATOR_NS = "edgetune-system"
OPERATOR_SA = "edgetune-operator"
METRICS_PORT = int(os.environ.get("EDGETUNE_DEMO_METRICS_PORT", "18080"))
HEALTH_PORT = int(os.environ.get("EDGETUNE_DEMO_HEALTH_PORT", "18081"))
TIMEOUT = float(os.environ.get("EDGETUNE_DEMO_TIMEOUT", "1800"))
BUCKET, PREFIX, S3_SECRET = "edgetune", "demo", "edgetune-s3"


class DemoError(Exception):
    """A failure the demo explains in one message (no stack trace)."""


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def cluster() -> LocalCluster:
    return LocalCluster(data_dir=STATE / "cluster")


def kubectl(c: LocalCluster, *args: str, input: str | None = None) -> str:
    p = c.kubectl(*args, check=False, input=input)
    if p.returncode != 0:
        raise DemoError(f"kubectl {' '.join(args)} failed: {(p.stderr or p.stdout).strip()}")
    return p.stdout


# --- the operator as a detached local process -------------------------------------------------

def operator_pid() -> int | None:
    try:
        pid = int((STATE / "operator.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_operator(c: LocalCluster, store_default: dict) -> None:
    if operator_pid():
        say("operator already running")
        return
    kubectl(c, "apply", "-f", str(ROOT / "operator/rbac/rbac.yaml"))
    sa_kubeconfig = c.serviceaccount_kubeconfig(OPERATOR_NS, OPERATOR_SA)
    # the job steps run on the cluster's nodes in the CPU job image, built here from
    # images/trainer-cpu (no registry): as its non-root user, never pulled
    say("building the CPU job image (images/trainer-cpu; cached after the first build)")
    job_image = c.load_image(images.trainer_cpu_image(c.images["base"]), "trainer-cpu")
    env = dict(os.environ, PYTHONUNBUFFERED="1", EDGETUNE_NAMESPACES=NAMESPACE,
               EDGETUNE_LEASE_NAMESPACE=OPERATOR_NS, EDGETUNE_BIND_ADDRESS="127.0.0.1",
               EDGETUNE_PROGRESS_INTERVAL="3", EDGETUNE_TRAINER_IMAGE=job_image,
               EDGETUNE_JETSON_IMAGE=job_image, EDGETUNE_IMAGE_PULL_POLICY="Never",
               EDGETUNE_ARTIFACTS_S3=json.dumps(store_default))
    env.pop("KUBECONFIG", None)
    log = open(STATE / "operator.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetune_operator", "--kubeconfig", str(sa_kubeconfig),
         "--metrics-port", str(METRICS_PORT), "--health-port", str(HEALTH_PORT)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
    (STATE / "operator.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the operator exited with {proc.returncode}; see {STATE / 'operator.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{HEALTH_PORT}/healthz", timeout=1):
                say(f"operator running as ServiceAccount {OPERATOR_NS}/{OPERATOR_SA} "
                    f"(pid {proc.pid}, log {STATE / 'operator.log'})")
                return
        except OSError:
            time.sleep(0.5)
    raise DemoError(f"the operator did not become healthy in 60 s; see {STATE / 'operator.log'}")


def stop_operator() -> None:
    pid = operator_pid()
    if pid:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            if operator_pid() is None:
                break
            time.sleep(0.2)
        else:
            os.killpg(pid, signal.SIGKILL)
        say(f"operator (pid {pid}) stopped")
    (STATE / "operator.pid").unlink(missing_ok=True)


# --- watching ---------------------------------------------------------------------------------

def get(c: LocalCluster, kind: str, name: str) -> dict:
    p = c.kubectl("get", names.PLURALS[kind], name, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(p.stdout) if p.returncode == 0 else {}


def describe(kind: str, obj: dict) -> str:
    st = obj.get("status") or {}
    parts = [st.get("phase") or "Pending"]
    if st.get("stage"):
        parts.append(f"stage={st['stage']}")
    prog = st.get("progress") or {}
    if prog.get("text"):
        parts.append(prog["text"])  # e.g. "46% training epoch 23/50, ETA 2m10s"
        if prog.get("loss") is not None and prog.get("phase") == "train":
            parts.append(f"loss {prog['loss']:.3f}")
    for cond in st.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("type") in ("SourceReady", "ModelReady", "Scheduled"):
            parts.append(f"{cond['type']}={cond['reason']}")
    return " ".join(parts)


def failure_message(obj: dict) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Failed", "Ready") and cond.get("message"):
            if cond["type"] == "Failed" and cond.get("status") == "True" or cond["type"] == "Ready":
                return f"{cond.get('reason')}: {cond['message']}"
    return "no message"


def watch(c: LocalCluster, resources: dict[str, str]) -> None:
    last: dict[str, str] = {}
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        done = 0
        for kind, name in resources.items():
            obj = get(c, kind, name)
            line = describe(kind, obj)
            if last.get(kind) != line:
                say(f"{kind}/{name}: {line}")
                last[kind] = line
            phase = (obj.get("status") or {}).get("phase")
            if phase == "Failed":
                raise DemoError(f"{kind}/{name} failed: {failure_message(obj)}")
            done += phase == "Succeeded"
        if done == len(resources):
            return
        time.sleep(2)
    raise DemoError(f"not finished after {TIMEOUT:.0f} s (set EDGETUNE_DEMO_TIMEOUT to wait longer)")


def accuracy_table(ft: dict, mc: dict) -> list[str]:
    """Base -> fine-tuned -> converted, the reference workflow's before/after, from the two
    resources' status: each row says which step measured it, on what."""
    fm, cm = ft.get("metrics") or {}, mc.get("metrics") or {}
    fprov = (ft.get("provenance") or {}).get("finetune") or {}
    vprov = (mc.get("provenance") or {}).get("verify") or {}
    ds = fprov.get("dataset") or {}
    base, tuned, conv = fm.get("base"), fm.get("finetuned"), cm.get("converted")

    def f(m: dict | None, k: str) -> str:
        return "n/a" if not m or m.get(k) is None else f"{m[k]:.3f}"

    bm = fprov.get("base_model") or {}
    base_what = (f"finetune step, before training ({fprov.get('base_eval', 'checkpoint as given')})"
                 if base else "no base checkpoint: random init")
    conv_what = (f"verify step, {vprov.get('backend', '?')} {vprov.get('precision', '')}"
                 f" on {vprov.get('images', '?')} val images; drop {cm.get('mapDrop')} vs PyTorch "
                 f"{f(cm.get('reference'), 'mAP')} at the export's input")
    rows = [("base model", base, base_what),
            ("fine-tuned", tuned, f"finetune step, {fprov.get('checkpoint_kind', '?')} checkpoint "
                                  f"(epoch {fprov.get('checkpoint_epoch')}/{fprov.get('epochs')})"),
            ("converted", conv, conv_what)]
    out = [f"==> accuracy: COCO bbox AP on the demo's {ds.get('val_images', '?')} val images "
           f"({fprov.get('image_size', '?')} px)",
           f"    {'model':<12}{'mAP':>7}{'mAP50':>8}{'mAP75':>8}   measured by"]
    out += [f"    {name:<12}{f(m, 'mAP'):>7}{f(m, 'mAP50'):>8}{f(m, 'mAP75'):>8}   {what}" for name, m, what in rows]
    if bm:
        out.append(f"    base model: {bm.get('description')} (stamp {bm.get('stamp')}, {bm.get('pretrained_on')})")
    if base and tuned and base.get("mAP") is not None and tuned.get("mAP") is not None:
        lift = tuned["mAP"] - base["mAP"]
        out.append(f"    lift base -> fine-tuned {lift:+.3f} (target >= {TARGET_LIFT}: "
                   f"{'met' if lift >= TARGET_LIFT else 'NOT met'}); fine-tuned {tuned['mAP']:.3f} "
                   f"(target >= {TARGET_MAP}: {'met' if tuned['mAP'] >= TARGET_MAP else 'NOT met'})")
    if conv and tuned and conv.get("mAP") is not None and tuned.get("mAP") is not None:
        out.append(f"    fine-tuned -> converted {round(conv['mAP'] - tuned['mAP'], 3) + 0.0:+.3f}")
    return out


def report(c: LocalCluster) -> None:
    print()
    for kind in names.KINDS:
        print(kubectl(c, "get", names.PLURALS[kind], "-n", NAMESPACE))
    ft = get(c, "FinetuneJob", "balloon").get("status") or {}
    mc = get(c, "ModelConversion", "balloon-ort").get("status") or {}
    eb = get(c, "EdgeBenchmark", "balloon-ort-orin").get("status") or {}
    print("\n".join(accuracy_table(ft, mc)))
    for stage in STAGES:
        lat = (eb.get("latency") or {}).get(stage) or {}
        say(f"latency {stage:<12} mean {lat.get('meanMs')}  p50 {lat.get('p50Ms')}  p90 {lat.get('p90Ms')}  "
            f"p99 {lat.get('p99Ms')} ms")
    say(f"throughput    {eb.get('throughputFps')} fps on {eb.get('device')}")
    bench = (eb.get("provenance") or {}).get("benchmark") or eb.get("provenance")
    say("measured by   (status.provenance.benchmark)")
    for key, value in sorted((bench or {}).items()):
        print(f"    {key:<17} {value if isinstance(value, (str, int, float)) else json.dumps(value, default=str)}")
    print()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
            text = r.read().decode()
        wanted = ("edgetune_finetune_map_ratio", "edgetune_conversion_map_drop_ratio",
                  "edgetune_benchmark_throughput_fps")
        lines = [l for l in text.splitlines()
                 if l.startswith(wanted) or (l.startswith("edgetune_benchmark_latency_seconds{")
                                             and 'stage="pipeline"' in l)]
        print("\n".join(lines[:20]))
    except OSError as exc:
        print(f"(metrics endpoint not reachable: {exc})")
    print()
    say(f"metrics: http://127.0.0.1:{METRICS_PORT}/metrics   operator log: {STATE / 'operator.log'}")
    say(f"kubectl: export KUBECONFIG={c.kubeconfig}; PATH={c.data_dir / 'bin'}:$PATH")
    artifact_report(c, {"FinetuneJob": ft, "ModelConversion": mc, "EdgeBenchmark": eb})
    say("stop everything: make demo-down")


# --- commands ---------------------------------------------------------------------------------

BASE_MODEL_DIR = "models"  # in the store: examples/local's spec.model.checkpoint points here
# the resources (00-artifacts-pvc.yaml is the volume of the PVC mode, which the tests use)
EXAMPLES = ("01-finetunejob.yaml", "02-modelconversion.yaml", "03-edgebenchmark.yaml")
TARGET_MAP, TARGET_LIFT = 0.6, 0.3  # issue 11's targets


def base_checkpoint(just_built: bool = False) -> Path:
    """The generated base model (edgetune_jobs.training.base_model), cached in $EDGETUNE_CACHE
    under its version stamp; pre-trained first when missing."""
    from edgetune_jobs.training import base_model

    was_cached = base_model.cached() is not None and not just_built
    ckpt = base_model.ensure(log=say)
    side = json.loads(base_model.sidecar_path(ckpt).read_text())
    say(f"base model: {ckpt.name} (stamp {side['stamp']}, {'cached, ' if was_cached else ''}pre-trained "
        f"{side['built']} in {side['training']['seconds'] / 60:.1f} min; mAP {side['val']['mAP']} on its own "
        f"generic-objects val set)")
    return ckpt


class Pretraining:
    """The base model's pre-training in the background, while the cluster starts.

    It runs with 1 torch thread (base_model: 2 OpenMP threads on a busy 2-core machine wait
    for each other), so the other core is free for the cluster, its S3 server and the job
    image's import: on a first run the two overlap instead of adding up, and the checkpoint
    is the same as when built alone (same stamp, same kernels). Its own process group: a
    failed or interrupted demo stops it (and its data loader workers) instead of leaving it
    running; the next run starts it again.
    """

    def __init__(self, cmd: list[str], log: Path):
        self.log = log
        self.started = time.monotonic()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))

    @classmethod
    def start(cls, log: Path) -> "Pretraining | None":
        """Started when the base model is not cached yet, else None."""
        from edgetune_jobs.training import base_model

        if base_model.cached() is not None:
            return None
        say(f"pre-training the base model in the background while the cluster starts (once; its progress: "
            f"{log})")
        return cls([sys.executable, "-m", "edgetune_jobs.training.base_model"], log)

    def wait(self) -> float:
        """Waits for it to finish; returns the seconds it ran. A failure is a DemoError with
        the end of its log."""
        if self.proc.poll() is None:
            say("the cluster is ready; waiting for the base model's pre-training")
        last = 0.0
        while self.proc.poll() is None:
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                lines = self.log.read_text(errors="replace").strip().splitlines()
                if lines:
                    print(lines[-1], flush=True)  # base_model's own "==> pre-training: ..." line
            time.sleep(1)
        code = self.proc.returncode
        if code != 0:
            tail = self.log.read_text(errors="replace").strip().splitlines()[-15:]
            raise DemoError(f"the base model's pre-training failed (exit {code}); the end of {self.log}:\n"
                            + "\n".join(tail))
        return time.monotonic() - self.started

    def stop(self) -> None:
        """Stops it (and its children) if it is still running."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            say("stopped the base model's pre-training (the next `make demo` starts it again)")


def object_storage(c: LocalCluster) -> dict:
    """The cluster's S3 server with the demo's bucket, and the Secret with its key pair in the
    demo namespace (the step Pods get it through secretKeyRef; the operator never reads it).
    Returns the operator's default store (spec.artifacts.s3's shape: no secret in it)."""
    store = c.object_store(buckets=(BUCKET,))
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": S3_SECRET, "namespace": NAMESPACE},
              "stringData": {"accessKeyID": store.access_key, "secretAccessKey": store.secret_key}}
    kubectl(c, "apply", "-f", "-", input=json.dumps(secret))
    say(f"object storage: SeaweedFS S3 at {store.endpoint}, bucket {BUCKET}, key pair in Secret "
        f"{NAMESPACE}/{S3_SECRET}")
    return {"endpoint": store.endpoint, "bucket": BUCKET, "prefix": PREFIX, "credentialsSecret": {"name": S3_SECRET}}


def install_base_model(c: LocalCluster, ckpt: Path) -> None:
    """Uploads the base checkpoint and its sidecar to the bucket, where a real user would have
    put their pretrained weights (examples/local's spec.model.checkpoint is relative to the
    store's root: s3://edgetune/demo/models/...)."""
    from edgetune_jobs.training import base_model

    s3 = c.object_store(buckets=(BUCKET,)).client()
    for src in (ckpt, base_model.sidecar_path(ckpt)):
        s3.upload_file(str(src), BUCKET, f"{PREFIX}/{BASE_MODEL_DIR}/{src.name}")
    say(f"base model uploaded: s3://{BUCKET}/{PREFIX}/{BASE_MODEL_DIR}/{ckpt.name}")


def artifact_report(c: LocalCluster, statuses: dict[str, dict]) -> None:
    """Where each resource's artifacts went (status URIs), and what the bucket holds per step."""
    for kind, st in statuses.items():
        for key, uri in sorted((st.get("artifacts") or {}).items()):
            say(f"artifact {kind}.{key:<12} {uri}")
    s3 = c.object_store(buckets=(BUCKET,)).client()
    sizes: dict[str, list[int]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/{NAMESPACE}/"):
        for obj in page.get("Contents") or []:
            step = "/".join(obj["Key"].split("/")[2:5])  # <kind>/<name>/<step>
            sizes.setdefault(step, []).append(obj["Size"])
    for step, got in sorted(sizes.items()):
        say(f"bucket s3://{BUCKET}/{PREFIX}/{NAMESPACE}/{step}/: {len(got)} objects, {sum(got) / 2**20:.1f} MiB "
            f"(edgetune-manifest.json written last)")


def up() -> None:
    STATE.mkdir(exist_ok=True)
    c = cluster()
    t0, load, cpus = time.monotonic(), os.getloadavg()[0], os.cpu_count() or 1
    warning = busy(load, cpus)
    if warning:
        say(warning)
    # The first run pre-trains the base model; it overlaps the cluster's start (Pretraining).
    pretraining = Pretraining.start(STATE / "pretrain.log")
    try:
        ckpt = None if pretraining else base_checkpoint()
        say("starting a fresh local Kubernetes cluster (kube-apiserver, controller-manager, scheduler, etcd; "
            "kubelet + containerd nodes, kube-proxy, CoreDNS)")
        stop_operator()
        # Fresh every time: specs are immutable, so the examples of an earlier run (perhaps with
        # other settings) would be refused rather than re-run.
        c.up(fresh=True)
        say("installing the CRDs")
        kubectl(c, "apply", "-f", str(ROOT / "crds"))
        kubectl(c, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(ROOT / "crds"))
        for ns in (NAMESPACE, OPERATOR_NS):
            kubectl(c, "apply", "-f", "-", input=kubectl(c, "create", "namespace", ns, "--dry-run=client", "-o", "yaml"))
        store_default = object_storage(c)
        say("starting the operator")
        start_operator(c, store_default)
        t_ready = time.monotonic()
        pretrain_s = pretraining.wait() if pretraining else None
        ckpt = ckpt or base_checkpoint(just_built=True)
        install_base_model(c, ckpt)
    finally:
        if pretraining:
            pretraining.stop()
    t_apply = time.monotonic()
    say(f"applying examples/local to namespace {NAMESPACE} (artifacts: object storage, the operator's default)")
    for f in EXAMPLES:
        print(kubectl(c, "apply", "-f", str(ROOT / "examples/local" / f)), end="")
    resources = {}
    for f in EXAMPLES:
        for doc in (ROOT / "examples/local" / f).read_text().split("\n---"):
            for kind in names.KINDS:
                if f"kind: {kind}" in doc:
                    resources[kind] = next(l.split(":", 1)[1].strip() for l in doc.splitlines()
                                           if l.strip().startswith("name:"))
    watch(c, resources)
    report(c)
    say(timeline(time.monotonic() - t0, t_ready - t0, pretrain_s, time.monotonic() - t_apply, load, cpus))


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {round(seconds % 60):02d} s"


def timeline(total: float, setup: float, pretrain: float | None, pipeline: float, load: float, cpus: int) -> str:
    """Where the demo's time went, in one line, with how busy the machine was when it started."""
    base = ("the base model cached" if pretrain is None else
            f"the base model's pre-training {minutes(pretrain)}, in the background from the start")
    return (f"demo took {minutes(total)}: cluster, S3 server and operator ready after {minutes(setup)}; {base}; "
            f"kubectl apply -> results {minutes(pipeline)}; load average at the start {load:.1f} on {cpus} CPUs")


def busy(load: float, cpus: int) -> str | None:
    """A warning when other work already keeps the CPUs busy: the demo's figures in the README
    are for a quiet machine, and on a busy one its time is not a measurement of edgetune."""
    if load < 0.75 * cpus:
        return None
    return (f"this machine is busy (load average {load:.1f} over the last minute on {cpus} CPUs): the demo shares "
            "them with that work and will take longer than the README's figures for a quiet machine")


def down() -> None:
    stop_operator()
    c = cluster()
    if (STATE / "cluster").exists():
        # the next `make demo` starts a fresh cluster: its data (~13 GiB with the job image
        # unpacked on each node, the bucket's objects) would only fill the disk
        c.destroy()
        say(f"local cluster stopped and its data removed ({STATE / 'cluster'}); the operator's log stays")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["up", "down", "status"])
    args = ap.parse_args(argv)
    # `kill` or a closed terminal end the demo like Ctrl-C does: through the `finally`s that stop
    # the background pre-training (Python's default for these signals skips them)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    try:
        if args.command == "up":
            up()
        elif args.command == "down":
            down()
        else:
            c = cluster()
            print(json.dumps({"cluster": c.status() if c.is_up() else "down", "operator_pid": operator_pid()},
                             indent=1, default=str))
    except DemoError as exc:
        print(f"\nedgetune demo failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; `make demo-down` stops the cluster and the operator", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
