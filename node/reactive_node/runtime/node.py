"""The node's async shell around the protocol core: the store, the network, the
metrics, the token listener and the decision file.

Every rule of a round trip is in `protocol.NodeCore` (pure, shared with the
simulation); this module carries out its effects: it persists decisions (with
the history tail, adopting what the store holds on a conflict), sends bodies
through the injected `Transport` (signed when the loop has a key), and keeps
metrics, the acting holder's timer and the decision file up to date.
HTTP-free: `app.py` turns requests into `Node.serve_roundtrip` calls and runs
`Node.run` as the loop.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final, TypeVar

import msgspec

from ..core import auth, contract, history, protocol
from ..core.backoff import Backoff
from ..core.behaviors import Behavior, Context, Settings, State, Summary, as_injection
from ..core.codec import (
    PROTOCOL_VERSION,
    BadBody,
    ProtocolInfo,
    StateDocument,
    StateEdge,
    StateSummary,
    decode_state,
    encode,
    encode_state,
)
from ..core.contract import MAX_REPLICAS, MAX_STATE_INT
from ..core.decision import decision_of
from ..core.protocol import (
    ERROR_DETAIL_CHARS,
    MAX_EDGES,
    Outcome,
    Reply,
    answer_version,
    error_reply,
    version_refused,
)
from ..core.topology import PeerPicker
from .config import NodeConfig
from .decision import DecisionFile
from .keyfiles import KeyFiles
from .metrics import NodeMetrics
from .store import Snapshot, StateStore, StoreConflict, StoreError

__all__ = [
    "ERROR_DETAIL_CHARS",
    "MAX_EDGES",
    "MAX_SENDERS",
    "Node",
    "Outcome",
    "Reply",
    "TokenListener",
    "Transport",
    "answer_version",
    "version_refused",
]

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES: Final = 5
MAX_SENDERS: Final = protocol.MAX_SENDERS
T = TypeVar("T")

#: `requests_served` outcome of each reply status (other 4xx: bad_request).
_OUTCOMES: Final = {
    200: "ok",
    401: "unauthorized",
    409: "stale",
    413: "too_large",
    503: "unavailable",
}


#: Sends (url, body, headers) and reports what happened; never raises.
Transport = Callable[[str, bytes, dict[str, str]], Awaitable[Outcome]]
#: Told (event, epoch) when this node acquires or releases the token; returns
#: the call it started in the background (a holder hands the token on only once
#: the call about its acquisition is done), or None when it is done already.
TokenListener = Callable[[str, list[int]], "asyncio.Future[Any] | None"]


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
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        token_listener: TokenListener | None = None,
        keys: KeyFiles | None = None,
        decision: DecisionFile | None = None,
    ) -> None:
        self.config = config
        self.behavior = behavior
        self.decision = decision
        """The decision file the node keeps for its sidecars (docs/node.md), if any."""
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.monotonic = monotonic
        """The clock of the token lease: never stepped, keeps running while paused."""
        self.token_listener = token_listener
        self.settings = Settings(
            interval=config.interval,
            token_hold=config.token_hold,
            token_loss_timeout=config.token_loss_timeout,
            token_stagger=2 * config.interval,
            token_lease=config.lease,
        )
        rng = rng or random.Random()
        self.core = protocol.NodeCore(
            behavior,
            self.settings,
            loop=config.loop,
            name=config.node,
            ordinal=config.ordinal,
            replicas=config.replicas,
            boot=time.time_ns(),
            picker=PeerPicker(config.topology, config.ordinal, ring_skip=config.ring_skip, rng=rng),
            backoff=Backoff(config.interval, config.max_backoff, rng),
            clock=clock,
            monotonic=monotonic,
            peer_name=self._peer_name,
            # A process killed mid-call: its acquire may still reach the webhook.
            tell_timeout=contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS if config.token_webhook else 0.0,
        )
        """Every rule of a round trip, and the state they keep (`protocol.NodeCore`)."""
        self.started_at = self.core.started_at
        self.boot = self.core.boot
        self.picker = self.core.picker
        self.backoff = self.core.backoff
        self.lease = self.core.lease
        """The token's lease and regeneration quorum (protocol core, in memory)."""
        self.history = self.core.history
        """This node's decisions and wait buckets (bounded, in memory; a tail persisted)."""
        self.state_error: str | None = None
        """Why the stored state was not adopted (unreadable, invalid), while it is not."""
        self.replicas_error: str | None = None
        """Why the stored replica count was not adopted, while it is not."""
        self.injection_error: str | None = None
        """Why the last injected target (pod annotation) was refused (`take_injection`)."""
        self._injection_text: str | None = None
        self._injection_generation: int | None = None
        self.suspended = False
        """The operator suspended the loop (pod annotation): start no round trip."""
        self._expiry: asyncio.TimerHandle | None = None
        self._stored_text: str | None = None
        self._lock = asyncio.Lock()
        self.keys = keys
        """The keyring's files when round trips are signed (`config.signed`), else None."""
        if config.signed and keys is None:
            raise ValueError("a node with an HMAC key file needs its KeyFiles")
        self._verifier = auth.Verifier(config.node, not_before=self.started_at)
        self._key_error: str | None = None
        self._targets: dict[int, tuple[str, str]] = {}

    # --- what the core holds -------------------------------------------------
    @property
    def state(self) -> State | None:
        return self.core.state

    @state.setter
    def state(self, value: State | None) -> None:
        """Replace the state in memory only (tests); `_set_state` is the node's way."""
        self.core.state = value

    @property
    def replicas(self) -> int:
        return self.core.replicas

    @replicas.setter
    def replicas(self, value: int) -> None:
        self.core.replicas = value

    @property
    def phase(self) -> str:
        return self.core.tally.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self.core.tally.phase = value

    @property
    def loops(self) -> int:
        return self.core.tally.loops

    @property
    def waits(self) -> int:
        return self.core.tally.waits

    @property
    def last_wait_reason(self) -> str | None:
        return self.core.tally.last_wait_reason

    @property
    def last_loop_at(self) -> float | None:
        return self.core.tally.last_loop_at

    @property
    def edges(self) -> collections.OrderedDict[str, tuple[str, float]]:
        return self.core.tally.edges

    @property
    def seq(self) -> int:
        return self.core.seq

    # --- state -------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.state is not None

    def context(self, peer: int | None = None, *, now: float | None = None) -> Context:
        return self.core.context(peer, now=now)

    async def start(self) -> None:
        """Load the stored state (or start from the behaviour's initial state)."""
        snapshot = await self.store.load()
        self.adopt(snapshot)
        if self.state is None:
            self._set_state(self.behavior.initial(self.context()))
        self.core.started()

    def adopt(self, snapshot: Snapshot) -> None:
        """Take in what the store holds now: the replica count and, if someone
        else changed it, the state text, validated. Whatever the store holds,
        this never raises: a state that cannot be read or is invalid keeps the
        last good state (at start: the initial one, which peers then update)
        and is reported as `stateError`; a bad replica count keeps the last one."""
        if snapshot.replicas_error is not None:
            if snapshot.replicas_error != self.replicas_error:
                self.metrics.invalid.inc()
                log.warning(
                    "node %s: %s; keeping %d replicas",
                    self.config.node,
                    snapshot.replicas_error,
                    self.replicas,
                )
            self.replicas_error = snapshot.replicas_error[:ERROR_DETAIL_CHARS]
        else:
            self.replicas_error = None
            if snapshot.replicas is not None and 1 <= snapshot.replicas <= MAX_REPLICAS:
                self.replicas = snapshot.replicas
        if snapshot.suspended != self.suspended:
            log.info(
                "node %s: %s", self.config.node, "suspended" if snapshot.suspended else "resumed"
            )
        self.suspended = snapshot.suspended
        if snapshot.error is not None:
            self._stored_text = None  # read the same text again once it is readable
            self._invalid(f"cannot read the stored state: {snapshot.error}")
            return
        raw = snapshot.raw
        if raw is None or raw == self._stored_text:
            return
        self._stored_text = raw
        try:
            stored, tail = history.split_stored(decode_state(raw))
            state = self.behavior.validate(stored)
        except Exception as e:  # BadBody, InvalidState, or a custom behaviour's own error
            self._invalid(f"invalid stored state: {e}")
            return
        self.state_error = None
        if self.state is None:
            self.history.restore(tail)  # on start: the tail persisted before
        elif state != self.state:
            summary = self.behavior.summary(state)
            self.history.edit(
                self.clock(), {"generation": summary["generation"], "epoch": summary["epoch"]}
            )
        self._set_state(state)

    def _invalid(self, problem: str) -> None:
        self.state_error = problem[:ERROR_DETAIL_CHARS]
        self.metrics.invalid.inc()
        log.warning("node %s: %s; keeping the last good state", self.config.node, self.state_error)

    def _set_state(self, new: State) -> None:
        self.core.set_state(new)
        summary = self.behavior.summary(new)
        if summary["generation"] is not None:
            self.metrics.generation.set(summary["generation"])
        if summary["epoch"] is not None:
            self.metrics.epoch.set(summary["epoch"][0])
        if self.lease.enabled:
            self.refresh_acting()  # publishes the decision
        else:
            if summary["holding"] is not None:
                self.metrics.holder.set(1 if summary["holding"] else 0)
            self.publish_decision(summary)

    def publish_decision(self, summary: Summary | None = None) -> None:
        """Write the decision file if the decision changed (docs/node.md)."""
        if self.decision is None or self.state is None:
            return
        if summary is None:
            summary = self.behavior.summary(self.state)
        acting = self.core.acting
        self.decision.publish(
            decision_of(self.behavior.name, summary, None if acting is None else list(acting))
        )

    def _told(self, epoch: protocol.Epoch, _call: asyncio.Future[Any]) -> None:
        self.lease.told(epoch)

    def refresh_acting(self) -> None:
        """Re-check the token lease now and tell the listener what changed.

        Called after every change of state or lease, and by a timer when the
        lease runs out. The lease is checked right before each listener call,
        on the monotonic clock: a process paused past its lease finds it
        lapsed here and releases instead of acting on an old belief."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.state is None or not self.lease.enabled:
            return
        for event, epoch in self.core.refresh():
            if self.token_listener is None:
                continue
            call = self.token_listener(event, epoch)
            if event == "acquire" and call is not None and not call.done():
                told = (int(epoch[0]), int(epoch[1]))
                self.lease.tell(told)
                call.add_done_callback(functools.partial(self._told, told))
        self.metrics.holder.set(0 if self.core.acting is None else 1)
        self.publish_decision()
        end = self.core.lease_end()
        if end is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        delay = max(0.0, end - self.monotonic()) + 0.001
        self._expiry = loop.call_later(delay, self.refresh_acting)

    async def _update(
        self,
        decide: Callable[[State], State],
        justify: Callable[[State], history.RoundTrip | None] | None = None,
    ) -> State:
        """Decide the next state and persist it if it changed (caller holds the lock).

        `justify(new)` names the round trip the decision rests on (default: the
        newest one); the decisions the change shows are recorded in the history,
        and its tail is persisted with the state (only here: a write that happens
        anyway). On a conflict the store has re-read the object: adopt what it
        holds and decide again, never overwrite blindly."""
        for _ in range(MAX_CONFLICT_RETRIES):
            current = self.state
            assert current is not None
            new = decide(current)
            if new == current:
                return current
            found = history.state_decisions(
                current, new, self.behavior.summary(current), self.behavior.summary(new)
            )
            rt = self.history.last if justify is None else justify(new)
            at = self.clock()
            pending = [
                {"at": at, "kind": kind, **details, "rt": None if rt is None else rt.to_json()}
                for kind, details in found
            ]
            text = encode_state(history.with_tail(new, self.history.tail(pending)))
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
            if rt is not None and justify is not None:
                self.history.last = rt
            for kind, details in found:
                self.history.decision(kind, at, rt, details)
            self._set_state(new)
            return new
        raise StoreError(f"gave up after {MAX_CONFLICT_RETRIES} write conflicts")

    # --- injected targets ----------------------------------------------------
    async def take_injection(self, snapshot: Snapshot) -> None:
        """Merge the target the operator wrote to its inject annotation
        (`contract.INJECT_ANNOTATION`; the pod store hands it on unchecked).

        An input, like `set-target`, not a decision taken on a peer's answer:
        checked exactly like a round trip's state (size, JSON, number bounds,
        nesting, then the behaviour's `validate`, or `as_injection` for a
        behaviour that takes a target), merged as a responder merges a received
        state (`respond`, or `inject`) and persisted; the loop spreads it. Each
        annotation text is taken once per process (again after a restart, which
        merging makes harmless; a target taker skips an injection whose
        generation its state already holds). A refused one keeps the state and
        is reported as `stateError` until the node holds a newer generation. A
        store that cannot be written raises StoreError; the text is then taken
        again from the next snapshot (the watch re-reads the pod)."""
        raw = snapshot.inject
        if raw is None or raw == self._injection_text or self.state is None:
            return
        self._injection_text = raw
        self.injection_error = self._injection_generation = None
        taker = self.core.target_taker
        value: Any = None
        try:
            if len(raw.encode("utf-8", "surrogateescape")) > contract.MAX_BODY_BYTES:
                raise BadBody(f"over {contract.MAX_BODY_BYTES} bytes, the limit of a round trip")
            value = decode_state(raw)
            if not isinstance(value, dict):
                raise BadBody(f"Expected `object`, got `{type(value).__name__}`")
            if taker is not None:
                injection = as_injection(value, MAX_STATE_INT)
                theirs: State = {}
            else:
                theirs = self.behavior.validate(value)
        except Exception as e:  # BadBody, InvalidState, or a custom behaviour's own error
            generation = value.get("generation") if isinstance(value, dict) else None
            self._refuse_injection(f"invalid injected target: {e}", generation)
            return
        if taker is not None:
            held = self.behavior.summary(self.state)["generation"]
            if held is not None and held >= injection["generation"]:
                return  # already holds it, or newer (a stale annotation after a restart)
            target_taker = taker

            def decide(mine: State) -> State:
                return self.behavior.validate(target_taker.inject(mine, injection, self.context()))

        else:

            def decide(mine: State) -> State:
                return self.behavior.respond(mine, theirs, self.context())

        async with self._lock:
            try:
                # No round trip justifies it: the history's entry names none (`rt` null).
                new = await self._update(decide, lambda _new: None)
            except StoreError:
                self._injection_text = None
                raise
            except Exception as e:  # `inject` refused the target (InvalidState) or failed
                self._refuse_injection(f"invalid injected target: {e}", value.get("generation"))
                return
        log.info(
            "node %s: took the injected target; generation now %s",
            self.config.node,
            self.behavior.summary(new)["generation"],
        )

    def _refuse_injection(self, problem: str, generation: object) -> None:
        self.injection_error = problem[:ERROR_DETAIL_CHARS]
        self._injection_generation = generation if type(generation) is int else None
        self.metrics.invalid.inc()
        log.warning("node %s: %s; keeping its state", self.config.node, self.injection_error)

    def injection_problem(self) -> str | None:
        """`injection_error` while it matters: until the node holds the refused
        injection's generation or a newer one (the loop moved past it)."""
        if self.injection_error is None or self.state is None:
            return self.injection_error
        held = self.behavior.summary(self.state)["generation"]
        refused = self._injection_generation
        if held is not None and refused is not None and held >= refused:
            return None
        return self.injection_error

    # --- responder -----------------------------------------------------------
    def refresh_keys(self) -> None:
        """Re-read the key files if they changed (called once per interval)."""
        if self.keys is None:
            return
        if self.keys.refresh():
            log.info("node %s: HMAC keys now %s", self.config.node, self.keys.current)
        if self.keys.error != self._key_error:
            self._key_error = self.keys.error
            if self.keys.error is not None:
                log.warning(
                    "node %s: %s; keeping keys %s",
                    self.config.node,
                    self.keys.error,
                    self.keys.current.ids,
                )

    async def serve_roundtrip(
        self,
        body: bytes,
        signature: str | None,
        peer: str | None = None,
        *,
        method: str = "POST",
        path: str = contract.ROUNDTRIP_PATH,
        protocol: str | None = None,
    ) -> Reply:
        """Handle one `POST /v1/roundtrip` body (already size-checked) that came
        from the network address `peer` (None if unknown); `protocol` is the
        `contract.PROTOCOL_HEADER` of the request."""
        reply = await self._serve(body, signature, peer, method, path, protocol)
        if reply.status == 200:
            outcome = "ok"
        elif reply.body.get("error") == "wrong_loop":
            outcome = "wrong_loop"
        else:
            outcome = _OUTCOMES.get(reply.status, "bad_request")
        self.metrics.requests[outcome].inc()
        return reply

    async def _serve(
        self,
        body: bytes,
        signature: str | None,
        peer: str | None,
        method: str,
        path: str,
        protocol: str | None = None,
    ) -> Reply:
        if self.state is None:
            return error_reply(503, "unavailable", "state not loaded yet")
        signed: auth.Signature | None = None
        if self.keys is not None:
            try:
                signed = self._verifier.check(
                    self.keys.current,
                    signature,
                    body=body,
                    now=self.clock(),
                    method=method,
                    path=path,
                )
            except auth.Unauthorized as e:
                return error_reply(401, "unauthorized", str(e))
            except auth.ReplayCacheFull as e:
                return error_reply(503, "unavailable", str(e))
        served = self.core.serve(
            body,
            signer=None if signed is None else signed.sender,
            address=peer,
            header=protocol,
        )
        async with self._lock:
            return await self._drive(served, None, locked=True)

    # --- initiator -----------------------------------------------------------
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

    def _peer_name(self, ordinal: int) -> str | None:
        target = self._target(ordinal)
        return None if target is None else target[0]

    async def step(self, transport: Transport) -> bool:
        """One round trip to the next peer; returns whether it succeeded."""
        assert self.state is not None
        return await self._drive(self.core.initiate(), transport, locked=False)

    async def leave(self, transport: Transport) -> bool:
        """The process is stopping: an acting holder hands the token on in one
        last round trip (`protocol.NodeCore.leave`); anyone else does nothing."""
        if self.state is None:
            return False
        return await self._drive(self.core.leave(), transport, locked=False)

    async def _drive(
        self,
        steps: Generator[protocol.Effect, Any, T],
        transport: Transport | None,
        *,
        locked: bool,
    ) -> T:
        """Carry out the core's effects until it returns (`protocol.NodeCore`).

        `locked`: the caller holds the state lock (the responder, from its
        stale check until it answers); else each `Persist` takes it."""
        value: Any = None
        error: Exception | None = None
        while True:
            try:
                effect = steps.send(value) if error is None else steps.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            value, error = None, None
            if isinstance(effect, protocol.Persist):
                try:
                    if locked:
                        value = await self._update(effect.decide, effect.justify)
                    else:
                        async with self._lock:
                            value = await self._update(effect.decide, effect.justify)
                except StoreError as e:
                    error = protocol.NotPersisted(str(e))
                except Exception as e:  # a behaviour's own error: the core decides
                    error = e
            elif isinstance(effect, protocol.Send):
                assert transport is not None
                value = await self._send(transport, effect.request)
            elif isinstance(effect, protocol.Refresh):
                self.refresh_acting()
            else:
                self._counted(effect)

    async def _send(self, transport: Transport, request: protocol.Request) -> Outcome:
        target = self._target(request.peer)
        assert target is not None  # the core asked for its name first
        headers = self.core.headers
        if self.keys is not None:
            header = auth.sign(
                self.keys.current,
                sender=self.config.node,
                recipient=request.name,
                body=request.body,
                now=self.clock(),
            )
            headers = {**headers, contract.SIGNATURE_HEADER: header}
        started = time.perf_counter()
        outcome = await transport(target[1], request.body, headers)
        self.metrics.roundtrip.observe(time.perf_counter() - started)
        return outcome

    def _counted(self, counted: protocol.Counted) -> None:
        if counted.outcome == "ok":
            self.metrics.loops.inc()
            self.metrics.last_loop.set(counted.at)
        else:
            self.metrics.waits[counted.outcome].inc()
        self.metrics.set_phase(self.phase)

    async def run(self, transport: Transport) -> None:
        """The loop: round trip, then wait an interval, or back off after a failure."""
        while True:
            if self.suspended:
                # Suspended: no round trip, and no wait counted (it is no failure);
                # the node still answers. Resuming starts from the state it holds.
                self.phase = "suspended"
                self.metrics.set_phase(self.phase)
                self.backoff.reset()
                await asyncio.sleep(self.config.interval)
                continue
            try:
                ok = await self.step(transport)
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must survive anything a peer or store does
                log.exception("node %s: round trip step failed", self.config.node)
                ok = False
            await asyncio.sleep(self.core.next_delay(ok))

    # --- views -----------------------------------------------------------------
    def history_document(self, since: int | None, since_time: float | None) -> dict[str, Any]:
        """The `/v1/history` document: the entries changed after `since` (a rev)
        and after `since_time` (unix seconds), oldest first, at most
        `history.HISTORY_SIZE` of them."""
        return {
            "loop": self.config.loop,
            "node": self.config.node,
            "boot": self.boot,
            "size": self.history.size,
            "bucketSeconds": self.history.bucket_seconds,
            "next": self.history.counter,
            "entries": self.history.entries(since, since_time),
        }

    def state_document(self) -> StateDocument:
        """The `/v1/state` document (the operator, local mode and the kubectl plugin
        decode it: `codec.decode_state_document`)."""
        state = self.state
        if state is None:
            summary = StateSummary()
        else:
            told = self.behavior.summary(state)
            epoch = told.get("epoch")
            summary = StateSummary(
                generation=told.get("generation"),
                target=told.get("target"),
                holding=told.get("holding"),
                epoch=None if epoch is None else (int(epoch[0]), int(epoch[1])),
            )
            if self.lease.enabled:
                # Holding is acting: a holder whose lease is not fresh does not hold.
                acting = self.core.acting_now()
                # `held`: the token is here (the state says so), acting or not yet.
                summary.held = bool(summary.holding)
                summary.holding = acting is not None
        return StateDocument(
            loop=self.config.loop,
            node=self.config.node,
            ordinal=self.config.ordinal,
            behavior=self.behavior.name,
            topology=self.config.topology,
            boot=self.boot,
            ready=self.ready,
            phase=self.phase,
            loops=self.loops,
            waits=self.waits,
            last_wait_reason=self.last_wait_reason,
            last_loop_at=self.last_loop_at,
            replicas=self.replicas,
            suspended=self.suspended,
            state=state if state is not None else {},
            state_error="; ".join(
                e for e in (self.state_error, self.replicas_error, self.injection_problem()) if e
            )
            or None,
            summary=summary,
            edges=[StateEdge(to, o, at) for to, (o, at) in self.edges.items()],
            auth=None if self.keys is None else self.keys.describe(),
            protocol=ProtocolInfo(
                PROTOCOL_VERSION,
                {self.config.node_name(p): v for p, v in sorted(self.core.peer_versions.items())},
            ),
        )

    def describe(self) -> dict[str, Any]:
        """The `/v1/state` document as JSON-like data."""
        described: dict[str, Any] = msgspec.json.decode(encode(self.state_document()))
        return described
