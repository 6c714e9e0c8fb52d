"""Host networking of the local cluster: a bridge, one netns + veth per pod.

Pods sit on the bridge `cfg.bridge` with addresses from `cfg.bridge_cidr`; the
host owns the gateway address, where the apiserver listens for pods. Traffic
between pods is bridged (layer 2), so no routing or NAT is needed. When
br_netfilter is loaded, bridged frames still traverse the iptables FORWARD
chain, whose policy may be DROP: explicit ACCEPT rules for the bridge (tagged
with a comment so `down` finds and removes exactly those) keep it working.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from localcluster.config import ClusterConfig


def rule_comment(cfg: ClusterConfig) -> str:
    """The comment tagging this instance's iptables rules."""
    base = "reactive-loop-localcluster"
    return base if cfg.bridge == "rlbr0" else f"{base}-{cfg.bridge}"


class NetworkError(RuntimeError):
    """An `ip` or `iptables` command failed."""


def run(args: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetworkError(f"{' '.join(args)}: {proc.stderr.strip()}")
    return proc


def have_iptables() -> bool:
    return shutil.which("iptables") is not None


def host_rules(cfg: ClusterConfig) -> list[list[str]]:
    """(chain, match...) of the ACCEPT rules the bridge needs."""
    tag = ["-m", "comment", "--comment", rule_comment(cfg), "-j", "ACCEPT"]
    return [
        ["FORWARD", "-i", cfg.bridge, "-o", cfg.bridge, *tag],
        ["INPUT", "-i", cfg.bridge, *tag],
    ]


def bridge_mac(cfg: ClusterConfig) -> str:
    """A stable, locally administered MAC derived from the gateway address."""
    octets = [int(x) for x in cfg.gateway_ip.split(".")]
    return "02:72:6c:" + ":".join(f"{o:02x}" for o in octets[1:])


#: The kernel's neighbour (ARP/NDP) table is shared by all network namespaces
#: and defaults to 1024 entries: fifty pods talking to each other overflow it
#: ("neighbor table overflow"), and new connections then fail with "No route
#: to host" or time out. `up` raises these limits (never lowers them; they stay
#: raised after `down`, since another instance may still run).
NEIGH_LIMITS = {"gc_thresh1": 8192, "gc_thresh2": 32768, "gc_thresh3": 65536}


def raise_neighbour_limits() -> None:
    for family in ("ipv4", "ipv6"):
        for key, want in NEIGH_LIMITS.items():
            path = Path(f"/proc/sys/net/{family}/neigh/default/{key}")
            if path.exists() and int(path.read_text()) < want:
                path.write_text(str(want))


def setup_host(cfg: ClusterConfig) -> None:
    """Create the bridge and the iptables rules; idempotent."""
    raise_neighbour_limits()
    if run(["ip", "link", "show", cfg.bridge], check=False).returncode != 0:
        run(["ip", "link", "add", cfg.bridge, "type", "bridge"])
    # A bridge without an explicit address takes the lowest MAC of its ports,
    # so it would change as pods' veths come and go, and every pod's ARP entry
    # for the gateway (apiserver, probes) would go stale: fix it once.
    run(["ip", "link", "set", cfg.bridge, "address", bridge_mac(cfg)])
    addr = f"{cfg.gateway_ip}/{cfg.pod_prefix_len}"
    shown = run(["ip", "-o", "addr", "show", "dev", cfg.bridge]).stdout
    if f" {addr} " not in shown:
        run(["ip", "addr", "add", addr, "dev", cfg.bridge])
    run(["ip", "link", "set", cfg.bridge, "up"])
    if not have_iptables():
        raise NetworkError("iptables is not installed (make system-deps)")
    for rule in host_rules(cfg):
        if run(["iptables", "-C", *rule], check=False).returncode != 0:
            run(["iptables", "-I", rule[0], "1", *rule[1:]])


def teardown_host(cfg: ClusterConfig) -> list[str]:
    """Remove every pod netns, veth, the bridge and our iptables rules.

    Returns what was removed, for the `down` report. Works from names alone,
    so it also cleans up after a run whose state files are gone.
    """
    removed: list[str] = []
    for ns in list_pod_netns(cfg.prefix):
        run(["ip", "netns", "del", ns], check=False)
        removed.append(f"netns {ns}")
    links = run(["ip", "-o", "link", "show"], check=False).stdout.splitlines()
    for line in links:
        name = line.split(":", 2)[1].strip().split("@", 1)[0] if ":" in line else ""
        if name.startswith(f"{cfg.prefix}h") or name == cfg.bridge:
            run(["ip", "link", "del", name], check=False)
            removed.append(f"link {name}")
    if have_iptables():
        for line in run(["iptables", "-S"], check=False).stdout.splitlines():
            tokens = line.split()
            tagged = "--comment" in tokens and tokens.index("--comment") + 1 < len(tokens)
            if (
                tagged
                and tokens[tokens.index("--comment") + 1] == rule_comment(cfg)
                and line.startswith("-A ")
            ):
                # bounded: one delete per listed rule
                spec = line.split()[1:]
                run(["iptables", "-D", *spec], check=False)
                removed.append(f"iptables {line}")
    return removed


def all_netns() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_pod_netns(prefix: str) -> list[str]:
    return [n for n in all_netns() if n.startswith(f"{prefix}-")]


@dataclass(frozen=True)
class PodNet:
    """The network identity of one pod sandbox."""

    netns: str
    host_veth: str
    ip: str

    @classmethod
    def for_uid(cls, uid: str, ip: str, prefix: str) -> PodNet:
        digest = hashlib.sha256(uid.encode()).hexdigest()
        # veth names are limited to 15 characters
        return cls(netns=f"{prefix}-{uid}", host_veth=f"{prefix}h{digest[:10]}", ip=ip)


def pod_setup_commands(cfg: ClusterConfig, net: PodNet) -> list[list[str]]:
    ns = net.netns
    return [
        ["ip", "netns", "add", ns],
        ["ip", "link", "add", net.host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns],
        ["ip", "link", "set", net.host_veth, "master", cfg.bridge, "up"],
        ["ip", "-n", ns, "addr", "add", f"{net.ip}/{cfg.pod_prefix_len}", "dev", "eth0"],
        ["ip", "-n", ns, "link", "set", "eth0", "up"],
        ["ip", "-n", ns, "link", "set", "lo", "up"],
        ["ip", "-n", ns, "route", "add", "default", "via", cfg.gateway_ip],
    ]


def pod_teardown_commands(net: PodNet) -> list[list[str]]:
    return [["ip", "netns", "del", net.netns], ["ip", "link", "del", net.host_veth]]


def netns_exists(name: str) -> bool:
    return name in all_netns()
