"""Where a node keeps its state: the `StateStore` interface and its stores.

A store keeps the state *text* (canonical JSON) and knows nothing of
behaviours: the node validates what it reads. Three implementations:
`MemoryStore` (tests, simulation), `FileStore` (local mode: one JSON file per
node, written atomically) and `PodStore` in `pod_store.py` (the pod's own
annotations, through the Kubernetes API client in `kube.py`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import tempfile
from collections.abc import AsyncIterator
from typing import Protocol

from ..core.contract import MAX_REPLICAS

#: A state file larger than this is not read (an annotation cannot be larger either).
MAX_STATE_FILE_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a store holds now: the state text (None if never written) and,
    for the pod store, the operator-owned replica count.

    A store never raises for what it *read*: a state it could not read as text
    comes as `raw=None` with `error` saying why, a replica count that is not one
    as `replicas=None` with `replicas_error`. The node reports both (`stateError`)
    and keeps its last good state; only a store it cannot reach at all raises."""

    raw: str | None
    replicas: int | None = None
    error: str | None = None
    replicas_error: str | None = None
    suspended: bool = False
    """The operator's suspended annotation says "true" (pod store only)."""
    inject: str | None = None
    """The operator's inject annotation as text, unchecked (pod store only; the
    node validates it like a round trip's state)."""


def parse_replicas(text: object) -> tuple[int | None, str | None]:
    """The replicas annotation as (count, None), or (None, why) for anything that is
    not a decimal count 1..MAX_REPLICAS; None (no annotation) is (None, None)."""
    if text is None:
        return None, None
    shown = repr(text)[:40]
    if not isinstance(text, str):
        return None, f"replicas annotation {shown} is not a string"
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 6):
        return None, f"replicas annotation {shown} is not a whole number"
    count = int(digits)
    if not 1 <= count <= MAX_REPLICAS:
        return None, f"replicas annotation {shown} is not within 1..{MAX_REPLICAS}"
    return count, None


class StoreError(Exception):
    """The state could not be persisted (the node answers 503 and keeps its state)."""


class StoreConflict(StoreError):
    """Someone else changed the stored object; `current` is what it holds now."""

    def __init__(self, current: Snapshot) -> None:
        super().__init__("the stored object changed since it was read")
        self.current = current


class StateStore(Protocol):
    """The interface the node uses; implementations must be safe to call from one task at a time."""

    async def load(self) -> Snapshot:
        """Read the current state text."""
        ...

    async def save(self, text: str) -> None:
        """Persist `text` durably, or raise `StoreConflict` / `StoreError`."""
        ...

    def watch(self) -> AsyncIterator[Snapshot]:
        """Changes made by others (a hand edit, the operator); runs until cancelled."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """State in memory. `edit()` simulates a change made by someone else."""

    def __init__(self, raw: str | None = None, replicas: int | str | None = None) -> None:
        self.raw = raw
        self.replicas = replicas
        """A count, or a string read like the pod store's replicas annotation."""
        self.suspended = False
        """What the pod store's suspended annotation would say."""
        self.writes = 0
        self.fail_saves = 0
        """Number of next saves that raise `StoreError` (for tests)."""
        self.fail_loads = 0
        """Number of next loads that raise `StoreError` (for tests)."""
        self._events: asyncio.Queue[Snapshot] = asyncio.Queue()

    async def load(self) -> Snapshot:
        if self.fail_loads > 0:
            self.fail_loads -= 1
            raise StoreError("memory store told to fail")
        return self._snapshot()

    def _snapshot(self) -> Snapshot:
        if isinstance(self.replicas, str):
            replicas, problem = parse_replicas(self.replicas)
            return Snapshot(self.raw, replicas, replicas_error=problem, suspended=self.suspended)
        return Snapshot(self.raw, self.replicas, suspended=self.suspended)

    async def save(self, text: str) -> None:
        if self.fail_saves > 0:
            self.fail_saves -= 1
            raise StoreError("memory store told to fail")
        self.raw = text
        self.writes += 1

    def edit(
        self,
        raw: str | None = None,
        replicas: int | str | None = None,
        suspended: bool | None = None,
    ) -> None:
        if raw is not None:
            self.raw = raw
        if replicas is not None:
            self.replicas = replicas
        if suspended is not None:
            self.suspended = suspended
        self._events.put_nowait(self._snapshot())

    async def watch(self) -> AsyncIterator[Snapshot]:
        while True:
            yield await self._events.get()

    async def close(self) -> None:
        return None


def write_atomically(path: pathlib.Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old or the new file, never a mix.

    Temp file in the same directory, fsync, rename over the target, fsync the
    directory so the rename itself survives a crash.
    """
    directory = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class _suppress_oserror:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        return exc_type is not None and issubclass(exc_type, OSError)


class FileStore:
    """One JSON file per node (local mode); hand edits are picked up by polling."""

    def __init__(self, path: pathlib.Path, *, poll_interval: float = 1.0) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._last: str | None = None

    def _read(self) -> Snapshot:
        """The file as text (bytes that are not UTF-8 as surrogate escapes, which
        the node refuses); an unreadable or oversized file is a Snapshot error."""
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_STATE_FILE_BYTES + 1)
        except FileNotFoundError:
            return Snapshot(None)
        except OSError as e:
            return Snapshot(None, error=f"cannot read {self.path}: {e.strerror or e}")
        if len(data) > MAX_STATE_FILE_BYTES:
            return Snapshot(None, error=f"{self.path} is over {MAX_STATE_FILE_BYTES} bytes")
        return Snapshot(data.decode("utf-8", "surrogateescape"))

    async def load(self) -> Snapshot:
        snapshot = await asyncio.to_thread(self._read)
        self._last = snapshot.raw if snapshot.error is None else snapshot.error
        return snapshot

    async def save(self, text: str) -> None:
        try:
            await asyncio.to_thread(self.path.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomically, self.path, text)
        except OSError as e:
            raise StoreError(f"cannot write {self.path}: {e}") from e
        self._last = text

    async def watch(self) -> AsyncIterator[Snapshot]:
        while True:
            await asyncio.sleep(self.poll_interval)
            snapshot = await asyncio.to_thread(self._read)
            seen = snapshot.raw if snapshot.error is None else snapshot.error
            if seen is not None and seen != self._last:
                self._last = seen
                yield snapshot

    async def close(self) -> None:
        return None
