"""Wire formats: round-trip bodies, state text, and HMAC signatures.

The operator imports this module to build its own round trips, so everything
here is free of I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from .behaviors.base import State, canonical


class RoundTripRequest(BaseModel):
    """Body of `POST /v1/roundtrip`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    loop: StrictStr = Field(min_length=1, max_length=253)
    sender: StrictStr = Field(alias="from", min_length=1, max_length=253)
    boot: StrictInt = Field(ge=0)
    seq: StrictInt = Field(ge=0)
    state: dict[str, Any]


class RoundTripResponse(BaseModel):
    """Body of a `200` answer to a round trip."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    sender: StrictStr = Field(alias="from", min_length=1)
    state: dict[str, Any]


def encode_request(req: RoundTripRequest) -> bytes:
    return canonical(req.model_dump(by_alias=True)).encode()


def encode_response(sender: str, state: State) -> bytes:
    return canonical({"from": sender, "state": state}).encode()


def encode_state(state: State) -> str:
    """The text a store keeps: canonical JSON, so equal states give equal text."""
    return canonical(state)


def decode_state(text: str) -> Any:
    """Parse stored state text (validation is the behaviour's job); ValueError if not JSON."""
    return json.loads(text)


SIGNATURE_PREFIX = "sha256="


def sign(key: bytes, body: bytes) -> str:
    """Value of the signature header for `body`."""
    return SIGNATURE_PREFIX + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify(key: bytes, body: bytes, header: str | None) -> bool:
    """Constant-time check of a signature header."""
    if not header:
        return False
    return hmac.compare_digest(sign(key, body), header.strip())
