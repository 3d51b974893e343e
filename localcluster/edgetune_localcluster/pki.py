"""Certificates and keys of a local cluster, made with the ``openssl`` command line tool.

All keys are ECDSA P-256 (fast to generate, accepted by every component). One CA signs
everything: the API server's serving certificate, the client certificates of the admin,
the controller-manager and the scheduler (the identities RBAC's bootstrap policy knows:
``system:kube-controller-manager``, ``system:kube-scheduler``), the API server's client
certificate for the kubelet endpoint, kube-proxy's and CoreDNS' client certificates, and per
node a kubelet client certificate (``system:node:<name>``) and serving certificate for the
node IP (the API server verifies it with ``--kubelet-certificate-authority``). The service-account token
signing key pair is separate (``sa.key``/``sa.pub``).
"""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

DAYS = "3650"

# name -> (subject, subjectAltNames or None, extendedKeyUsage)
CERTS: dict[str, tuple[str, str | None, str]] = {
    "apiserver": (
        "/CN=kube-apiserver",
        "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
        "DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:10.0.0.1",
        "serverAuth",
    ),
    "admin": ("/O=system:masters/CN=edgetune-admin", None, "clientAuth"),
    "controller-manager": ("/CN=system:kube-controller-manager", None, "clientAuth"),
    "scheduler": ("/CN=system:kube-scheduler", None, "clientAuth"),
    "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", None, "clientAuth"),
    # kube-proxy: the bootstrap ClusterRoleBinding system:node-proxier names this user
    "kube-proxy": ("/CN=system:kube-proxy", None, "clientAuth"),
    # CoreDNS' kubernetes plugin (a ClusterRole of its own, see cluster.py)
    "coredns": ("/CN=edgetune:coredns", None, "clientAuth"),
}


def node_certs(node: str, node_ip: str) -> dict[str, tuple[str, str | None, str]]:
    """A kubelet's client certificate (the Node authorizer's and NodeRestriction's identity
    system:node:<name> in group system:nodes) and its serving certificate for the node IP."""
    return {
        f"kubelet-{node}-client": (f"/O=system:nodes/CN=system:node:{node}", None, "clientAuth"),
        f"kubelet-{node}-serving": (f"/O=system:nodes/CN=system:node:{node}", f"DNS:{node},IP:{node_ip}", "serverAuth"),
    }


def _openssl(*args: str, cwd: Path, input: bytes | None = None) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, input=input, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {p.stderr.decode(errors='replace')}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path), cwd=path.parent)
    os.chmod(path, 0o600)


def ensure_pki(pki: Path, extra: dict[str, tuple[str, str | None, str]] | None = None,
               apiserver_ips: list[str] = ()) -> None:
    """Create every missing key and certificate under ``pki`` (``CERTS`` plus ``extra``);
    existing ones are kept unless their subjectAltNames changed (recorded in ``<name>.san``).
    ``apiserver_ips`` are added to the API server's subjectAltNames."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        _key(pki / "ca.key")
        _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=edgetune-localcluster-ca", "-days", DAYS,
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-out", "ca.crt", cwd=pki)
    if not (pki / "sa.key").exists():
        _key(pki / "sa.key")
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    certs = dict(CERTS, **(extra or {}))
    for name, (subject, sans, eku) in certs.items():
        if name == "apiserver" and apiserver_ips:
            sans = sans + "," + ",".join(f"IP:{ip}" for ip in apiserver_ips)
        record = f"{subject}|{sans}|{eku}"
        if (pki / f"{name}.crt").exists() and (pki / f"{name}.san").exists() \
                and (pki / f"{name}.san").read_text() == record:
            continue
        _key(pki / f"{name}.key")
        ext = ["basicConstraints=CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment",
               f"extendedKeyUsage={eku}"]
        if sans:
            ext.append(f"subjectAltName={sans}")
        (pki / f"{name}.ext").write_text("\n".join(ext) + "\n")
        _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-set_serial", "0x" + secrets.token_hex(16), "-days", DAYS, "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=pki)
        (pki / f"{name}.csr").unlink()
        (pki / f"{name}.ext").unlink()
        (pki / f"{name}.san").write_text(record)
