"""The ReactiveLoop spec as a validated model.

The CRD's OpenAPI schema and CEL rules reject most mistakes at `kubectl apply`.
This module repeats the cross-field checks (a CRD installed without them, or
an older one, must not crash the operator) and adds what a schema cannot
express: the serialised size of the target, a webhook URL that parses, a
resolvable node image. Anything wrong becomes one `SpecError` with a message
meant for a human, which the handlers turn into a condition and an event.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from reactive_node.core import contract as c
from reactive_node.core.behaviors.base import DRIFT_FACTOR, default_lease
from reactive_node.core.codec import BadBody, check_bounds

#: Largest target the operator injects, serialised as compact JSON. Pod
#: annotations share a 256 KiB budget; a target is copied into every node's
#: state annotation and into round-trip bodies (64 KiB limit).
MAX_TARGET_BYTES = 8 * 1024
_PYTHON_BEHAVIOR = re.compile(
    r"^python:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
_NAME = re.compile(c.LOOP_NAME_PATTERN)
#: A DNS-1123 label (a container's or a volume's name).
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: A DNS-1123 subdomain (a Secret's or a PriorityClass's name).
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
#: A label or annotation key: an optional DNS subdomain prefix, then a name.
_KEY_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
#: A label value (may be empty).
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
#: Keys of labels and annotations the operator sets on node pods and reads back:
#: a user's pod labels and annotations may never be under them.
RESERVED_PREFIXES = ("reactive-loop.dev/", "kopf.reactive-loop.dev/")
RESERVED_LABELS = frozenset({"app.kubernetes.io/name", "app.kubernetes.io/managed-by"})
#: Names the node's own container and volumes use.
RESERVED_CONTAINERS = frozenset({"node"})
RESERVED_VOLUMES = frozenset({"tmp", "hmac-keys", "decision"})
MAX_POD_LABELS = 32
MAX_POD_ANNOTATIONS = 32
MAX_ANNOTATION_VALUE = 4096
MAX_PULL_SECRETS = 16
MAX_SPREAD = 8
MAX_VOLUMES = 16
MAX_SIDECARS = 8


class SpecError(ValueError):
    """A ReactiveLoop that the operator cannot run; the message says why."""


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True, extra="ignore")


class LoopTimings(_Model):
    interval: float = Field(1.0, ge=0.05, le=300)
    timeout: float = Field(0.5, ge=0.01, le=60)
    max_backoff: float = Field(10.0, alias="maxBackoff", ge=0.05, le=3600)
    ring_skip: int = Field(2, alias="ringSkip", ge=0, le=16)

    @model_validator(mode="after")
    def _order(self) -> LoopTimings:
        if self.timeout >= self.interval:
            raise ValueError("loop.timeout must be smaller than loop.interval")
        if self.max_backoff < self.interval:
            raise ValueError("loop.maxBackoff must be at least loop.interval")
        return self


class TokenSettings(_Model):
    hold_seconds: float = Field(2.0, alias="holdSeconds", ge=0.1, le=3600)
    loss_timeout_seconds: float = Field(15.0, alias="lossTimeoutSeconds", ge=1, le=86400)
    lease_seconds: float | None = Field(None, alias="leaseSeconds", ge=0.05, le=3600)
    """Seconds a holder acts after a majority vouched for it; None: the node's default."""
    webhook: str | None = Field(None, max_length=2048)

    @field_validator("webhook")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"token.webhook must be an http(s) URL with a host, got {value!r}")
        try:
            _ = parts.port
        except ValueError as e:
            raise ValueError(f"token.webhook has an invalid port: {value!r}") from e
        return value

    @model_validator(mode="after")
    def _order(self) -> TokenSettings:
        if self.loss_timeout_seconds <= self.hold_seconds:
            raise ValueError("token.lossTimeoutSeconds must be greater than token.holdSeconds")
        lease = self.lease_seconds
        if lease is not None and self.loss_timeout_seconds <= DRIFT_FACTOR * lease:
            raise ValueError(
                f"token.lossTimeoutSeconds must be greater than {DRIFT_FACTOR} x"
                " token.leaseSeconds (the lease plus the clock-drift allowance)"
            )
        return self


class Auth(_Model):
    hmac: bool = False


class Resources(_Model):
    requests: dict[str, str | int] = Field(default_factory=dict)
    limits: dict[str, str | int] = Field(default_factory=dict)


class DisruptionBudget(_Model):
    """The loop's PodDisruptionBudget (policy/v1): how many nodes a drain may evict at once."""

    enabled: bool = True
    max_unavailable: int | str = Field(1, alias="maxUnavailable")

    @field_validator("max_unavailable")
    @classmethod
    def _max(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if not 1 <= value <= c.MAX_REPLICAS:
                raise ValueError(
                    f"must be a count 1..{c.MAX_REPLICAS} or a percentage 1%..100%, got {value}"
                )
            return value
        text = value.strip()
        if text.endswith("%") and text[:-1].isdigit() and 1 <= int(text[:-1]) <= 100:
            return text
        raise ValueError(
            f"must be a count 1..{c.MAX_REPLICAS} or a percentage 1%..100%, got {value!r}"
        )


def _key_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes label or annotation key, or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return f"key {key!r}: the prefix must be a DNS subdomain"
    if not name or len(name) > 63 or not _KEY_NAME.match(name):
        return (
            f"key {key!r}: the name must be 1-63 letters, digits, '-', '_' or '.',"
            " beginning and ending with a letter or digit"
        )
    return None


def _reserved(key: str, *, label: bool) -> bool:
    return key.startswith(RESERVED_PREFIXES) or (label and key in RESERVED_LABELS)


def _check_named(items: list[dict[str, Any]], reserved: frozenset[str]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = item.get("name")
        if not isinstance(name, str) or len(name) > 63 or not _LABEL.match(name):
            raise ValueError(f"item {i}: name must be a DNS-1123 label, got {name!r}")
        if name in reserved:
            raise ValueError(
                f"item {i}: name {name!r} is the node's own; reserved: {sorted(reserved)}"
            )
        if name in seen:
            raise ValueError(f"item {i}: name {name!r} is used twice")
        seen.add(name)


class LoopSpec(_Model):
    """`spec` of a ReactiveLoop with every default filled in."""

    replicas: int = Field(3, ge=c.MIN_REPLICAS, le=c.MAX_REPLICAS)
    behavior: str = "converge"
    topology: c.TopologyName = "ring"
    target: dict[str, Any] | None = None
    token: TokenSettings = Field(default_factory=lambda: TokenSettings.model_validate({}))
    loop: LoopTimings = Field(default_factory=lambda: LoopTimings.model_validate({}))
    image: str | None = Field(None, max_length=512)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        None, alias="imagePullPolicy"
    )
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    auth: Auth = Field(default_factory=Auth)
    image_pull_secrets: list[dict[str, str]] = Field(
        default_factory=list, alias="imagePullSecrets", max_length=MAX_PULL_SECRETS
    )
    topology_spread_constraints: list[dict[str, Any]] | None = Field(
        None, alias="topologySpreadConstraints", max_length=MAX_SPREAD
    )
    """None: the operator's default (spread over hosts); [] : no constraint."""
    priority_class_name: str | None = Field(None, alias="priorityClassName", max_length=253)
    pod_labels: dict[str, str] = Field(
        default_factory=dict, alias="podLabels", max_length=MAX_POD_LABELS
    )
    pod_annotations: dict[str, str] = Field(
        default_factory=dict, alias="podAnnotations", max_length=MAX_POD_ANNOTATIONS
    )
    volumes: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_VOLUMES)
    sidecars: list[dict[str, Any]] = Field(default_factory=list, max_length=MAX_SIDECARS)
    disruption_budget: DisruptionBudget = Field(
        default_factory=lambda: DisruptionBudget.model_validate({}), alias="disruptionBudget"
    )
    suspend: bool = False

    @field_validator("image_pull_secrets")
    @classmethod
    def _pull_secrets(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        for i, ref in enumerate(value):
            name = ref.get("name")
            if set(ref) != {"name"} or not name or len(name) > 253 or not _SUBDOMAIN.match(name):
                raise ValueError(
                    f"item {i} must be {{name: <Secret name>}} (a DNS subdomain), got {ref!r}"
                )
        return value

    @field_validator("topology_spread_constraints")
    @classmethod
    def _spread(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, item in enumerate(value or []):
            for key in ("maxSkew", "topologyKey", "whenUnsatisfiable"):
                if key not in item:
                    raise ValueError(f"item {i} needs {key}")
        return value

    @field_validator("priority_class_name")
    @classmethod
    def _priority(cls, value: str | None) -> str | None:
        if value is not None and not _SUBDOMAIN.match(value):
            raise ValueError(f"must be a DNS subdomain, got {value!r}")
        return value

    @field_validator("pod_labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            problem = _key_problem(key)
            if problem is not None:
                raise ValueError(problem)
            if _reserved(key, label=True):
                raise ValueError(
                    f"key {key!r} is the operator's own (keys under"
                    f" {', '.join(RESERVED_PREFIXES)} and {', '.join(sorted(RESERVED_LABELS))}"
                    " are reserved)"
                )
            if len(text) > 63 or not _LABEL_VALUE.match(text):
                raise ValueError(
                    f"the value of {key!r} must be at most 63 letters, digits, '-', '_'"
                    " or '.', beginning and ending with a letter or digit"
                )
        return value

    @field_validator("pod_annotations")
    @classmethod
    def _annotations(cls, value: dict[str, str]) -> dict[str, str]:
        for key, text in value.items():
            problem = _key_problem(key)
            if problem is not None:
                raise ValueError(problem)
            if _reserved(key, label=False):
                raise ValueError(
                    f"key {key!r} is the operator's own (keys under"
                    f" {', '.join(RESERVED_PREFIXES)} are reserved)"
                )
            if len(text) > MAX_ANNOTATION_VALUE:
                raise ValueError(f"the value of {key!r} is longer than {MAX_ANNOTATION_VALUE}")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        _check_named(value, RESERVED_VOLUMES)
        return value

    @field_validator("sidecars")
    @classmethod
    def _sidecars(cls, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
        _check_named(value, RESERVED_CONTAINERS)
        for i, item in enumerate(value):
            image = item.get("image")
            if not isinstance(image, str) or not image or len(image) > 512:
                raise ValueError(f"item {i}: image must be an image reference")
        return value

    @field_validator("behavior")
    @classmethod
    def _behavior(cls, value: str) -> str:
        if value in c.BEHAVIORS or _PYTHON_BEHAVIOR.match(value):
            return value
        builtin = ", ".join(repr(b) for b in c.BEHAVIORS)
        raise ValueError(
            f"behavior must be {builtin} or '{c.CUSTOM_BEHAVIOR_PREFIX}package.module:Class',"
            f" got {value!r}"
        )

    @field_validator("target")
    @classmethod
    def _target_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        # The bounds every node applies to a state (the target is its level 2):
        # checked first, and without recursion, whatever the nesting.
        try:
            check_bounds({"target": value}, "spec")
        except BadBody as e:
            raise ValueError(f"spec.target: {e}") from None
        size = len(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())
        if size > MAX_TARGET_BYTES:
            raise ValueError(
                f"spec.target is {size} bytes serialised; at most {MAX_TARGET_BYTES} are allowed"
            )
        return value

    @model_validator(mode="after")
    def _cross(self) -> LoopSpec:
        if self.behavior == "token" and self.topology != "ring":
            raise ValueError("behavior 'token' needs topology 'ring'")
        if self.behavior == "token" and self.token.lease_seconds is None:
            lease = default_lease(self.loop.interval, self.replicas)
            if self.token.loss_timeout_seconds <= DRIFT_FACTOR * lease:
                raise ValueError(
                    f"token.lossTimeoutSeconds must be greater than {DRIFT_FACTOR} x the"
                    f" default token lease ({lease:g} s for {self.replicas} nodes at"
                    f" loop.interval {self.loop.interval:g}); raise it or set token.leaseSeconds"
                )
        return self

    @property
    def token_lease(self) -> float:
        """The token lease the nodes use (seconds)."""
        return self.token.lease_seconds or default_lease(self.loop.interval, self.replicas)

    @property
    def is_converge(self) -> bool:
        return self.behavior == "converge"

    @property
    def is_token(self) -> bool:
        return self.behavior == "token"

    @property
    def is_custom(self) -> bool:
        return self.behavior.startswith(c.CUSTOM_BEHAVIOR_PREFIX)

    @property
    def injects_target(self) -> bool:
        """Whether the operator injects `spec.target` into the nodes: converge,
        and a custom behaviour when the spec sets a target (its class then
        declares `takes_target`; docs/custom-behavior.md)."""
        return self.target is not None and (self.is_converge or self.is_custom)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(x) for x in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"spec.{where}: {message}" if where else message)
    return "; ".join(parts)


def parse_spec(spec: Mapping[str, Any]) -> LoopSpec:
    """Validate a ReactiveLoop `spec`; raise `SpecError` with a readable message."""
    try:
        return LoopSpec.model_validate(dict(spec))
    except ValidationError as e:
        raise SpecError(_describe(e)) from None


def check_name(name: str) -> None:
    """Raise `SpecError` unless `name` can name the loop's Service and pods."""
    if not _NAME.match(name) or len(name) > c.MAX_LOOP_NAME:
        raise SpecError(
            f"metadata.name {name!r} must be a DNS-1035 label of at most"
            f" {c.MAX_LOOP_NAME} characters"
        )


def target_digest(target: Mapping[str, Any] | None) -> str:
    """A stable digest of a target, to notice when `spec.target` really changed."""
    raw = json.dumps(target, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]
