"""The decision history of a node: pure and I/O-free (docs/node.md, "Decision history").

A node records what it decided and the round trip that justified it:

* `adopt` — a new converge generation (or target), with the target's digest;
* `regenerate` — a token created anew (a new chain), with its epoch;
* `acquire` / `release` — the node starts / stops *acting* as the token holder
  (the events its webhook gets), with the epoch;
* `edit` — the stored state was changed by someone else (a hand edit); it
  names no round trip, as nothing the node did caused it;
* `waits` — failed round trips by reason, counted per time bucket of
  `WAIT_BUCKET_SECONDS` (not one entry per wait): `bucket` is the bucket's
  start, `at` and `last` the first and the last wait counted in the entry.

A decision's `rt` is the round trip that justified it: the peer, the round
trip's `(boot, seq)` (the initiator's: this node's own when it initiated,
the sender's when it answered; both as decimal strings, as they may exceed the
2^53 every stored number stays within), when it completed, this node's role, and the
digest (sha256 prefix) of the round trip's answer body, so the initiator's
and the responder's entries of one round trip match. `rt` is null only in a
loop of one node, which has no peer to ask.

Entries live in a bounded deque (`HISTORY_SIZE`); each has a `seq` (its place,
increasing) and a `rev` (the history counter when it last changed: a wait
bucket changes while it is the newest entry). `entries(since=N)` returns those
with `rev > N`; polling with the `next` of the last answer misses nothing that
is still held. The last `HISTORY_TAIL` entries are persisted with the state,
only when the state is written anyway (a decision changes the state).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from .behaviors.base import State, Summary, canonical
from .contract import HISTORY_STATE_KEY, MAX_WIRE_INT

#: Entries a node keeps in memory (the newest; older ones are dropped).
HISTORY_SIZE: Final = 512
#: Entries persisted with the state (the newest), restored on start.
HISTORY_TAIL: Final = 8
#: Width of a wait bucket, seconds.
WAIT_BUCKET_SECONDS: Final = 10.0
#: Hex digits of a digest (sha256 prefix) after "sha256:".
DIGEST_HEX: Final = 16
#: Kinds of entries that are decisions (they carry `rt`).
DECISIONS: Final = ("adopt", "regenerate", "acquire", "release")
#: Longest peer name kept in an entry (a node name is at most 253 characters).
MAX_PEER_CHARS: Final = 253


def digest(data: bytes | str) -> str:
    """`sha256:` and the first `DIGEST_HEX` hex digits of the SHA-256 of `data`."""
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:DIGEST_HEX]


@dataclasses.dataclass(frozen=True)
class RoundTrip:
    """A successful round trip, as a decision names it."""

    peer: str
    role: str
    """"initiator" (this node sent it) or "responder" (this node answered it)."""
    boot: int
    seq: int
    """The initiator's `(boot, seq)` of the round trip."""
    at: float
    """Wall-clock time it completed (seconds since the epoch)."""
    answer: str
    """Digest of the answer body (`digest`)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "peer": self.peer[:MAX_PEER_CHARS],
            "role": self.role,
            "boot": str(self.boot),  # nanoseconds: above 2^53, so a decimal string
            # A sender's seq may exceed 2^53 too (the wire allows int64), which
            # no stored state may hold: a decimal string as well.
            "seq": str(self.seq),
            "at": self.at,
            "answer": self.answer,
        }


def state_decisions(
    old: State | None, new: State, old_summary: Summary | None, new_summary: Summary
) -> list[tuple[str, dict[str, Any]]]:
    """The decisions a change of state from `old` to `new` shows: (kind, details)."""
    found: list[tuple[str, dict[str, Any]]] = []
    generation = new_summary["generation"]
    if generation is not None and (
        old_summary is None
        or old_summary["generation"] != generation
        or old_summary["target"] != new_summary["target"]
    ):
        found.append(
            (
                "adopt",
                {"generation": generation, "target": digest(canonical(new_summary["target"]))},
            )
        )
    epoch = new_summary["epoch"]
    if (
        new_summary["holding"]
        and epoch is not None
        and new.get("origin") == epoch
        and (old is None or not old.get("holding"))
        and (old_summary is None or old_summary["epoch"] != epoch)
    ):
        found.append(("regenerate", {"epoch": list(epoch)}))
    return found


class History:
    """A node's bounded, ordered record of decisions and wait buckets."""

    def __init__(
        self, size: int = HISTORY_SIZE, bucket_seconds: float = WAIT_BUCKET_SECONDS
    ) -> None:
        self.size = size
        self.bucket_seconds = bucket_seconds
        self._entries: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self.counter = 0
        """The newest `rev` handed out (0: nothing recorded yet)."""
        self.last: RoundTrip | None = None
        """The newest successful round trip (what justifies a decision made by time)."""

    def __len__(self) -> int:
        return len(self._entries)

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def decision(
        self, kind: str, at: float, rt: RoundTrip | None, details: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Record a decision made at `at` on the round trip `rt`; the entry."""
        seq = self._next()
        entry = {
            "seq": seq,
            "rev": seq,
            "at": at,
            "kind": kind,
            **details,
            "rt": None if rt is None else rt.to_json(),
        }
        self._entries.append(entry)
        return entry

    def edit(self, at: float, details: Mapping[str, Any]) -> dict[str, Any]:
        """Record that someone else changed the stored state (no round trip)."""
        seq = self._next()
        entry = {"seq": seq, "rev": seq, "at": at, "kind": "edit", **details}
        self._entries.append(entry)
        return entry

    def wait(self, reason: str, at: float) -> dict[str, Any]:
        """Count a wait for `reason` at `at` in its time bucket; the bucket entry."""
        start = math.floor(at / self.bucket_seconds) * self.bucket_seconds
        rev = self._next()
        newest = self._entries[-1] if self._entries else None
        if newest is not None and newest["kind"] == "waits" and newest["bucket"] == start:
            counts: dict[str, int] = newest["counts"]
            counts[reason] = counts.get(reason, 0) + 1
            newest["rev"] = rev
            newest["last"] = max(float(newest["last"]), at)
            return newest
        entry = {
            "seq": rev,
            "rev": rev,
            "at": at,
            "kind": "waits",
            "bucket": start,
            "seconds": self.bucket_seconds,
            "counts": {reason: 1},
            "last": at,
        }
        self._entries.append(entry)
        return entry

    def entries(
        self, since: int | None = None, since_time: float | None = None
    ) -> list[dict[str, Any]]:
        """Copies of the entries, oldest first, changed after `rev` `since` and
        (for a bucket: last counted) after the time `since_time`."""
        chosen: list[dict[str, Any]] = []
        for entry in self._entries:
            if since is not None and entry["rev"] <= since:
                continue
            if since_time is not None and float(entry.get("last", entry["at"])) <= since_time:
                continue
            copy = dict(entry)
            if "counts" in copy:
                copy["counts"] = dict(copy["counts"])
            chosen.append(copy)
        return chosen

    def tail(
        self, pending: Iterable[Mapping[str, Any]] = (), count: int = HISTORY_TAIL
    ) -> list[dict[str, Any]]:
        """The newest `count` entries (after `pending` ones not yet recorded), as
        persisted: without `seq` and `rev`, which are this process's."""
        items = list(self._entries)[-count:] + [dict(p) for p in pending]
        return [
            {k: (dict(v) if k == "counts" else v) for k, v in e.items() if k not in ("seq", "rev")}
            for e in items[-count:]
        ]

    def restore(self, stored: Any) -> int:
        """Put a persisted tail back (on start), marked `restored`; entries that are
        not of the persisted shape are skipped. Returns how many were restored."""
        if not isinstance(stored, list):
            return 0
        restored = 0
        for item in stored[-HISTORY_TAIL:]:
            entry = _valid_stored(item)
            if entry is None:
                continue
            seq = self._next()
            self._entries.append({"seq": seq, "rev": seq, **entry, "restored": True})
            restored += 1
        return restored


_KINDS: Final = frozenset((*DECISIONS, "edit", "waits"))


def _valid_stored(item: Any) -> dict[str, Any] | None:
    """A persisted entry if it looks like one (kind known, time a number), else None."""
    if not isinstance(item, dict) or item.get("kind") not in _KINDS:
        return None
    at = item.get("at")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
        return None
    if len(canonical(item)) > 2048:  # one entry is far smaller; a hand edit is not kept
        return None
    return {k: v for k, v in item.items() if k not in ("seq", "rev", "restored")}


def split_stored(value: Any) -> tuple[Any, Any]:
    """(state, persisted tail or None) of a stored state object."""
    if isinstance(value, dict) and HISTORY_STATE_KEY in value:
        rest = dict(value)
        tail = rest.pop(HISTORY_STATE_KEY)
        return rest, tail
    return value, None


def with_tail(state: State, tail: list[dict[str, Any]]) -> dict[str, Any]:
    """The object a store keeps: the state and the history's tail (if any)."""
    if not tail:
        return state
    return {**state, HISTORY_STATE_KEY: tail}


# --------------------------------------------------------- reading pages back


class BadHistoryPage(ValueError):
    """A `/v1/history` answer that is not a history page (the message says why)."""


#: A reader's entries of one node's history: keyed by (boot, seq), each entry as
#: served with its `boot` added (a decimal string, as in `rt`).
Polled = Mapping[tuple[int, int], dict[str, Any]]
#: Where a reader stands in one node's history: (boot, `next` of the last page).
Cursor = tuple[int, int]


def _page_int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WIRE_INT:
        raise BadHistoryPage(f"history page: {key!r} is {value!r}, not an integer 0..2^63-1")
    return value


def merge_page(
    polled: Polled, cursor: Cursor | None, doc: Any, *, incremental: bool
) -> tuple[dict[tuple[int, int], dict[str, Any]], Cursor] | None:
    """Merge one `/v1/history` answer `doc` into a reader's `polled` entries.

    `cursor` is where the reader stood (None: it never read this node);
    `incremental` says the page was asked with `since=` the cursor's `next`.
    Returns the merged entries (a new dict; `polled` is not changed) and the new
    cursor. Returns None when an incremental page comes from another process than
    the cursor's (a new `boot`): its `since` meant nothing there, so the reader
    reads the whole history again. Entries without an integer `seq` are skipped.

    Raises BadHistoryPage when `doc` is not a page: not an object, `entries`
    not a list, or `boot` / `next` not an integer 0..2^63-1 (missing counts as 0).
    """
    if not isinstance(doc, Mapping):
        raise BadHistoryPage(f"history page is {type(doc).__name__}, not an object")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise BadHistoryPage(f"history page: 'entries' is {type(entries).__name__}, not a list")
    boot = _page_int(doc, "boot")
    following = _page_int(doc, "next")
    if incremental and cursor is not None and boot != cursor[0]:
        return None
    merged = dict(polled)
    for entry in entries:
        if isinstance(entry, Mapping):
            seq = entry.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                merged[(boot, seq)] = {**entry, "boot": str(boot)}
    return merged, (boot, following)
