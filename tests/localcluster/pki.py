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
        ClientIdentity("scheduler", "system:kube-scheduler", None),
        ClientIdentity("kubelet", f"system:node:{cfg.node_name}", "system:nodes"),
        ClientIdentity("apiserver-kubelet-client", "kube-apiserver", None),
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
    ips = ["127.0.0.1", cfg.gateway_ip, cfg.kubernetes_service_ip]
    return [f"DNS:{n}" for n in names] + [f"IP:{i}" for i in ips]


def ensure_pki(cfg: ClusterConfig) -> None:
    """Create the CA, serving and client certificates and the SA key if missing."""
    pki = cfg.pki_dir
    wanted = [
        "ca.crt",
        "ca.key",
        "apiserver.crt",
        "apiserver.key",
        "sa.key",
        "sa.pub",
        "kubelet-serving.crt",
        "kubelet-serving.key",
    ]
    wanted += [f"{i.stem}.{ext}" for i in client_identities(cfg) for ext in ("crt", "key")]
    if all((pki / f).is_file() for f in wanted):
        return
    pki.mkdir(parents=True, exist_ok=True)
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
    _leaf(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        ["extendedKeyUsage=serverAuth", "subjectAltName=" + ",".join(server_sans(cfg))],
    )
    _leaf(
        pki,
        "kubelet-serving",
        f"/CN={cfg.node_name}",
        ["extendedKeyUsage=serverAuth", f"subjectAltName=IP:{cfg.gateway_ip},DNS:{cfg.node_name}"],
    )
    for ident in client_identities(cfg):
        subject = (f"/O={ident.group}" if ident.group else "") + f"/CN={ident.user}"
        _leaf(pki, ident.stem, subject, ["extendedKeyUsage=clientAuth"])
    _ec_key(pki / "sa.key")
    _run(["openssl", "pkey", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub")])


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
