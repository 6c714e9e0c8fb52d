"""Where a node keeps its state: the `StateStore` interface and two stores.

A store keeps the state *text* (canonical JSON) and knows nothing of
behaviours: the node validates what it reads. Three implementations:
`MemoryStore` (tests, simulation), `FileStore` (local mode: one JSON file per
node, written atomically) and `PodStore` in `store_pod.py` (the pod's own
annotations; the only module that talks to the Kubernetes API).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import tempfile
from collections.abc import AsyncIterator
from typing import Protocol


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What a store holds now: the state text (None if never written) and,
    for the pod store, the operator-owned replica count."""

    raw: str | None
    replicas: int | None = None


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

    def __init__(self, raw: str | None = None, replicas: int | None = None) -> None:
        self.raw = raw
        self.replicas = replicas
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
        return Snapshot(self.raw, self.replicas)

    async def save(self, text: str) -> None:
        if self.fail_saves > 0:
            self.fail_saves -= 1
            raise StoreError("memory store told to fail")
        self.raw = text
        self.writes += 1

    def edit(self, raw: str | None = None, replicas: int | None = None) -> None:
        if raw is not None:
            self.raw = raw
        if replicas is not None:
            self.replicas = replicas
        self._events.put_nowait(Snapshot(self.raw, self.replicas))

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

    def _read(self) -> str | None:
        try:
            return self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    async def load(self) -> Snapshot:
        raw = await asyncio.to_thread(self._read)
        self._last = raw
        return Snapshot(raw)

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
            try:
                raw = await asyncio.to_thread(self._read)
            except OSError:
                continue
            if raw is not None and raw != self._last:
                self._last = raw
                yield Snapshot(raw)

    async def close(self) -> None:
        return None
