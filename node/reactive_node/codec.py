"""Wire formats: round-trip bodies, state text, and HMAC signatures.

The operator imports this module to build its own round trips, so everything
here is free of I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec

from .behaviors.base import State, canonical

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
Count = Annotated[int, msgspec.Meta(ge=0)]
T = TypeVar("T")


class BadBody(ValueError):
    """A round-trip body that is not valid JSON of the expected shape; the
    message names the first problem and where (`$.seq`)."""


class RoundTripRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"sender": "from"}
):
    """Body of `POST /v1/roundtrip`."""

    loop: Name
    sender: Name
    boot: Count
    seq: Count
    state: dict[str, Any]


class RoundTripResponse(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename={"sender": "from"}
):
    """Body of a `200` answer to a round trip."""

    sender: Name
    state: dict[str, Any]


#: Compact JSON of any JSON-like value or of the structs above.
encode = msgspec.json.Encoder().encode


def _checked(kind: type[T]) -> Callable[[bytes], T]:
    """A decoder of JSON bytes into `kind` that raises BadBody for any problem."""
    decode = msgspec.json.Decoder(kind).decode

    def checked(body: bytes) -> T:
        try:
            return decode(body)
        except msgspec.DecodeError as e:
            raise BadBody(str(e)) from None

    return checked


#: Parse and check a round-trip request body; raises BadBody.
decode_request = _checked(RoundTripRequest)
#: Parse and check the body of a `200` answer; raises BadBody.
decode_response = _checked(RoundTripResponse)


def make_request(loop: str, sender: str, boot: int, seq: int, state: State) -> RoundTripRequest:
    """A checked request (the constructor alone checks nothing); raises BadBody."""
    try:
        return msgspec.convert(
            {"loop": loop, "from": sender, "boot": boot, "seq": seq, "state": state},
            RoundTripRequest,
        )
    except msgspec.ValidationError as e:
        raise BadBody(str(e)) from None


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
