"""Leader election through a coordination.k8s.io Lease (decision part is pure).

Only the replica holding the Lease runs kopf; the others wait in standby and
take over once the holder has not renewed for the lease duration. Renewal
happens every third of the duration; a leader that fails to renew in time
stops its operator, so two replicas never reconcile at once for longer than
one renewal period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from .kube import Kube, KubeError, LeaseRecord

log = logging.getLogger("reactive_operator.leader")


def may_take(record: LeaseRecord | None, identity: str, now: datetime) -> bool:
    """Whether `identity` may write the Lease now (create, renew, or take over)."""
    if record is None or record.holder in (None, "", identity):
        return True
    if record.renewed is None:
        return True
    return now >= record.renewed + timedelta(seconds=record.duration_seconds)


class Elector:
    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        name: str,
        identity: str,
        duration: float,
        owner_uid: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration = max(2, int(duration))
        self.clock = clock
        self.leading = False
        # The Lease is owned by this replica's pod when it runs in one (see config.pod_uid).
        self.owner_pod = None if owner_uid is None else (identity, owner_uid)

    @property
    def attempt_seconds(self) -> float:
        """How long one attempt (read, then write) may take: a third of the
        lease, so a renewal that hangs is given up while the lease still holds."""
        return self.duration / 3

    async def try_once(self) -> bool:
        """One attempt to acquire or renew; True if we hold the Lease afterwards.

        Raises KubeError when the API server refuses or does not answer within
        `attempt_seconds` (a standby whose request hangs on a dead connection
        would otherwise wait forever and never take over)."""
        try:
            async with asyncio.timeout(self.attempt_seconds):
                record = await self.kube.read_lease(self.namespace, self.name)
                now = self.clock()
                if not may_take(record, self.identity, now):
                    log.debug("lease held by %s, renewed %s", record and record.holder,
                              record and record.renewed)  # fmt: skip
                    return False
                return await self.kube.write_lease(
                    self.namespace,
                    self.name,
                    holder=self.identity,
                    duration_seconds=self.duration,
                    now=now,
                    previous=record,
                    owner_pod=self.owner_pod,
                )
        except TimeoutError as e:
            raise KubeError(0, f"no answer within {self.attempt_seconds:g}s") from e

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until we lead (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if await self.try_once():
                    self.leading = True
                    log.info(
                        "leading as %s (lease %s/%s)", self.identity, self.namespace, self.name
                    )
                    return True
            except KubeError as e:
                log.warning("lease %s/%s: %s", self.namespace, self.name, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.duration / 3)
        return False

    async def keep(self, stop: asyncio.Event, lost: Callable[[], Awaitable[None]]) -> None:
        """Renew until `stop`; call `lost` if renewal fails for a whole duration."""
        last_ok = self.clock()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.duration / 3)
                return
            except TimeoutError:
                pass
            try:
                ok = await self.try_once()
            except KubeError as e:
                log.warning("renewing lease: %s", e)
                ok = False
            if ok:
                last_ok = self.clock()
            elif self.clock() - last_ok >= timedelta(seconds=self.duration * 2 / 3) or (
                not ok and await self._taken()
            ):
                self.leading = False
                log.error("lost the lease %s/%s; stopping", self.namespace, self.name)
                await lost()
                return

    async def release(self) -> None:
        """Hand the Lease back on a clean shutdown, so a standby need not wait it out."""
        if not self.leading:
            return
        self.leading = False
        try:
            async with asyncio.timeout(self.attempt_seconds):
                record = await self.kube.read_lease(self.namespace, self.name)
                if record is not None and record.holder == self.identity:
                    await self.kube.write_lease(
                        self.namespace,
                        self.name,
                        holder="",
                        duration_seconds=self.duration,
                        now=self.clock(),
                        previous=record,
                        owner_pod=self.owner_pod,
                    )
        except (KubeError, TimeoutError) as e:
            log.warning("releasing lease: %s", e or "no answer")

    async def _taken(self) -> bool:
        try:
            record = await self.kube.read_lease(self.namespace, self.name)
        except KubeError:
            return False
        return record is not None and record.holder not in (None, self.identity)
