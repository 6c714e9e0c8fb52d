"""Wire formats: round-trip bodies and state text (signatures: `auth`).

The operator imports this module to build its own round trips, so everything
here is free of I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Final, TypeVar

import msgspec

from .behaviors.base import State, canonical
from .contract import MAX_STATE_DEPTH, MAX_STATE_INT, MAX_WIRE_INT

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
#: `boot` and `seq`: int64, never negative.
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_WIRE_INT)]
T = TypeVar("T")


class BadBody(ValueError):
    """A round-trip body or a stored state that is not valid JSON of the expected
    shape or breaks a bound; the message names the first problem and where (`$.seq`)."""


class UnsupportedVersion(BadBody):
    """A body of a protocol version this node does not speak (`400 unsupported_version`)."""

    def __init__(self, version: int) -> None:
        super().__init__(
            f"protocol version {version} is not supported (this node speaks"
            f" {', '.join(map(str, SUPPORTED_VERSIONS))}) - at `$.v`"
        )
        self.version = version


def check_bounds(value: Any, where: str = "$", *, depth: int = 1) -> None:
    """Raise BadBody unless every number in the JSON value `value` is in bounds:
    integers within ±`MAX_STATE_INT`, floats finite, arrays and objects nested at
    most `MAX_STATE_DEPTH` deep. The one check every state passes, whichever way
    it came in (a body, an answer, a file, an annotation). `depth` is the level
    of `value` itself (an unknown field of a body is at level 2)."""
    stack: list[tuple[Any, int]] = [(value, depth)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is int:
            if not -MAX_STATE_INT <= item <= MAX_STATE_INT:
                raise BadBody(
                    f"integer of {item.bit_length()} bits out of range (at most 2^53-1 in"
                    f" size) - in `{where}`"
                )
        elif kind is float:
            if not math.isfinite(item):
                raise BadBody(f"number {item} out of range - in `{where}`")
        elif kind is dict or kind is list:
            if depth > MAX_STATE_DEPTH:
                raise BadBody(f"nested deeper than {MAX_STATE_DEPTH} levels - in `{where}`")
            children = item.values() if kind is dict else item
            stack.extend((child, depth + 1) for child in children)


#: The wire protocol version this code speaks (docs/node.md, "Protocol version").
#: A body without `v` is version 1: the format up to commit d29e2e1/c82bd5b.
PROTOCOL_VERSION: Final = 2
#: Versions a node accepts: its own and the previous one.
SUPPORTED_VERSIONS: Final = (1, 2)


class RoundTripRequest(
    msgspec.Struct, frozen=True, omit_defaults=True, rename={"sender": "from", "version": "v"}
):
    """Body of `POST /v1/roundtrip`. `version` 1 is encoded without `v`, byte
    for byte the version 1 body; unknown fields are ignored (but checked)."""

    loop: Name
    sender: Name
    boot: Count
    seq: Count
    state: dict[str, Any]
    version: int = 1


class RoundTripResponse(
    msgspec.Struct, frozen=True, omit_defaults=True, rename={"sender": "from", "version": "v"}
):
    """Body of a `200` answer to a round trip (version 1 without `v`)."""

    sender: Name
    state: dict[str, Any]
    version: int = 1


#: Compact JSON of any JSON-like value or of the structs above.
encode = msgspec.json.Encoder().encode

_decode_any = msgspec.json.Decoder().decode


def _checked(kind: type[T]) -> Callable[[bytes], T]:
    """A decoder of JSON bytes into `kind` that raises BadBody for any problem.

    Unknown fields are ignored, as a newer version may add some, but each one
    is checked like a state (numbers in bounds, nesting at most
    `MAX_STATE_DEPTH` counting the body as level 1); the body size limit is
    the HTTP layer's. A `v` outside `SUPPORTED_VERSIONS` raises
    `UnsupportedVersion`."""
    known = {f.encode_name for f in msgspec.structs.fields(kind)}  # type: ignore[arg-type]

    def checked(body: bytes) -> T:
        try:
            raw = _decode_any(body)
        except msgspec.DecodeError as e:
            raise BadBody(str(e)) from None
        except RecursionError:
            raise BadBody(f"nested deeper than {MAX_STATE_DEPTH} levels") from None
        if not isinstance(raw, dict):
            raise BadBody(f"Expected `object`, got `{type(raw).__name__}`")
        for name, item in raw.items():
            if name not in known:
                check_bounds(item, f"$.{name[:40]}", depth=2)
        version = raw.get("v", 1)
        if type(version) is int and version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersion(version)
        try:
            value = msgspec.convert(raw, kind)
        except msgspec.ValidationError as e:
            raise BadBody(str(e)) from None
        check_bounds(getattr(value, "state", None), "$.state")
        return value

    return checked


#: Parse and check a round-trip request body; raises BadBody.
decode_request = _checked(RoundTripRequest)
#: Parse and check the body of a `200` answer; raises BadBody.
decode_response = _checked(RoundTripResponse)


def make_request(
    loop: str, sender: str, boot: int, seq: int, state: State, version: int = 1
) -> RoundTripRequest:
    """A checked request (the constructor alone checks nothing); raises BadBody.

    Version 1 by default: every node since the first accepts it, so a sender
    that does not know its peer's version (the operator, `set-target`) uses it."""
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(version)
    try:
        request = msgspec.convert(
            {"loop": loop, "from": sender, "boot": boot, "seq": seq, "state": state, "v": version},
            RoundTripRequest,
        )
    except msgspec.ValidationError as e:
        raise BadBody(str(e)) from None
    check_bounds(request.state, "$.state")
    return request


def encode_state(state: State) -> str:
    """The text a store keeps: canonical JSON, so equal states give equal text."""
    return canonical(state)


_decode_json = msgspec.json.Decoder().decode


def decode_state(text: str) -> Any:
    """Parse stored state text, as strictly as a body: BadBody (a ValueError) if it
    is not UTF-8 JSON (no NaN, no lone surrogates) or breaks a bound of
    `check_bounds`. Validation against the behaviour is the node's next step.

    A store that read bytes that are not UTF-8 hands them on as surrogate escapes
    (`bytes.decode("utf-8", "surrogateescape")`); they are refused here."""
    try:
        value = _decode_json(text.encode("utf-8", "surrogateescape"))
    except UnicodeError:
        raise BadBody("not UTF-8 text") from None
    except msgspec.DecodeError as e:
        raise BadBody(str(e)) from None
    except RecursionError:
        raise BadBody(f"nested deeper than {MAX_STATE_DEPTH} levels") from None
    check_bounds(value)
    return value


# --------------------------------------------------------- the /v1/state document

#: A number from a behaviour state, as the node bounds it.
StateInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_STATE_INT)]


class StateSummary(msgspec.Struct):
    """The behaviour-independent summary of a node's state
    (`behaviors.base.Summary`, plus `held` when the node holds with a lease)."""

    generation: StateInt | None = None
    target: Any = None
    holding: bool | None = None
    """Acting as the holder (token with a lease: its lease is fresh)."""
    held: bool | msgspec.UnsetType = msgspec.UNSET
    """Token with a lease: the token is in its state, acting or still gathering
    its lease. Absent (UNSET) otherwise."""
    epoch: tuple[StateInt, StateInt] | None = None


class StateEdge(msgspec.Struct):
    """The last round trip a node made to one peer: its outcome and when."""

    to: str
    outcome: str
    at: float


class ProtocolInfo(msgspec.Struct):
    """The protocol version a node speaks, and the versions its peers answered with."""

    version: int
    peers: dict[str, int] = msgspec.field(default_factory=dict)


class StateDocument(msgspec.Struct, rename="camel"):
    """A node's `GET /v1/state` answer (docs/node.md, "HTTP API").

    The node encodes it (`runtime.node.Node.state_document`); the operator, local
    mode and the kubectl plugin decode it with `decode_state_document`. Every
    field but `node` has a default, so an older node's document still decodes;
    unknown fields are ignored, so a newer node's does too."""

    node: Name
    loop: str | None = None
    ordinal: int | None = None
    behavior: str | None = None
    topology: str | None = None
    boot: Count | None = None
    ready: bool = False
    phase: str = "starting"
    loops: Count = 0
    waits: Count = 0
    last_wait_reason: str | None = None
    last_loop_at: float | None = None
    replicas: int | None = None
    suspended: bool = False
    state: Any = msgspec.field(default_factory=dict)
    """The behaviour state as the node holds it (`{}` before it has one)."""
    state_error: str | None = None
    summary: StateSummary = msgspec.field(default_factory=StateSummary)
    edges: list[StateEdge] = msgspec.field(default_factory=list)
    auth: dict[str, Any] | None = None
    protocol: ProtocolInfo | None = None


class BadStateDocument(ValueError):
    """A `/v1/state` answer that is not a state document; the message names the
    first problem and where (`$.summary.generation`)."""


_decode_state_document = msgspec.json.Decoder(StateDocument).decode


def decode_state_document(value: Any) -> StateDocument:
    """A `/v1/state` document from its JSON bytes or from decoded JSON (a dict);
    raises BadStateDocument."""
    try:
        if isinstance(value, bytes | bytearray | memoryview):
            return _decode_state_document(value)
        return msgspec.convert(value, StateDocument)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise BadStateDocument(f"not a state document: {e}") from e
