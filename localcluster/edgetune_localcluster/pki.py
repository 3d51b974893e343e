"""Certificates and keys of a local cluster, made with the ``openssl`` command line tool.

All keys are ECDSA P-256 (fast to generate, accepted by every component). One CA signs
everything: the API server's serving certificate, the client certificates of the admin,
the controller-manager and the scheduler (the identities RBAC's bootstrap policy knows:
``system:kube-controller-manager``, ``system:kube-scheduler``), the API server's client
certificate for the kubelet endpoint, and the node agent's serving certificate (the API
server verifies it with ``--kubelet-certificate-authority``). The service-account token
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
    "kubelet": ("/CN=edgetune-node-agent", "DNS:localhost,IP:127.0.0.1", "serverAuth"),
}


def _openssl(*args: str, cwd: Path, input: bytes | None = None) -> None:
    p = subprocess.run(["openssl", *args], cwd=cwd, input=input, capture_output=True)
    if p.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {p.stderr.decode(errors='replace')}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path), cwd=path.parent)
    os.chmod(path, 0o600)


def ensure_pki(pki: Path, extra_kubelet_names: list[str] = ()) -> None:
    """Create every missing key and certificate under ``pki``; existing ones are kept."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        _key(pki / "ca.key")
        _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=edgetune-localcluster-ca", "-days", DAYS,
                 "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                 "-out", "ca.crt", cwd=pki)
    if not (pki / "sa.key").exists():
        _key(pki / "sa.key")
        _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    for name, (subject, sans, eku) in CERTS.items():
        if (pki / f"{name}.crt").exists():
            continue
        if name == "kubelet" and extra_kubelet_names:
            sans = sans + "," + ",".join(f"DNS:{n}" for n in extra_kubelet_names)
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
