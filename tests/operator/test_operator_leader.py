"""The Elector against a fake API: a request that never answers is given up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from reactive_operator.kube import LeaseRecord
from reactive_operator.leader import Elector
from reactive_operator.main import lead


class HangingOnce:
    """A Lease API whose first `hangs` reads never answer (a dead connection)."""

    def __init__(self, hangs: int) -> None:
        self.hangs = hangs
        self.reads = 0
        self.record: LeaseRecord | None = None

    async def read_lease(self, ns: str, name: str) -> LeaseRecord | None:
        self.reads += 1
        if self.reads <= self.hangs:
            await asyncio.Event().wait()  # never set
        return self.record

    async def write_lease(self, ns: str, name: str, *, holder: str, **_: object) -> bool:
        self.record = LeaseRecord(
            holder=holder,
            renewed=datetime.now(UTC),
            duration_seconds=3,
            resource_version="1",
            transitions=0,
        )
        return True


async def test_a_standby_whose_request_hangs_still_takes_the_free_lease() -> None:
    kube = HangingOnce(hangs=2)
    elector = Elector(kube, namespace="ns", name="lease", identity="me", duration=3)  # type: ignore[arg-type]
    stop = asyncio.Event()
    # Each hung attempt is given up after a third of the lease (1 s), then retried.
    assert await asyncio.wait_for(elector.acquire(stop), timeout=10)
    assert kube.reads == 3
    assert kube.record is not None
    assert kube.record.holder == "me"


async def test_release_gives_up_on_a_request_that_hangs() -> None:
    kube = HangingOnce(hangs=0)
    elector = Elector(kube, namespace="ns", name="lease", identity="me", duration=3)  # type: ignore[arg-type]
    assert await elector.acquire(asyncio.Event())
    kube.hangs = kube.reads + 1  # the next read never answers
    await asyncio.wait_for(elector.release(), timeout=5)
    assert not elector.leading


# --- leading -------------------------------------------------------------------


class Acquires:
    """An elector that leads once `go` is set (or never: `stop` wins)."""

    def __init__(self) -> None:
        self.go = asyncio.Event()

    async def acquire(self, stop: asyncio.Event) -> bool:
        stopped = asyncio.ensure_future(stop.wait())
        going = asyncio.ensure_future(self.go.wait())
        await asyncio.wait({stopped, going}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        going.cancel()
        return self.go.is_set()


async def test_lead_waits_for_the_lease() -> None:
    elector, stop = Acquires(), asyncio.Event()
    leading = asyncio.create_task(lead(elector, stop))
    await asyncio.sleep(0)
    assert not leading.done()
    elector.go.set()  # the old leader is gone: the standby takes the Lease
    assert await leading is True


async def test_lead_gives_up_when_stopped_before_leading() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await lead(Acquires(), stop) is False


async def test_without_election_lead_returns_at_once() -> None:
    assert await lead(None, asyncio.Event()) is True
