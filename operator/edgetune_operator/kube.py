"""A small async Kubernetes REST client (aiohttp, plain dicts in and out) for the few calls the
operator makes itself. Credentials come from the kubernetes package's config loaders (the
same kubeconfig or in-cluster ServiceAccount that kopf uses)."""

from __future__ import annotations

import json
import logging
import ssl
import time
from typing import Any, Mapping
from urllib.parse import quote

import aiohttp

from edgetune_contract import names

log = logging.getLogger(__name__)
AUTH_TTL = 30.0


class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str, body: Any = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message, self.body = status, reason, message, body


def load_configuration(kubeconfig: str | None):
    from kubernetes import client, config

    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    return cfg


class Kube:
    def __init__(self, cfg, *, pool: int = 32, user_agent: str = "edgetune-operator"):
        self.cfg = cfg
        self.base = cfg.host.rstrip("/")
        self.pool = pool
        self.user_agent = user_agent
        self.session: aiohttp.ClientSession | None = None
        self._auth_cache: tuple[float, dict] | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.base.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.cfg.ssl_ca_cert) if self.cfg.ssl_ca_cert else \
            ssl.create_default_context()
        if not self.cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cfg.cert_file:
            ctx.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
        return ctx

    async def start(self) -> "Kube":
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl(), limit=self.pool),
                timeout=aiohttp.ClientTimeout(total=30, connect=10),
                headers={"User-Agent": self.user_agent})
        return self

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def authorization(self) -> str | None:
        """The Authorization header value ("Bearer ..."), from the configuration's auth settings
        (which refresh expiring tokens through the loader's hook); None for client certificates."""
        if self.cfg.refresh_api_key_hook is not None:
            self.cfg.refresh_api_key_hook(self.cfg)
        for setting in (self.cfg.auth_settings() or {}).values():
            if setting.get("in") == "header" and setting.get("key", "").lower() == "authorization" \
                    and setting.get("value"):
                return setting["value"]
        return None

    def _auth(self) -> dict:
        # refreshing through the loader costs milliseconds: do it at most every AUTH_TTL seconds
        now = time.monotonic()
        if self._auth_cache is None or now - self._auth_cache[0] > AUTH_TTL:
            value = self.authorization()
            self._auth_cache = (now, {"Authorization": value} if value else {})
        return self._auth_cache[1]

    def connection_info(self):
        """The same credentials for kopf (its own login via the kubernetes package does not know
        this client version's BearerToken key)."""
        import kopf

        scheme, _, token = (self.authorization() or "").partition(" ")
        return kopf.ConnectionInfo(
            server=self.base, ca_path=self.cfg.ssl_ca_cert, insecure=not self.cfg.verify_ssl,
            scheme=scheme or None, token=token or None,
            certificate_path=self.cfg.cert_file, private_key_path=self.cfg.key_file,
            default_namespace=None)

    async def request(self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None,
                      content_type: str = "application/json", text: bool = False) -> Any:
        await self.start()
        assert self.session is not None
        headers = {**self._auth(), "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        async with self.session.request(method, self.base + path, data=data, params=params,
                                        headers=headers) as resp:
            raw = await resp.text()
            if resp.status == 401:
                self._auth_cache = None  # a rotated token: re-read it on the next call
            if resp.status >= 400:
                try:
                    st = json.loads(raw)
                    raise ApiError(resp.status, st.get("reason") or resp.reason or "", st.get("message") or raw, st)
                except (json.JSONDecodeError, AttributeError):
                    raise ApiError(resp.status, resp.reason or "", raw[:500]) from None
            if text:
                return raw
            return json.loads(raw) if raw else None

    # --- the calls the operator makes ---

    @staticmethod
    def cr_path(kind: str, namespace: str, name: str | None = None) -> str:
        p = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{quote(namespace)}/{names.PLURALS[kind]}"
        return p + (f"/{quote(name)}" if name else "")

    async def get_resource(self, kind: str, namespace: str, name: str) -> dict:
        return await self.request("GET", self.cr_path(kind, namespace, name))

    async def patch_status(self, kind: str, namespace: str, name: str, status_patch: dict,
                           resource_version: str | None = None) -> dict:
        body: dict[str, Any] = {"status": status_patch}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        return await self.request("PATCH", self.cr_path(kind, namespace, name) + "/status", body=body,
                                  content_type="application/merge-patch+json")

    async def create_job(self, job: dict) -> dict:
        ns = job["metadata"]["namespace"]
        return await self.request("POST", f"/apis/batch/v1/namespaces/{quote(ns)}/jobs", body=job,
                                  params={"fieldManager": "edgetune-operator"})

    async def create_service(self, service: dict) -> dict:
        ns = service["metadata"]["namespace"]
        return await self.request("POST", f"/api/v1/namespaces/{quote(ns)}/services", body=service,
                                  params={"fieldManager": "edgetune-operator"})

    async def delete_job(self, namespace: str, name: str) -> None:
        await self.request("DELETE", f"/apis/batch/v1/namespaces/{quote(namespace)}/jobs/{quote(name)}",
                           body={"propagationPolicy": "Background"})

    async def create_event(self, namespace: str, event: dict) -> dict:
        return await self.request("POST", f"/api/v1/namespaces/{quote(namespace)}/events", body=event)

    async def pod_log(self, namespace: str, name: str, container: str, tail_lines: int = 100) -> str:
        return await self.request("GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}/log",
                                  params={"container": container, "tailLines": str(tail_lines)}, text=True)

    def _lease_path(self, namespace: str, name: str | None = None) -> str:
        p = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases"
        return p + (f"/{quote(name)}" if name else "")

    async def get_lease(self, namespace: str, name: str) -> dict | None:
        try:
            return await self.request("GET", self._lease_path(namespace, name))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create_lease(self, namespace: str, lease: dict) -> dict:
        return await self.request("POST", self._lease_path(namespace), body=lease)

    async def replace_lease(self, namespace: str, name: str, lease: dict) -> dict:
        return await self.request("PUT", self._lease_path(namespace, name), body=lease)
