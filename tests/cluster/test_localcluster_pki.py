"""The local control plane's pure parts, without a cluster: certificates."""

from __future__ import annotations

import subprocess
from pathlib import Path

from localcluster import pki
from localcluster.config import ClusterConfig


def test_pki_chain_and_names(tmp_path: Path) -> None:
    cfg = ClusterConfig(root=tmp_path, bin_dir=tmp_path)
    pki.ensure_pki(cfg)
    d = cfg.pki_dir
    for stem in ("apiserver", "admin", "controller-manager"):
        proc = subprocess.run(
            ["openssl", "verify", "-CAfile", str(d / "ca.crt"), str(d / f"{stem}.crt")],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(d / "apiserver.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in (
        "IP Address:127.0.0.1",
        f"IP Address:{cfg.kubernetes_service_ip}",
        "DNS:kubernetes.default.svc",
    ):
        assert name in text
    subject = subprocess.run(
        ["openssl", "x509", "-in", str(d / "admin.crt"), "-noout", "-subject"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "O = system:masters" in subject
    before = (d / "ca.crt").read_bytes()
    admin = (d / "admin.crt").read_bytes()
    (d / "controller-manager.crt").unlink()
    pki.ensure_pki(cfg)  # only the missing leaf is issued, by the same CA
    assert (d / "ca.crt").read_bytes() == before
    assert (d / "admin.crt").read_bytes() == admin
    assert (d / "controller-manager.crt").is_file()
