"""Node configuration: one validated `NodeConfig`, from the environment and flags.

Every setting has an environment variable (names in `contract`) and a flag;
a flag wins over the environment. docs/node.md has the table.
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec.structs import force_setattr

from . import contract
from .topology import TopologyName

StoreName = Literal["pod", "file", "memory"]
Name = Annotated[str, msgspec.Meta(max_length=253)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=3600)]


class ConfigError(ValueError):
    """The configuration is invalid; the message says which setting and why."""


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
    interval: Seconds = 1.0
    timeout: Annotated[float, msgspec.Meta(gt=0, le=600)] = 0.5
    max_backoff: Seconds = 10.0
    ring_skip: Annotated[int, msgspec.Meta(ge=0, le=100)] = 2
    token_hold: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    token_loss_timeout: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    token_webhook: str | None = None
    hmac_key: str | None = None
    """The shared HMAC key; never shown by `repr`."""

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
        if self.store == "file" and self.state_dir is None:
            raise ValueError("the file store needs state_dir")
        if self.store == "pod" and (not self.namespace or not (self.pod_name or self.node)):
            raise ValueError("the pod store needs namespace and pod name")
        if self.peers and self.replicas > len(self.peers):
            raise ValueError(f"replicas {self.replicas} but only {len(self.peers)} peers")
        if self.peers and self.ordinal >= len(self.peers):
            raise ValueError("ordinal must index into peers")

    def __repr__(self) -> str:
        fields = (
            f"{name}={'**********' if name == 'hmac_key' and self.hmac_key else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"NodeConfig({', '.join(fields)})"

    @property
    def pod(self) -> str:
        return self.pod_name or self.node

    def node_name(self, ordinal: int) -> str:
        """The name of the node with `ordinal` in this loop."""
        return f"{self.loop}-{ordinal}"

    def peer_address(self, ordinal: int) -> str | None:
        """host:port of the node with `ordinal`, or None if unknown."""
        if self.peers:
            return self.peers[ordinal] if ordinal < len(self.peers) else None
        if self.peer_template:
            return self.peer_template.replace("{ordinal}", str(ordinal))
        return None

    def hmac_bytes(self) -> bytes | None:
        return None if self.hmac_key is None else self.hmac_key.encode()


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
    ("token_webhook", contract.ENV_TOKEN_WEBHOOK, "--token-webhook", "URL told acquire/release"),
    ("hmac_key", contract.ENV_HMAC_KEY, "--hmac-key-file", "HMAC key (env) or a file holding it"),
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
    raw = _raw_from_env(env)
    if argv is not None:
        args = build_parser().parse_args(list(argv))
        for field, _var, _flag, _help in SETTINGS:
            value = getattr(args, field)
            if value is not None:
                raw[field] = value
        if args.hmac_key is not None:
            try:
                raw["hmac_key"] = pathlib.Path(args.hmac_key).read_text().strip()
            except OSError as e:
                raise ConfigError(f"--hmac-key-file: {e}") from e
    if isinstance(raw.get("peers"), str):
        raw["peers"] = tuple(p.strip() for p in raw["peers"].split(",") if p.strip())
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
