"""The periodic pass over every indexed loop (replaces a kopf timer: no finalizer).

Every `resync_seconds`, each loop in kopf's loop index is reconciled like a
resume (without forcing the shared children) and its status merge-patched;
the pass sends its own events (`reconcile.send_events`). Loops run side by
side, at most `RESYNC_CONCURRENCY` at once; one that fails is logged and
counted and never stops the others. The pod-event handler runs the same pass
for one loop (`Resync.one`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from .kube import KubeError, NotFound
from .memo import LoopKey
from .reconcile import Deps, PodsByLoop, reconcile

#: Loops resynced at the same time by the background resync.
RESYNC_CONCURRENCY = 8
log = logging.getLogger("reactive_operator")

#: What the loop index gives (kopf.Index, or a plain mapping in tests).
LoopsByKey = Mapping[LoopKey, Iterable[Mapping[str, Any]]]


class Resync:
    def __init__(
        self,
        deps: Deps,
        loops: LoopsByKey,
        pods: PodsByLoop,
        *,
        concurrency: int = RESYNC_CONCURRENCY,
    ) -> None:
        self.deps = deps
        self.loops = loops
        self.pods = pods
        self.concurrency = concurrency

    async def one(self, key: LoopKey, body: Mapping[str, Any] | None = None) -> None:
        """The pass over one loop (the newest one indexed, unless `body` is
        given) and its status write; never raises (but for cancellation)."""
        deps = self.deps
        if body is None:
            body = next(iter(self.loops.get(key, [])), None)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return
        ns, name = key
        try:
            changes, _events = await reconcile(deps, body, self.pods, force_ensure=False)
            if key not in self.loops:
                return  # deleted meanwhile: nothing to write
            if changes:
                await deps.kube.patch_loop_status(ns, name, changes)
        except asyncio.CancelledError:
            raise
        except NotFound:
            pass  # deleted meanwhile
        except KubeError as e:
            log.warning("resync of %s/%s: Kubernetes API: %s", ns, name, e)
        except Exception:
            log.exception("resync of %s/%s failed", ns, name)
        finally:
            if key not in self.loops:
                deps.forget(key)  # a pass that raced with the deletion

    async def all(self) -> None:
        gate = asyncio.Semaphore(self.concurrency)

        async def one(key: LoopKey) -> None:
            async with gate:
                await self.one(key)

        await asyncio.gather(*(one(k) for k in list(self.loops)))

    async def forever(self) -> None:
        """A pass every `resync_seconds`, counted from the start of the previous
        one (at once when it overran), so a change a node reports shows in the
        status within one period plus one pass (bench/README.md, "Operator at
        scale": sleeping *after* each pass let that reach 2.3 periods)."""
        period = self.deps.cfg.resync_seconds
        loop = asyncio.get_running_loop()
        due = loop.time() + period
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due + period, loop.time())
            try:
                await self.all()
            except asyncio.CancelledError:
                raise
            except Exception:  # `one` isolates loops; this is a last resort
                log.exception("resync pass failed")
