"""The node: its state, the responder side and the initiator side of a round trip.

HTTP-free: `app.py` turns requests into `Node.serve_roundtrip` calls and runs
`Node.run` as the loop; the network call itself is injected as a `Transport`
so the loop logic is the same for aiohttp and for tests.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from . import contract
from .backoff import Backoff
from .behaviors import Behavior, Context, InvalidState, Settings, State, peer_hint
from .codec import (
    BadBody,
    RoundTripRequest,
    decode_request,
    decode_response,
    decode_state,
    encode,
    encode_state,
    sign,
    verify,
)
from .config import NodeConfig
from .metrics import NodeMetrics
from .store import Snapshot, StateStore, StoreConflict, StoreError
from .topology import PeerPicker

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES: Final = 5
MAX_EDGES: Final = 8
MAX_SENDERS: Final = 1024
ERROR_DETAIL_CHARS: Final = 300

#: `requests_served` outcome of each reply status (other 4xx: bad_request).
_OUTCOMES: Final = {
    200: "ok",
    401: "unauthorized",
    409: "stale",
    413: "too_large",
    503: "unavailable",
}


@dataclasses.dataclass(frozen=True)
class Reply:
    """What the responder answers: an HTTP status and a JSON body."""

    status: int
    body: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What came back from a peer: a status and the raw body, or a wait reason."""

    status: int | None = None
    body: bytes = b""
    failure: str | None = None
    """A wait reason from `contract.WAIT_REASONS` when no HTTP answer arrived."""


#: Sends (url, body, headers) and reports what happened; never raises.
Transport = Callable[[str, bytes, dict[str, str]], Awaitable[Outcome]]
#: Told (event, epoch) when this node acquires or releases the token.
TokenListener = Callable[[str, list[int]], None]


def _error(status: int, error: str, detail: str) -> Reply:
    return Reply(status, {"error": error, "detail": detail[:ERROR_DETAIL_CHARS]})


class Node:
    """One reactive node."""

    def __init__(
        self,
        config: NodeConfig,
        behavior: Behavior,
        store: StateStore,
        metrics: NodeMetrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        token_listener: TokenListener | None = None,
    ) -> None:
        self.config = config
        self.behavior = behavior
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.token_listener = token_listener
        self.boot = time.time_ns()
        self.started_at = clock()
        self.seq = 0
        self.settings = Settings(
            interval=config.interval,
            token_hold=config.token_hold,
            token_loss_timeout=config.token_loss_timeout,
            token_stagger=2 * config.interval,
        )
        self.state: State | None = None
        self.state_error: str | None = None
        self.replicas = config.replicas
        self.phase = "starting"
        self.loops = 0
        self.waits = 0
        self.last_wait_reason: str | None = None
        self.last_loop_at: float | None = None
        self.edges: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._seen: collections.OrderedDict[str, tuple[int, int]] = collections.OrderedDict()
        self._stored_text: str | None = None
        self._lock = asyncio.Lock()
        self._key = config.hmac_bytes()
        self._headers = {"Content-Type": "application/json"}
        # Resolved once: the optional `peer_hint` of the behaviour (see behaviors.peer_hint).
        self._hints = getattr(behavior, "peer_hint", None) is not None
        self._targets: dict[int, tuple[str, str]] = {}
        rng = rng or random.Random()
        self.picker = PeerPicker(
            config.topology, config.ordinal, ring_skip=config.ring_skip, rng=rng
        )
        self.backoff = Backoff(config.interval, config.max_backoff, rng)

    # --- state -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state is not None

    def context(self, peer: int | None = None, *, now: float | None = None) -> Context:
        return Context(
            ordinal=self.config.ordinal,
            replicas=self.replicas,
            now=self.clock() if now is None else now,
            started_at=self.started_at,
            settings=self.settings,
            peer=peer,
        )

    async def start(self) -> None:
        """Load the stored state (or start from the behaviour's initial state)."""
        snapshot = await self.store.load()
        self.adopt(snapshot)
        if self.state is None:
            self._set_state(self.behavior.initial(self.context()))

    def adopt(self, snapshot: Snapshot) -> None:
        """Take in what the store holds now: the replica count and, if someone
        else changed it, the state text, validated; an invalid text keeps the
        last good state and is reported."""
        if snapshot.replicas is not None and snapshot.replicas >= 1:
            self.replicas = snapshot.replicas
        raw = snapshot.raw
        if raw is None or raw == self._stored_text:
            return
        self._stored_text = raw
        try:
            state = self.behavior.validate(decode_state(raw))
        except (ValueError, InvalidState) as e:
            self.state_error = f"invalid stored state: {e}"[:ERROR_DETAIL_CHARS]
            self.metrics.invalid.inc()
            log.warning(
                "node %s: ignoring invalid stored state, keeping the last good one: %s",
                self.config.node,
                self.state_error,
            )
            return
        self.state_error = None
        self._set_state(state)

    def _set_state(self, new: State) -> None:
        old = self.state
        self.state = new
        summary = self.behavior.summary(new)
        if summary["generation"] is not None:
            self.metrics.generation.set(summary["generation"])
        if summary["holding"] is not None:
            self.metrics.holder.set(1 if summary["holding"] else 0)
        if summary["epoch"] is not None:
            self.metrics.epoch.set(summary["epoch"][0])
        if old is not None and self.token_listener is not None:
            before = self.behavior.summary(old)
            was = (bool(before["holding"]), before["epoch"])
            now = (bool(summary["holding"]), summary["epoch"])
            if was != now:
                if was[0] and was[1] is not None:
                    self.token_listener("release", was[1])
                if now[0] and now[1] is not None:
                    self.token_listener("acquire", now[1])

    async def _update(self, decide: Callable[[State], State]) -> State:
        """Decide the next state and persist it if it changed (caller holds the lock).

        On a conflict the store has re-read the object: adopt what it holds and
        decide again, never overwrite blindly."""
        for _ in range(MAX_CONFLICT_RETRIES):
            current = self.state
            assert current is not None
            new = decide(current)
            if new == current:
                return current
            text = encode_state(new)
            try:
                await self.store.save(text)
            except StoreConflict as e:
                self.metrics.writes["conflict"].inc()
                self.adopt(e.current)
                continue
            except StoreError:
                self.metrics.writes["error"].inc()
                raise
            self.metrics.writes["ok"].inc()
            self._stored_text = text
            self.state_error = None
            self._set_state(new)
            return new
        raise StoreError(f"gave up after {MAX_CONFLICT_RETRIES} write conflicts")

    # --- responder -----------------------------------------------------------
    async def serve_roundtrip(self, body: bytes, signature: str | None) -> Reply:
        """Handle one `POST /v1/roundtrip` body (already size-checked)."""
        reply = await self._serve(body, signature)
        if reply.status == 200:
            outcome = "ok"
        elif reply.body.get("error") == "wrong_loop":
            outcome = "wrong_loop"
        else:
            outcome = _OUTCOMES.get(reply.status, "bad_request")
        self.metrics.requests[outcome].inc()
        return reply

    async def _serve(self, body: bytes, signature: str | None) -> Reply:
        if self.state is None:
            return _error(503, "unavailable", "state not loaded yet")
        if self._key is not None and not verify(self._key, body, signature):
            return _error(401, "unauthorized", f"missing or bad {contract.SIGNATURE_HEADER}")
        try:
            req = decode_request(body)
        except BadBody as e:
            return _error(400, "bad_request", str(e))
        if req.loop != self.config.loop:
            return _error(400, "wrong_loop", f"this node is in loop {self.config.loop!r}")
        try:
            theirs = self.behavior.validate(req.state)
        except InvalidState as e:
            return _error(400, "bad_request", f"invalid state: {e}")
        async with self._lock:
            newest = self._seen.get(req.sender)
            if newest is not None and (req.boot, req.seq) <= newest:
                return _error(
                    409, "stale", f"not newer than (boot, seq) {list(newest)} seen from sender"
                )
            self._seen[req.sender] = (req.boot, req.seq)
            self._seen.move_to_end(req.sender)
            while len(self._seen) > MAX_SENDERS:
                self._seen.popitem(last=False)
            try:
                new = await self._update(
                    lambda mine: self.behavior.respond(mine, theirs, self.context())
                )
            except StoreError as e:
                return _error(503, "unavailable", f"cannot persist state: {e}")
        return Reply(200, {"from": self.config.node, "state": new})

    # --- initiator -----------------------------------------------------------
    def _record(self, peer: str | None, outcome: str) -> None:
        now = self.clock()
        if outcome == "ok":
            self.loops += 1
            self.last_loop_at = now
            self.metrics.loops.inc()
            self.metrics.last_loop.set(now)
            self.phase = "looping"
        else:
            self.waits += 1
            self.last_wait_reason = outcome
            self.metrics.waits[outcome].inc()
            self.phase = "waiting"
        self.metrics.set_phase(self.phase)
        if peer is not None:
            self.edges[peer] = (outcome, now)
            self.edges.move_to_end(peer)
            while len(self.edges) > MAX_EDGES:
                self.edges.popitem(last=False)

    def _target(self, ordinal: int) -> tuple[str, str] | None:
        """(node name, round-trip URL) of the peer with `ordinal`, or None if unknown."""
        target = self._targets.get(ordinal)
        if target is None:
            address = self.config.peer_address(ordinal)
            if address is None:
                return None
            target = (self.config.node_name(ordinal), f"http://{address}{contract.ROUNDTRIP_PATH}")
            if len(self._targets) < MAX_SENDERS:  # the config is frozen; bounded all the same
                self._targets[ordinal] = target
        return target

    async def step(self, transport: Transport) -> bool:
        """One round trip to the next peer; returns whether it succeeded."""
        assert self.state is not None
        now = self.clock()
        peer = None
        if self._hints:
            peer = peer_hint(self.behavior, self.state, self.context(now=now))
        hinted = peer is not None
        if peer is None:
            peer = self.picker.pick(self.replicas)
        target = None if peer is None else self._target(peer)
        if peer is None or target is None:
            self._record(None, "no_peer")
            return False
        peer_name, url = target
        ctx = self.context(peer, now=now)
        try:
            async with self._lock:
                mine = await self._update(lambda m: self.behavior.tick(m, ctx))
        except StoreError as e:
            log.warning("node %s: cannot persist a time-driven change: %s", self.config.node, e)
            mine = self.state
        self.seq += 1
        body = encode(
            RoundTripRequest(self.config.loop, self.config.node, self.boot, self.seq, mine)
        )
        headers = self._headers
        if self._key is not None:
            headers = {**headers, contract.SIGNATURE_HEADER: sign(self._key, body)}
        started = time.perf_counter()
        result = await transport(url, body, headers)
        self.metrics.roundtrip.observe(time.perf_counter() - started)
        reason = self._judge(result)
        theirs: State | None = None
        if reason is None:
            try:
                theirs = self.behavior.validate(decode_response(result.body).state)
            except ValueError as e:  # BadBody, InvalidState, or a custom behaviour's own
                log.info("node %s: bad answer from %s: %s", self.config.node, peer_name, e)
                reason = "rejected"
        if not hinted:
            self.picker.record(reason is None)
        if theirs is None:
            self._record(peer_name, reason or "rejected")
            return False
        answered = theirs
        try:
            async with self._lock:
                await self._update(lambda m: self.behavior.react(m, answered, self.context(peer)))
        except StoreError as e:
            log.warning("node %s: cannot persist after a round trip: %s", self.config.node, e)
        self._record(peer_name, "ok")
        return True

    @staticmethod
    def _judge(result: Outcome) -> str | None:
        """The wait reason for an outcome, or None if it is a usable 200."""
        if result.failure is not None:
            return result.failure
        status = result.status or 0
        if status == 200:
            return None
        if status == 409:
            return "stale"
        if status >= 500:
            return "server_error"
        return "rejected"

    async def run(self, transport: Transport) -> None:
        """The loop: round trip, then wait an interval, or back off after a failure."""
        while True:
            try:
                ok = await self.step(transport)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything a peer or store does
                log.exception("node %s: round trip step failed", self.config.node)
                ok = False
            if ok:
                self.backoff.reset()
                delay = self.config.interval
            else:
                delay = self.backoff.next_delay()
            await asyncio.sleep(delay)

    # --- views -----------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """The `/v1/state` document (the operator and the web view read it)."""
        state = self.state
        if state is None:
            summary: dict[str, Any] = {
                "generation": None,
                "target": None,
                "holding": None,
                "epoch": None,
            }
        else:
            summary = dict(self.behavior.summary(state))
        return {
            "loop": self.config.loop,
            "node": self.config.node,
            "ordinal": self.config.ordinal,
            "behavior": self.behavior.name,
            "topology": self.config.topology,
            "boot": self.boot,
            "ready": self.ready,
            "phase": self.phase,
            "loops": self.loops,
            "waits": self.waits,
            "lastWaitReason": self.last_wait_reason,
            "lastLoopAt": self.last_loop_at,
            "replicas": self.replicas,
            "state": state if state is not None else {},
            "stateError": self.state_error,
            "summary": summary,
            "edges": [{"to": to, "outcome": o, "at": at} for to, (o, at) in self.edges.items()],
        }
