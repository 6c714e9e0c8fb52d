"""Node configuration: one validated `NodeConfig`, from the environment and flags.

Every setting has an environment variable (names in `contract`) and a flag;
a flag wins over the environment. docs/node.md has the table.
"""

from __future__ import annotations

import argparse
import ipaddress
import pathlib
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec.structs import force_setattr

from ..core import contract
from ..core.auth import is_signable_name
from ..core.behaviors.base import DRIFT_FACTOR, default_lease
from ..core.topology import TopologyName

StoreName = Literal["pod", "file", "memory"]
Name = Annotated[str, msgspec.Meta(max_length=253)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*", re.ASCII)


def normalize_host(host: str) -> str:
    """A host as compared with the allowed hosts: lower case, no trailing dot,
    an IPv6 address without its brackets."""
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def allowed_host(entry: str) -> str:
    """One entry of the allowed webhook hosts, normalized; ValueError if it is not
    a host name or an IP address (a URL, a port, a wildcard)."""
    host = normalize_host(entry)
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or _HOST_NAME.fullmatch(host) is None:
        raise ValueError(
            f"{contract.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS}: {entry!r} is not a host name or an"
            " IP address (give names like fence.ns.svc.cluster.local: no scheme, port,"
            " path or wildcard)"
        )
    return host


def webhook_host(url: str) -> str:
    """The normalized host of a webhook URL; ValueError unless it is an http(s) URL
    with a host."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise ValueError(f"token_webhook {url!r} is not a URL: {e}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"token_webhook must be an http(s) URL with a host, got {url!r}")
    host = normalize_host(parts.hostname)
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


class NodeConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything a node needs to know; immutable once built.

    Built and checked by `make_config` (types, bounds, the cross-field rules of
    `__post_init__`); the constructor itself checks only the cross-field rules.
    """

    loop: Annotated[str, msgspec.Meta(min_length=1, max_length=253)] = "local"
    node: Name = ""
    """This node's name (the pod name in Kubernetes); default `<loop>-<ordinal>`."""
    ordinal: Annotated[int, msgspec.Meta(ge=0)] = 0
    replicas: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Initial loop size; 0 means: the length of `peers`, else 1."""
    namespace: str | None = None
    pod_name: str | None = None
    behavior: str = "converge"
    topology: TopologyName = "ring"
    peer_template: str | None = None
    peers: tuple[str, ...] = ()
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = contract.DEFAULT_PORT
    bind: str = "0.0.0.0"
    store: StoreName = "memory"
    state_dir: pathlib.Path | None = None
    decision_file: pathlib.Path | None = None
    """The decision file (docs/node.md); default `<state_dir>/decision/<node>.json`
    with the file store, else none."""
    interval: Seconds = 1.0
    timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 0.5
    max_backoff: Seconds = 10.0
    ring_skip: Annotated[int, msgspec.Meta(ge=0, le=100)] = 2
    token_hold: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    token_loss_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    token_lease: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """Seconds a holder acts after a majority vouched for it; 0: 3 intervals (`lease`)."""
    token_webhook: str | None = None
    """http(s) URL told every token acquire and release (docs/node.md, "The token webhook")."""
    token_webhook_allowed_hosts: tuple[str, ...] = ()
    """Host names `token_webhook` may be on (lower case); empty: any."""
    hmac_key_file: pathlib.Path | None = None
    """File of the key this node signs with; round trips are signed when set."""
    hmac_accepted_file: pathlib.Path | None = None
    """File of more keys this node accepts (rotation); a missing file holds none."""
    faults_file: pathlib.Path | None = None
    """Local mode's fault switch (`run --faults`, docs/chaos.md): blocked links; never in a pod."""

    def __post_init__(self) -> None:
        if not self.node:
            force_setattr(self, "node", f"{self.loop}-{self.ordinal}")
        if self.replicas == 0:
            force_setattr(self, "replicas", len(self.peers) or 1)
        if self.peer_template is not None and "{ordinal}" not in self.peer_template:
            raise ValueError("peer_template must contain '{ordinal}'")
        if self.peers and self.peer_template:
            raise ValueError("give either peers or peer_template, not both")
        if self.token_loss_timeout <= self.token_hold:
            # A holder keeps the token this long without news: a shorter loss
            # timeout would regenerate tokens while the holder is alive.
            raise ValueError("token_loss_timeout must be greater than token_hold")
        if self.behavior == "token" and self.token_loss_timeout <= self.lease * DRIFT_FACTOR:
            # Another node may vouch for a new token once it has vouched for none
            # for the lease stretched by the drift allowance: the loss timeout
            # must be longer, or a regeneration could race a live lease.
            raise ValueError(
                f"token_loss_timeout must be greater than {DRIFT_FACTOR} x the token lease"
                f" ({self.lease:g} s)"
            )
        if self.store == "file" and self.state_dir is None:
            raise ValueError("the file store needs state_dir")
        if self.decision_file is None and self.store == "file" and self.state_dir is not None:
            force_setattr(self, "decision_file", self.state_dir / "decision" / f"{self.node}.json")
        if self.store == "pod" and (not self.namespace or not (self.pod_name or self.node)):
            raise ValueError("the pod store needs namespace and pod name")
        if self.faults_file is not None and self.store == "pod":
            raise ValueError("faults_file is a local-mode test switch: not with the pod store")
        if self.peers and self.replicas > len(self.peers):
            raise ValueError(f"replicas {self.replicas} but only {len(self.peers)} peers")
        if self.peers and self.ordinal >= len(self.peers):
            raise ValueError("ordinal must index into peers")
        if self.token_webhook_allowed_hosts:
            force_setattr(
                self,
                "token_webhook_allowed_hosts",
                tuple(allowed_host(h) for h in self.token_webhook_allowed_hosts),
            )
        if self.token_webhook is not None:
            host = webhook_host(self.token_webhook)
            allowed = self.token_webhook_allowed_hosts
            if allowed and host not in allowed:
                raise ValueError(
                    f"token_webhook {self.token_webhook!r}: host {host!r} is not one of the"
                    f" allowed hosts ({contract.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS}):"
                    f" {', '.join(allowed)}"
                )
        if self.hmac_accepted_file is not None and self.hmac_key_file is None:
            raise ValueError("hmac_accepted_file needs hmac_key_file")
        if self.hmac_key_file is not None and not (
            is_signable_name(self.node) and is_signable_name(self.node_name(0))
        ):
            raise ValueError(
                "with an HMAC key, node and loop names are letters, digits, '.', '_', '-'"
            )

    @property
    def lease(self) -> float:
        """The token lease in seconds: `token_lease`, else `default_lease`."""
        return self.token_lease or default_lease(self.interval, self.replicas)

    @property
    def pod(self) -> str:
        return self.pod_name or self.node

    def node_name(self, ordinal: int) -> str:
        """The name of the node with `ordinal` in this loop."""
        return contract.node_name(self.loop, ordinal)

    def peer_address(self, ordinal: int) -> str | None:
        """host:port of the node with `ordinal`, or None if unknown."""
        if self.peers:
            return self.peers[ordinal] if ordinal < len(self.peers) else None
        if self.peer_template:
            return self.peer_template.replace("{ordinal}", str(ordinal))
        return None

    @property
    def signed(self) -> bool:
        """Whether round trips are signed (a key file is configured)."""
        return self.hmac_key_file is not None


# (field, env var, flag, help) for every setting; also the docs/node.md table.
SETTINGS: tuple[tuple[str, str, str, str], ...] = (
    ("loop", contract.ENV_LOOP, "--loop", "loop name; round trips from another loop get 400"),
    ("node", contract.ENV_NODE, "--node", "this node's name (default <loop>-<ordinal>)"),
    ("ordinal", contract.ENV_ORDINAL, "--ordinal", "this node's index in the loop"),
    ("replicas", contract.ENV_REPLICAS, "--replicas", "initial loop size (pod annotation wins)"),
    ("namespace", contract.ENV_NAMESPACE, "--namespace", "namespace of the pod (pod store)"),
    ("pod_name", contract.ENV_POD_NAME, "--pod-name", "pod to keep state on (default node)"),
    ("behavior", contract.ENV_BEHAVIOR, "--behavior", "converge | token | python:pkg.mod:Class"),
    ("topology", contract.ENV_TOPOLOGY, "--topology", "ring | mesh | star"),
    ("peer_template", contract.ENV_PEER_TEMPLATE, "--peer-template", "host:port with {ordinal}"),
    ("peers", contract.ENV_PEERS, "--peers", "comma list of host:port, index = ordinal"),
    ("port", contract.ENV_PORT, "--port", "HTTP port (0: any free port)"),
    ("bind", contract.ENV_BIND, "--bind", "address to listen on"),
    ("store", contract.ENV_STORE, "--store", "pod | file | memory"),
    ("state_dir", contract.ENV_STATE_DIR, "--state-dir", "directory of the file store"),
    (
        "decision_file",
        contract.ENV_DECISION_FILE,
        "--decision-file",
        "file the node keeps its current decision in, for applications beside it",
    ),
    ("interval", contract.ENV_INTERVAL, "--interval", "seconds between round trips"),
    ("timeout", contract.ENV_TIMEOUT, "--timeout", "round-trip timeout, seconds"),
    ("max_backoff", contract.ENV_MAX_BACKOFF, "--max-backoff", "cap of the backoff, seconds"),
    ("ring_skip", contract.ENV_RING_SKIP, "--ring-skip", "unreachable successors a ring skips"),
    ("token_hold", contract.ENV_TOKEN_HOLD, "--token-hold", "seconds a holder keeps the token"),
    (
        "token_loss_timeout",
        contract.ENV_TOKEN_LOSS_TIMEOUT,
        "--token-loss-timeout",
        "seconds without news before the token is regenerated",
    ),
    (
        "token_lease",
        contract.ENV_TOKEN_LEASE,
        "--token-lease",
        "seconds a holder acts after a majority vouched for it (0: 3 intervals)",
    ),
    ("token_webhook", contract.ENV_TOKEN_WEBHOOK, "--token-webhook", "URL told acquire/release"),
    (
        "token_webhook_allowed_hosts",
        contract.ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS,
        "--token-webhook-allowed-hosts",
        "comma list of hosts the webhook may be on (default any)",
    ),
    ("hmac_key_file", contract.ENV_HMAC_KEY_FILE, "--hmac-key-file", "file of the HMAC key"),
    (
        "hmac_accepted_file",
        contract.ENV_HMAC_ACCEPTED_FILE,
        "--hmac-accepted-file",
        "file of more accepted HMAC keys (rotation)",
    ),
    (
        "faults_file",
        contract.ENV_FAULTS_FILE,
        "--faults-file",
        "local mode's fault switch: JSON of blocked links (tests only)",
    ),
)


def build_parser(prog: str = "reactive-loop node") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Run one reactive node (settings also come from RL_* variables)."
    )
    for field, env, flag, help_text in SETTINGS:
        parser.add_argument(flag, dest=field, default=None, help=f"{help_text} [{env}]")
    return parser


def _raw_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for field, var, _flag, _help in SETTINGS:
        value = env.get(var)
        if value is not None and value != "":
            raw[field] = value
    return raw


def load_config(argv: Sequence[str] | None, env: Mapping[str, str]) -> NodeConfig:
    """Build the configuration from `env` overridden by flags in `argv`; raises ConfigError."""
    if env.get(contract.ENV_HMAC_KEY_LEGACY):
        raise ConfigError(
            f"{contract.ENV_HMAC_KEY_LEGACY} is not read: a key in the environment leaks;"
            f" give a file holding it in {contract.ENV_HMAC_KEY_FILE} (or --hmac-key-file)"
        )
    raw = _raw_from_env(env)
    if argv is not None:
        args = build_parser().parse_args(list(argv))
        for field, _var, _flag, _help in SETTINGS:
            value = getattr(args, field)
            if value is not None:
                raw[field] = value
    for listed in ("peers", "token_webhook_allowed_hosts"):
        if isinstance(raw.get(listed), str):
            raw[listed] = tuple(p.strip() for p in raw[listed].split(",") if p.strip())
    if "state_dir" in raw and "store" not in raw:
        raw["store"] = "file"
    return make_config(raw)


def _path(kind: type, value: Any) -> Any:
    if kind is pathlib.Path and isinstance(value, str | pathlib.PurePath):
        return pathlib.Path(value)
    raise TypeError(f"expected a path, got {type(value).__name__}")


def make_config(raw: Mapping[str, Any]) -> NodeConfig:
    """A checked `NodeConfig` from settings (strings from the environment are
    converted: "2" to 2, "0.5" to 0.5); raises ConfigError naming the setting."""
    try:
        return msgspec.convert(dict(raw), NodeConfig, strict=False, dec_hook=_path)
    except msgspec.ValidationError as e:
        raise ConfigError(str(e)) from e
