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

#: Largest target the operator injects, serialised as compact JSON. Pod
#: annotations share a 256 KiB budget; a target is copied into every node's
#: state annotation and into round-trip bodies (64 KiB limit).
MAX_TARGET_BYTES = 8 * 1024
MAX_REPLICAS = 200
_PYTHON_BEHAVIOR = re.compile(
    r"^python:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)
_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
MAX_NAME = 40


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
        return self


class Auth(_Model):
    hmac: bool = False


class Resources(_Model):
    requests: dict[str, str | int] = Field(default_factory=dict)
    limits: dict[str, str | int] = Field(default_factory=dict)


class LoopSpec(_Model):
    """`spec` of a ReactiveLoop with every default filled in."""

    replicas: int = Field(3, ge=1, le=MAX_REPLICAS)
    behavior: str = "converge"
    topology: Literal["ring", "mesh", "star"] = "ring"
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

    @field_validator("behavior")
    @classmethod
    def _behavior(cls, value: str) -> str:
        if value in ("converge", "token") or _PYTHON_BEHAVIOR.match(value):
            return value
        raise ValueError(
            f"behavior must be 'converge', 'token' or 'python:package.module:Class', got {value!r}"
        )

    @field_validator("target")
    @classmethod
    def _target_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
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
        return self

    @property
    def is_converge(self) -> bool:
        return self.behavior == "converge"

    @property
    def is_token(self) -> bool:
        return self.behavior == "token"


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
    if not _NAME.match(name) or len(name) > MAX_NAME:
        raise SpecError(
            f"metadata.name {name!r} must be a DNS-1035 label of at most {MAX_NAME} characters"
        )


def target_digest(target: Mapping[str, Any] | None) -> str:
    """A stable digest of a target, to notice when `spec.target` really changed."""
    raw = json.dumps(target, separators=(",", ":"), sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]
