"""Signed round trips: the keyring, the signature header, and the replay guard.

Pure (no I/O), so the operator and `reactive-loop set-target` sign with the
same code the nodes verify with; reading the key files is
`reactive_node.runtime.keyfiles`.

The header (docs/node.md, "Signed round trips"):

    X-Reactive-Loop-Signature: v1 keyid=<8 hex> ts=<unix ms>
        from=<sender> to=<recipient> sig=<64 hex>   (one line)

`sig` is HMAC-SHA256, under the key named by `keyid`, of the canonical message
`canonical(...)`: the signature version, the HTTP method, the path, the key id,
the timestamp, the sender, the recipient and the SHA-256 of the body exactly
as sent, one per line. A receiver accepts it only if every check of
`Verifier.check` holds, so a captured request is refused when replayed to the
same node (seen before, or signed before the node started), to another node
(recipient), or later (timestamp window).
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import hmac
import re
from collections.abc import Iterable
from typing import Final

from . import contract

VERSION: Final = "v1"
#: First line of the canonical message (names the scheme and its version).
DOMAIN: Final = "reactive-loop-signature-v1"
#: Shortest and longest key (bytes, after surrounding whitespace is stripped).
MIN_KEY_BYTES: Final = contract.HMAC_MIN_KEY_BYTES
MAX_KEY_BYTES: Final = 4096
#: Longest header value looked at; a longer one is refused unparsed.
MAX_HEADER_CHARS: Final = 700
#: What a sender or recipient name in a signed request may be.
NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}"
_NAME = re.compile(NAME_PATTERN, re.ASCII)
_HEADER = re.compile(
    r"v1 keyid=(?P<keyid>[0-9a-f]{8}) ts=(?P<ts>[0-9]{1,15})"
    rf" from=(?P<sender>{NAME_PATTERN}) to=(?P<recipient>{NAME_PATTERN})"
    r" sig=(?P<sig>[0-9a-f]{64})",
    re.ASCII,
)


class BadKey(ValueError):
    """A key or key file that cannot be used; the message says which and why."""


class Unauthorized(Exception):
    """A signature that does not authenticate the request; the message says why."""


class ReplayCacheFull(Exception):
    """More signed requests within the window than the replay cache holds."""


def key_id(key: bytes) -> str:
    """The public name of a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:8]


def is_signable_name(name: str) -> bool:
    """Whether `name` can stand as a sender or recipient in the header."""
    return _NAME.fullmatch(name) is not None


def _check_key(key: bytes, where: str) -> bytes:
    if not key:
        raise BadKey(f"{where}: the key is empty")
    if len(key) < MIN_KEY_BYTES:
        raise BadKey(
            f"{where}: the key has {len(key)} bytes; at least {MIN_KEY_BYTES} are needed"
            " (e.g. `openssl rand -hex 32`)"
        )
    if len(key) > MAX_KEY_BYTES:
        raise BadKey(f"{where}: the key has {len(key)} bytes; at most {MAX_KEY_BYTES}")
    return key


def parse_keys(text: bytes, where: str) -> list[bytes]:
    """The keys of an `accepted` file: separated by newlines or commas, surrounding
    whitespace stripped, empty entries ignored; each checked like a primary key."""
    keys = []
    for n, raw in enumerate(re.split(rb"[\r\n,]", text), start=1):
        key = raw.strip()
        if key:
            keys.append(_check_key(key, f"{where} (entry {n})"))
    return keys


@dataclasses.dataclass(frozen=True)
class Keyring:
    """The key a node signs with (`primary`) and every key it accepts (the primary
    and `accepted`). Construct with `Keyring.of`, which checks every key."""

    primary: bytes
    accepted: tuple[bytes, ...] = ()

    @classmethod
    def of(cls, primary: bytes, accepted: Iterable[bytes] = (), where: str = "HMAC key") -> Keyring:
        primary = _check_key(primary.strip(), where)
        extra = tuple(_check_key(k, f"{where} (accepted)") for k in accepted if k != primary)
        return cls(primary, tuple(dict.fromkeys(extra)))

    def __repr__(self) -> str:  # never the keys themselves
        return f"Keyring(primary={self.primary_id}, keyIds={self.ids})"

    @property
    def primary_id(self) -> str:
        return key_id(self.primary)

    @property
    def ids(self) -> list[str]:
        """Key ids of every accepted key, the primary first."""
        return list(dict.fromkeys(key_id(k) for k in (self.primary, *self.accepted)))

    def keys_for(self, keyid: str) -> list[bytes]:
        """The accepted keys with this id (one, unless two keys share 32 bits)."""
        return [k for k in (self.primary, *self.accepted) if key_id(k) == keyid]

    def describe(self) -> dict[str, object]:
        return {"primary": self.primary_id, "keyIds": self.ids}


def canonical(
    *, method: str, path: str, keyid: str, ts: int, sender: str, recipient: str, body: bytes
) -> bytes:
    """The message the HMAC covers, one field per line."""
    lines = (
        DOMAIN,
        method.upper(),
        path,
        keyid,
        str(ts),
        sender,
        recipient,
        hashlib.sha256(body).hexdigest(),
    )
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def _mac(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(
    keyring: Keyring,
    *,
    sender: str,
    recipient: str,
    body: bytes,
    now: float,
    method: str = "POST",
    path: str = contract.ROUNDTRIP_PATH,
) -> str:
    """The signature header value for a round trip from `sender` to `recipient`
    at time `now` (Unix seconds), signed with the primary key."""
    for role, name in (("sender", sender), ("recipient", recipient)):
        if not is_signable_name(name):
            raise ValueError(f"{role} {name!r} cannot be signed (letters, digits, '.', '_', '-')")
    keyid = keyring.primary_id
    ts = int(now * 1000)
    message = canonical(
        method=method,
        path=path,
        keyid=keyid,
        ts=ts,
        sender=sender,
        recipient=recipient,
        body=body,
    )
    mac = _mac(keyring.primary, message)
    return f"{VERSION} keyid={keyid} ts={ts} from={sender} to={recipient} sig={mac}"


@dataclasses.dataclass(frozen=True)
class Signature:
    """A parsed signature header."""

    keyid: str
    ts: int
    """Unix milliseconds."""
    sender: str
    recipient: str
    sig: str


def parse(header: str | None) -> Signature:
    """Parse a header value (any characters); Unauthorized if it is not one."""
    if not header:
        raise Unauthorized(f"missing {contract.SIGNATURE_HEADER}")
    match = None if len(header) > MAX_HEADER_CHARS else _HEADER.fullmatch(header.strip())
    if match is None:
        raise Unauthorized(
            f"malformed {contract.SIGNATURE_HEADER}: expected"
            " 'v1 keyid=<8 hex> ts=<unix ms> from=<name> to=<name> sig=<64 hex>'"
        )
    return Signature(
        keyid=match["keyid"],
        ts=int(match["ts"]),
        sender=match["sender"],
        recipient=match["recipient"],
        sig=match["sig"],
    )


class Verifier:
    """The receiver's checks, with its memory of the signatures it accepted.

    `check` accepts a request only if: the header parses; it is addressed to
    this node; its timestamp is within ±`window` seconds of the clock and not
    before `not_before` (the node's start: a request captured before a restart
    cannot be replayed after it, although the memory is gone); its key id is
    one this node accepts; the HMAC matches; and this signature was not
    accepted before. Accepted signatures are remembered until they leave the
    window; at most `capacity` of them (then `ReplayCacheFull`, never a
    forgotten one).
    """

    def __init__(
        self,
        recipient: str,
        *,
        not_before: float,
        window: float = contract.SIGNATURE_WINDOW_SECONDS,
        capacity: int = contract.SIGNATURE_CACHE_SIZE,
    ) -> None:
        self.recipient = recipient
        self.not_before_ms = int(not_before * 1000)
        self.window_ms = int(window * 1000)
        self.capacity = capacity
        self._seen: set[str] = set()
        self._expiry: list[tuple[int, str]] = []  # heap of (ts, sig)

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_expired(self, now_ms: int) -> None:
        while self._expiry and self._expiry[0][0] < now_ms - self.window_ms:
            _, sig = heapq.heappop(self._expiry)
            self._seen.discard(sig)

    def check(
        self,
        keyring: Keyring,
        header: str | None,
        *,
        body: bytes,
        now: float,
        method: str = "POST",
        path: str = contract.ROUNDTRIP_PATH,
    ) -> Signature:
        """The verified signature; Unauthorized (or ReplayCacheFull) if refused."""
        signature = parse(header)
        if signature.recipient != self.recipient:
            raise Unauthorized(f"signed for {signature.recipient}, this is {self.recipient}")
        now_ms = int(now * 1000)
        if abs(signature.ts - now_ms) > self.window_ms:
            raise Unauthorized(
                f"timestamp {signature.ts} is more than {self.window_ms // 1000} s from this"
                f" node's clock ({now_ms}, Unix ms)"
            )
        if signature.ts < self.not_before_ms:
            raise Unauthorized("signed before this node started")
        keys = keyring.keys_for(signature.keyid)
        if not keys:
            raise Unauthorized(f"unknown key id {signature.keyid} (this node knows {keyring.ids})")
        message = canonical(
            method=method,
            path=path,
            keyid=signature.keyid,
            ts=signature.ts,
            sender=signature.sender,
            recipient=signature.recipient,
            body=body,
        )
        given = signature.sig.encode()
        if not any(hmac.compare_digest(_mac(k, message).encode(), given) for k in keys):
            raise Unauthorized("bad signature")
        self._forget_expired(now_ms)
        if signature.sig in self._seen:
            raise Unauthorized("replayed: this signature was accepted before")
        if len(self._seen) >= self.capacity:
            raise ReplayCacheFull(
                f"more than {self.capacity} signed requests within {self.window_ms // 1000} s"
            )
        self._seen.add(signature.sig)
        heapq.heappush(self._expiry, (signature.ts, signature.sig))
        return signature
