"""Local mode's fault switch: blocked links between nodes, for chaos runs only.

`reactive-loop run --faults` gives every node `RL_FAULTS_FILE`, a JSON file in
the state dir: `{"blocked": [["local-0", "local-1"], ...]}`, pairs `(from, to)`
of node names. A node re-reads it once per interval (one `stat`, and a read
only when it changed), does not send a round trip to a peer it may not reach
(`from` = itself: the wait is `unreachable`, as a cut cable would be) and
answers `503 partitioned` to a round trip from a sender that may not reach it
(`to` = itself). The config refuses it with the pod store: in a cluster a
partition is a NetworkPolicy. docs/chaos.md describes it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Final

import msgspec

from ..core import contract
from .node import Outcome, Transport

log = logging.getLogger(__name__)

#: A fault file is tiny; anything longer is refused (and the last links kept).
MAX_FAULTS_BYTES: Final = 64 * 1024

Link = tuple[str, str]


class FaultsFile(msgspec.Struct, forbid_unknown_fields=True):
    blocked: list[tuple[str, str]] = []


class _Sender(msgspec.Struct):
    sender: str = msgspec.field(name="from")


def parse_faults(data: bytes) -> frozenset[Link]:
    """The blocked links of a faults file's bytes; ValueError if it is not one."""
    if len(data) > MAX_FAULTS_BYTES:
        raise ValueError(f"faults file longer than {MAX_FAULTS_BYTES} bytes")
    try:
        return frozenset(msgspec.json.decode(data, type=FaultsFile).blocked)
    except msgspec.DecodeError as e:
        raise ValueError(f"not a faults file: {e}") from None


def encode_faults(links: Iterable[Link]) -> bytes:
    """The bytes of a faults file blocking `links` (sorted, so stable)."""
    return msgspec.json.encode(FaultsFile(blocked=sorted(set(links)))) + b"\n"


def sender_of(body: bytes) -> str | None:
    """The `from` of a round-trip body, or None if it has none (the node then
    handles the body as usual and refuses it with its own error)."""
    try:
        return msgspec.json.decode(body, type=_Sender).sender
    except msgspec.DecodeError:
        return None


class FaultSwitch:
    """What one node knows of the faults file, re-read by `refresh`."""

    def __init__(self, path: Path, node: str) -> None:
        self.path = path
        self.node = node
        self.blocked: frozenset[Link] = frozenset()
        self._stamp: tuple[int, int, int] | None = None
        self._error: str | None = None

    def refresh(self) -> None:
        """Re-read the file if its (inode, mtime, size) changed; a missing file blocks
        nothing; an unreadable one keeps the last links (logged once)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.blocked, self._stamp = frozenset(), None
            return
        except OSError as e:
            self._report(f"cannot stat {self.path}: {e}")
            return
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            links = parse_faults(self.path.read_bytes())
        except (OSError, ValueError) as e:
            self._report(f"{self.path}: {e}")
            return
        self._stamp, self._error = stamp, None
        if links != self.blocked:
            log.warning("node %s: fault switch now blocks %d links", self.node, len(links))
        self.blocked = links

    def _report(self, problem: str) -> None:
        if problem != self._error:
            log.warning(
                "node %s: %s; keeping %d blocked links", self.node, problem, len(self.blocked)
            )
        self._error = problem

    def refuses_from(self, sender: str) -> bool:
        return (sender, self.node) in self.blocked

    def guard(self, transport: Transport, peers: Mapping[str, str]) -> Transport:
        """`transport`, except to a peer (by round-trip URL -> node name) this node
        may not reach: then the outcome is `unreachable`, and nothing is sent."""

        async def send(url: str, body: bytes, headers: dict[str, str]) -> Outcome:
            peer = peers.get(url)
            if peer is not None and (self.node, peer) in self.blocked:
                return Outcome(failure="unreachable")
            return await transport(url, body, headers)

        return send


def peer_urls(addresses: Iterable[str], name: Callable[[int], str]) -> dict[str, str]:
    """Round-trip URL -> node name, as `Node` builds its URLs."""
    return {f"http://{a}{contract.ROUNDTRIP_PATH}": name(i) for i, a in enumerate(addresses)}
