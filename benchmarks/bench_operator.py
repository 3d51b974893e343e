"""Operator benchmark: apply N FinetuneJobs to the local cluster and measure, for each, the time
from its create call returning to its Job appearing in a watch; and the operator's peak RSS.
With --restart-at K the operator is stopped after K creates and a new one started (as after a
crash or an upgrade): then it prints the time until every resource has converged (its Job
exists and its status shows the Pod the scheduler cannot place) and checks that no Job was
created twice (one UID per Job name in the watch).

    python benchmarks/bench_operator.py [-n 500] [--rate 0] [--workers 4] [--restart-at K] [--keep]

The operator runs as its own process with its ServiceAccount (operator/rbac/rbac.yaml), serving
one fresh namespace. The Jobs' Pods select a node that does not exist, so nothing runs: the
figure is the operator's reaction time, not the steps'. A benchmark, not a test: it prints
figures (target: p99 < 1 s, RSS < 150 MiB) and never fails on them.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "localcluster"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=int(os.environ.get("BENCH_N", "500")), help="resources (default 500)")
    ap.add_argument("--rate", type=float, default=0, help="creates per second (0: as fast as the client goes)")
    ap.add_argument("--workers", type=int, default=4, help="client threads creating resources")
    ap.add_argument("--data-dir", default=os.environ.get("EDGETUNE_BENCH_CLUSTER_DIR",
                                                         str(ROOT / "localcluster" / ".data" / "bench")))
    ap.add_argument("--keep", action="store_true", help="leave the cluster running")
    ap.add_argument("--restart-at", type=int, default=0, help="restart the operator after this many creates")
    args = ap.parse_args()

    from edgetune_localcluster import LocalCluster
    from kubernetes import client, config, watch

    cluster = LocalCluster(args.data_dir)
    started_cluster = not cluster.is_up()
    if started_cluster:
        print(f"starting the local cluster in {args.data_dir} ...", flush=True)
        cluster.up()
    op = None
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    try:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(ROOT / "crds"))
        if cluster.kubectl("get", "namespace", "edgetune-system", check=False).returncode != 0:
            cluster.kubectl("create", "namespace", "edgetune-system")
        cluster.kubectl("apply", "-f", str(ROOT / "operator" / "rbac" / "rbac.yaml"))
        cluster.kubectl("create", "namespace", ns)
        sa_kubeconfig = cluster.serviceaccount_kubeconfig("edgetune-system", "edgetune-operator")

        log_path = Path(args.data_dir) / f"operator-{ns}.log"
        env = dict(os.environ, EDGETUNE_LEASE_NAMESPACE="edgetune-system", EDGETUNE_LEASE_NAME=f"bench-{ns}",
                   EDGETUNE_BIND_ADDRESS="127.0.0.1", PYTHONUNBUFFERED="1",
                   EDGETUNE_LOG_LEVEL="WARNING")
        env.pop("KUBECONFIG", None)
        profile = os.environ.get("BENCH_OPERATOR_PROFILE")  # a path: run the operator under cProfile
        prof_args = ["-m", "cProfile", "-o", profile] if profile else []

        def start_operator():
            health = free_port()
            mark = len(log_path.read_text()) if log_path.exists() else 0
            proc = subprocess.Popen([sys.executable, *prof_args, "-m", "edgetune_operator", "--kubeconfig",
                                     str(sa_kubeconfig), "--namespace", ns, "--metrics-port", str(free_port()),
                                     "--health-port", str(health)],
                                    stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                    start_new_session=True)
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"the operator exited: see {log_path}")
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                    if "acquired Lease" in log_path.read_text()[mark:] or time.monotonic() > deadline:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            return proc

        def stop_operator(proc):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

        op = start_operator()
        time.sleep(1.0)

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = max(8, args.workers * 2)
        api = client.ApiClient(cfg)
        batch = client.BatchV1Api(api)
        custom = client.CustomObjectsApi(api)

        job_seen: dict[str, float] = {}
        job_uids: dict[str, set[str]] = {}
        ready = threading.Event()
        stop = threading.Event()

        def watch_jobs():
            w = watch.Watch()
            rv = json.loads(batch.list_namespaced_job(ns, _preload_content=False).data)["metadata"]["resourceVersion"]
            ready.set()
            while not stop.is_set():
                for ev in w.stream(batch.list_namespaced_job, ns, resource_version=rv, timeout_seconds=5):
                    t = time.monotonic()
                    obj = ev["raw_object"]
                    rv = obj["metadata"]["resourceVersion"]
                    owner = obj["metadata"].get("labels", {}).get("edgetune.io/resource")
                    if ev["type"] == "ADDED" and owner and owner not in job_seen:
                        job_seen[owner] = t
                    if owner:
                        job_uids.setdefault(obj["metadata"]["name"], set()).add(obj["metadata"]["uid"])
                    if stop.is_set():
                        break

        th = threading.Thread(target=watch_jobs, daemon=True)
        th.start()
        ready.wait(30)

        applied: dict[str, float] = {}
        spec = {"dataset": {"generate": {"images": 8}}, "training": {"epochs": 1, "valInterval": 1},
                "placement": {"nodeSelector": {"edgetune.io/device": "bench-nowhere"}, "resources": {}}}
        names = [f"r{i:05d}" for i in range(args.n)]
        t_start = time.monotonic()

        def create(i_name):
            i, name = i_name
            if args.rate > 0:
                target = t_start + i / args.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            body = {"apiVersion": "edgetune.io/v1alpha1", "kind": "FinetuneJob",
                    "metadata": {"name": name, "namespace": ns}, "spec": spec}
            custom.create_namespaced_custom_object("edgetune.io", "v1alpha1", ns, "finetunejobs", body,
                                                   _preload_content=False)
            applied[name] = time.monotonic()

        print(f"creating {args.n} FinetuneJobs in {ns} ({args.workers} client threads"
              f"{f', {args.rate}/s' if args.rate else ''}) ...", flush=True)
        restart_at = args.restart_at if 0 < args.restart_at < args.n else args.n
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(create, enumerate(names[:restart_at])))
            if restart_at < args.n:
                print(f"restarting the operator after {restart_at} creates ...", flush=True)
                stop_operator(op)
                t_restart = time.monotonic()
                op = start_operator()
                list(pool.map(create, enumerate(names[restart_at:], start=restart_at)))
        t_created = time.monotonic()
        deadline = time.monotonic() + max(60.0, args.n * 0.2)
        while len(job_seen) < args.n and time.monotonic() < deadline:
            time.sleep(0.2)
        t_done = time.monotonic()
        converged_s = None
        if restart_at < args.n:
            def unconverged():
                items = json.loads(custom.list_namespaced_custom_object(
                    "edgetune.io", "v1alpha1", ns, "finetunejobs", _preload_content=False).data)["items"]
                left = 0
                for it in items:
                    st = it.get("status") or {}
                    sched = next((c for c in st.get("conditions") or [] if c["type"] == "Scheduled"), {})
                    steps = st.get("steps") or []
                    left += not (steps and steps[0].get("job") == f"{it['metadata']['name']}-finetune"
                                 and sched.get("status") == "False")
                return left + (args.n - len(items))
            deadline = time.monotonic() + max(120.0, args.n * 0.3)
            while (left := unconverged()) and time.monotonic() < deadline:
                time.sleep(1.0)
            converged_s = time.monotonic() - t_restart if not left else None
        stop.set()
        lat = [job_seen[n] - applied[n] for n in names if n in job_seen and n in applied]
        with open(f"/proc/{op.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        with open(f"/proc/{op.pid}/status") as fh:
            hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
            fh.seek(0)
            rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024
        print()
        print(f"resources created        {args.n} in {t_created - t_start:.2f}s "
              f"({args.n / max(1e-9, t_created - t_start):.0f}/s)")
        print(f"Jobs seen                {len(lat)}/{args.n}, last {t_done - t_start:.2f}s after the first create")
        if lat:
            print(f"apply -> Job created     p50 {pct(lat, 0.5) * 1000:.0f} ms, p90 {pct(lat, 0.9) * 1000:.0f} ms, "
                  f"p99 {pct(lat, 0.99) * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms, "
                  f"mean {statistics.mean(lat) * 1000:.0f} ms")
        print(f"operator RSS             peak {hwm:.1f} MiB, now {rss:.1f} MiB (target p99 < 1 s, RSS < 150 MiB)")
        print(f"operator CPU             {cpu:.1f} s ({cpu / max(1, len(lat)) * 1000:.0f} ms per resource); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        if restart_at < args.n:
            twice = sorted(n for n, uids in job_uids.items() if len(uids) > 1)
            print(f"operator restarted       after {restart_at} creates: "
                  + (f"every resource converged {converged_s:.1f}s after the restart" if converged_s is not None
                     else "NOT every resource converged in time")
                  + f"; Jobs created twice: {len(twice)}" + (f" {twice[:5]}" if twice else "")
                  + f" (one UID per name for {len(job_uids)} Jobs)")
        print(f"operator log             {log_path}")
        return 0
    finally:
        if op is not None and op.poll() is None:
            stop_operator(op)
        cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        if started_cluster and not args.keep:
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
