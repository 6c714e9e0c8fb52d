"""Certificates and kubeconfigs for the local control plane, made with openssl.

EC P-256 keys keep generation fast (a few milliseconds each). Everything is
written once under `.local-cluster/pki/` and reused by later `up` runs; a
missing file regenerates the whole set so the CA and leaves always agree.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from localcluster.config import ClusterConfig


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate's file stem, user name (CN) and group (O)."""

    stem: str
    user: str
    group: str | None


def client_identities(cfg: ClusterConfig) -> tuple[ClientIdentity, ...]:
    return (
        ClientIdentity("admin", "admin", "system:masters"),
        ClientIdentity("controller-manager", "system:kube-controller-manager", None),
    )


def _run(args: list[str]) -> None:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {proc.stderr.strip()[-500:]}")


def _ec_key(path: Path) -> None:
    _run(
        [
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            str(path),
        ]
    )
    path.chmod(0o600)


def _leaf(pki: Path, stem: str, subject: str, exts: list[str]) -> None:
    key, crt = pki / f"{stem}.key", pki / f"{stem}.crt"
    _ec_key(key)
    args = [
        "openssl",
        "req",
        "-new",
        "-x509",
        "-key",
        str(key),
        "-out",
        str(crt),
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-days",
        "3650",
        "-subj",
        subject,
    ]
    for ext in [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        *exts,
    ]:
        args += ["-addext", ext]
    _run(args)


def server_sans(cfg: ClusterConfig) -> list[str]:
    names = [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{cfg.cluster_domain}",
        "localhost",
    ]
    ips = ["127.0.0.1", cfg.kubernetes_service_ip]
    return [f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips]


def ensure_pki(cfg: ClusterConfig) -> None:
    """Create what is missing: the CA (then everything is re-issued), any
    missing leaf certificate (signed by the existing CA), the SA key pair."""
    pki = cfg.pki_dir
    pki.mkdir(parents=True, exist_ok=True)
    fresh_ca = not ((pki / "ca.crt").is_file() and (pki / "ca.key").is_file())
    if fresh_ca:
        _ec_key(pki / "ca.key")
        _run(
            [
                "openssl",
                "req",
                "-new",
                "-x509",
                "-key",
                str(pki / "ca.key"),
                "-out",
                str(pki / "ca.crt"),
                "-days",
                "3650",
                "-subj",
                "/CN=reactive-loop-local-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            ]
        )
    leaves: list[tuple[str, str, list[str]]] = [
        (
            "apiserver",
            "/CN=kube-apiserver",
            ["extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(server_sans(cfg))],
        ),
    ]
    for ident in client_identities(cfg):
        subject = (f"/O={ident.group}" if ident.group else "") + f"/CN={ident.user}"
        leaves.append((ident.stem, subject, ["extendedKeyUsage=clientAuth"]))
    for stem, subject, exts in leaves:
        if fresh_ca or not (pki / f"{stem}.crt").is_file() or not (pki / f"{stem}.key").is_file():
            _leaf(pki, stem, subject, exts)
    if fresh_ca or not (pki / "sa.key").is_file() or not (pki / "sa.pub").is_file():
        _ec_key(pki / "sa.key")
        _run(
            ["openssl", "pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")]
        )


def write_kubeconfig(cfg: ClusterConfig, path: Path, stem: str, server: str) -> None:
    """A kubeconfig using the client certificate `<stem>.crt` by absolute path."""
    pki = cfg.pki_dir.resolve()
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "reactive-loop-local",
                "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")},
            }
        ],
        "users": [
            {
                "name": stem,
                "user": {
                    "client-certificate": str(pki / f"{stem}.crt"),
                    "client-key": str(pki / f"{stem}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "reactive-loop-local",
                "context": {"cluster": "reactive-loop-local", "user": stem},
            }
        ],
        "current-context": "reactive-loop-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
