"""Entry point: ``python -m edgetune_operator [flags]``.

Starts the metrics endpoint, waits for the leader Lease (serving /healthz meanwhile), then
runs kopf with the handlers in :mod:`edgetune_operator.controller.handlers` (the executor
reaches them as kopf's ``memo.executor``) until SIGTERM/SIGINT, or until the Lease is lost
(exit code 3, so that the Deployment restarts it as a candidate).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from aiohttp import web

from .kube import Kube, load_configuration
from .leader import LeaderElector
from .settings import Settings, SettingsError, describe, from_env

log = logging.getLogger("edgetune_operator")
EXIT_LOST_LEASE = 3


def parse_args(argv: list[str] | None) -> Settings:
    ap = argparse.ArgumentParser(
        prog="python -m edgetune_operator",
        description="The edgetune operator (FinetuneJob, ModelConversion, EdgeBenchmark).",
        epilog="Environment variables (flags override them):\n" + describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else in-cluster)")
    ap.add_argument("-n", "--namespace", action="append", dest="namespaces",
                    help="serve this namespace (repeatable); default $EDGETUNE_NAMESPACES, else cluster-wide")
    ap.add_argument("-A", "--all-namespaces", action="store_true", help="serve all namespaces")
    ap.add_argument("--metrics-port", type=int)
    ap.add_argument("--health-port", type=int)
    ap.add_argument("--no-leader-election", action="store_true")
    ap.add_argument("--identity", help="this replica's identity in the Lease")
    ap.add_argument("--log-level")
    a = ap.parse_args(argv)
    overrides = {"kubeconfig": a.kubeconfig, "namespaces": a.namespaces, "metrics_port": a.metrics_port,
                 "health_port": a.health_port, "identity": a.identity, "log_level": a.log_level}
    if a.no_leader_election:
        overrides["leader_election"] = False
    try:
        s = from_env(**overrides)
    except SettingsError as exc:
        ap.error(str(exc))
    if a.all_namespaces:
        s.namespaces = []
    return s


async def _standby_health(settings: Settings) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "standby"})
    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.bind_address, settings.health_port).start()
    return runner


async def run(settings: Settings) -> int:
    import kopf

    from .controller import handlers  # noqa: F401 - registers the kopf handlers
    from .controller.executor import Executor

    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads the same file
    kube = await Kube(load_configuration(settings.kubeconfig)).start()
    executor = Executor(settings, kube)
    server = executor.metrics.serve(settings.metrics_port, settings.bind_address)
    log.info("metrics on http://%s:%d/metrics", settings.bind_address, settings.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    lost = False
    elector = None
    keeper = None
    try:
        if settings.leader_election:
            elector = LeaderElector(kube, settings.lease_namespace or "default", settings.lease_name,
                                    settings.identity, settings.lease_duration, settings.lease_renew_period)
            standby = await _standby_health(settings)
            try:
                if not await elector.acquire(stop):
                    return 0
            finally:
                await standby.cleanup()

            def on_lost() -> None:
                nonlocal lost
                lost = True
                stop.set()
            keeper = asyncio.create_task(elector.keep(stop, on_lost))
        await kopf.operator(
            clusterwide=settings.clusterwide,
            namespaces=settings.namespaces or None,
            liveness_endpoint=f"http://{settings.bind_address}:{settings.health_port}/healthz",
            stop_flag=stop,
            # our identity, not kopf's guess: that calls getpass.getuser(), which fails for a
            # UID without a passwd entry (the chart's runAsUser on another image)
            identity=settings.identity,
            memo=kopf.Memo(executor=executor),
        )
    finally:
        stop.set()
        if keeper is not None:
            await keeper
        if elector is not None and not lost:
            await elector.release()
        await executor.stop()
        await kube.close()
        try:
            server[0].shutdown()
        except Exception:  # noqa: BLE001
            pass
    return EXIT_LOST_LEASE if lost else 0


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(argv)
    logging.basicConfig(level=getattr(logging, settings.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf.activities.probe").setLevel(logging.WARNING)
    if settings.log_level.upper() != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
