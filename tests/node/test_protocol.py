"""The protocol core (issue 10 §1): one `NodeCore` holds every rule of a round
trip, and both the node's shell and the simulation only carry out its effects.

Driven here by hand, effect by effect: the order of the initiator's effects,
the wait accounting by reason, the version fallback, the responder's checks,
and the token's version 1 bodies (§3: what a version 1 peer is sent and
answered, and that a cut-down body is acted on by nobody)."""

from __future__ import annotations

import ast
import json
import math
import random
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from reactive_node.behaviors import Behavior, Converge, Settings, State, Token
from reactive_node.core import contract
from reactive_node.core.backoff import Backoff
from reactive_node.core.behaviors.token import V1_FIELDS
from reactive_node.core.codec import (
    RoundTripRequest,
    RoundTripResponse,
    decode_request,
    encode,
    make_request,
)
from reactive_node.core.protocol import (
    Counted,
    Effect,
    Lease,
    NodeCore,
    Outcome,
    Persist,
    Refresh,
    Reply,
    Send,
    judge,
)
from reactive_node.core.simulation import Simulation
from reactive_node.core.topology import PeerPicker

PACKAGE = Path(__file__).resolve().parents[2] / "node" / "reactive_node"
SETTINGS = Settings(interval=1.0, token_hold=3.0, token_loss_timeout=12.0, token_lease=3.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_core(behavior: Behavior, ordinal: int = 0, replicas: int = 3) -> NodeCore:
    clock = Clock()
    core = NodeCore(
        behavior,
        SETTINGS,
        loop="demo",
        name=f"demo-{ordinal}",
        ordinal=ordinal,
        replicas=replicas,
        boot=7,
        picker=PeerPicker("ring", ordinal, rng=random.Random(1)),
        backoff=Backoff(1.0, 4.0, random.Random(1)),
        clock=clock,
        monotonic=clock,
        peer_name=lambda p: f"demo-{p}" if 0 <= p < replicas else None,
    )
    core.set_state(behavior.initial(core.context()))
    core.started()
    return core


class Shell:
    """Carries out a core's effects in memory and logs them (what node.py and
    simulation.py do with a store and a network)."""

    def __init__(self, core: NodeCore) -> None:
        self.core = core
        self.effects: list[Effect] = []
        self.refreshed = 0

    def run(self, steps: Generator[Effect, Any, Any], *outcomes: Outcome) -> Any:
        answers = list(outcomes)
        value: Any = None
        while True:
            try:
                effect = steps.send(value)
            except StopIteration as done:
                return done.value
            self.effects.append(effect)
            value = None
            if isinstance(effect, Persist):
                new = effect.decide(self.core.state or {})
                if new != self.core.state:
                    self.core.set_state(new)
                value = self.core.state
            elif isinstance(effect, Send):
                value = answers.pop(0)
            elif isinstance(effect, Refresh):
                self.refreshed += 1
                self.core.refresh()

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in self.effects]


def answer(state: State, sender: str = "demo-1", version: int = 2) -> Outcome:
    return Outcome(status=200, body=encode(RoundTripResponse(sender, state, version)))


# --- the initiator ------------------------------------------------------------------
def test_a_round_trip_ticks_sends_reacts_refreshes_and_counts_a_loop() -> None:
    core = make_core(Converge())
    shell = Shell(core)
    ok = shell.run(core.initiate(), answer({"generation": 3, "target": "t"}))
    assert ok is True
    assert shell.kinds() == ["Persist", "Send", "Persist", "Refresh", "Counted"]
    send = shell.effects[1]
    assert isinstance(send, Send)
    assert send.request.peer == 1
    request = decode_request(send.request.body)
    assert (request.loop, request.sender, request.boot, request.seq) == ("demo", "demo-0", 7, 1)
    assert request.version == 1  # until the peer answered in version 2
    assert core.state == {"generation": 3, "target": "t"}
    assert core.peer_versions == {1: 2}
    assert (core.tally.loops, core.tally.waits, core.tally.phase) == (1, 0, "looping")
    assert core.history.last is not None
    assert core.history.last.peer == "demo-1"
    # The next body to that peer is in version 2.
    shell.run(core.initiate(), answer({"generation": 3, "target": "t"}))
    sends = [e.request for e in shell.effects if isinstance(e, Send)]
    assert [decode_request(r.body).version for r in sends] == [1, 2]


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        (Outcome(failure="timeout"), "timeout"),
        (Outcome(failure="refused"), "refused"),
        (Outcome(status=409, body=b"{}"), "stale"),
        (Outcome(status=401, body=b"{}"), "unauthorized"),
        (Outcome(status=503, body=b"{}"), "server_error"),
        (Outcome(status=400, body=b'{"error":"bad_request"}'), "rejected"),
        (Outcome(status=200, body=b"not json"), "rejected"),
        (answer({"generation": -1, "target": None}), "rejected"),
    ],
)
def test_a_failed_round_trip_is_a_wait_counted_by_its_reason(outcome: Outcome, reason: str) -> None:
    core = make_core(Converge())
    shell = Shell(core)
    assert shell.run(core.initiate(), outcome) is False
    counted = shell.effects[-1]
    assert isinstance(counted, Counted)
    assert counted.outcome == reason
    assert (core.tally.waits, core.tally.last_wait_reason, core.tally.phase) == (
        1,
        reason,
        "waiting",
    )
    assert core.tally.edges["demo-1"][0] == reason
    assert core.state == {"generation": 0, "target": None}  # nothing decided
    assert [e["counts"] for e in core.history.entries() if e["kind"] == "waits"] == [{reason: 1}]
    assert core.next_delay(False) >= 0.5  # backing off


def test_judge_names_every_status() -> None:
    assert judge(Outcome(status=200)) is None
    assert judge(Outcome(status=413)) == "rejected"
    assert judge(Outcome(status=502)) == "server_error"
    assert judge(Outcome(failure="unreachable")) == "unreachable"


def test_a_peer_rolled_back_is_asked_again_in_version_1_without_a_wait() -> None:
    core = make_core(Converge())
    core.peer_versions[1] = 2
    shell = Shell(core)
    refused = Outcome(status=400, body=b'{"error":"bad_request","detail":"unknown field `v`"}')
    assert shell.run(core.initiate(), refused, answer({"generation": 1, "target": 1}, version=1))
    sends = [e for e in shell.effects if isinstance(e, Send)]
    assert [decode_request(s.request.body).version for s in sends] == [2, 1]
    assert [s.request.seq for s in sends] == [1, 2]  # said again, as a new round trip
    assert core.peer_versions == {1: 1}
    assert core.tally.waits == 0


def test_no_peer_is_a_wait() -> None:
    core = make_core(Converge(), replicas=1)
    shell = Shell(core)
    assert shell.run(core.initiate()) is False
    assert shell.kinds() == ["Counted"]
    assert core.tally.last_wait_reason == "no_peer"


# --- the responder -----------------------------------------------------------------
def serve(core: NodeCore, body: bytes, header: str | None = None) -> Reply:
    reply: Reply = Shell(core).run(core.serve(body, address="10.0.0.1", header=header))
    return reply


def body_of(
    state: State, seq: int = 1, version: int = 1, sender: str = "demo-1", boot: int = 5
) -> bytes:
    return encode(RoundTripRequest("demo", sender, boot, seq, state, version))


def test_the_responder_answers_once_per_round_trip_and_checks_the_body() -> None:
    core = make_core(Converge())
    reply = serve(core, body_of({"generation": 2, "target": "x"}))
    assert reply.status == 200
    assert reply.raw is not None
    assert json.loads(reply.raw) == {"from": "demo-0", "state": {"generation": 2, "target": "x"}}
    again = serve(core, body_of({"generation": 3, "target": "y"}))  # same (boot, seq)
    assert again.status == 409
    assert again.body["error"] == "stale"
    assert core.state == {"generation": 2, "target": "x"}
    other_loop = encode(RoundTripRequest("elsewhere", "demo-1", 5, 9, {}, 1))
    assert serve(core, other_loop).body["error"] == "wrong_loop"
    assert serve(core, body_of({"generation": "2"}, seq=10)).status == 400
    assert serve(core, b"[]").status == 400
    assert serve(core, body_of({"generation": 1, "target": None}, seq=11, version=2)).raw
    v2 = json.loads(serve(core, body_of({"generation": 1, "target": None}, 12, 2)).raw or b"")
    assert v2["v"] == 2


# --- the token's version 1 bodies (§3) ------------------------------------------------
def holder_state() -> State:
    return {
        "holding": True,
        "epoch": [4, 0],
        "since": 1.0,
        "seenAt": 1.0,
        "offer": None,
        "origin": [2, 1],
        "acked": [2, 1],
        "lost": False,
    }


def test_a_token_body_to_a_peer_that_may_speak_1_holds_only_fields_version_1_knows() -> None:
    core = make_core(Token())
    core.set_state(holder_state())
    request = core.request(1, "demo-1", holder_state())
    sent = decode_request(request.body)
    assert request.version == 1
    assert not request.whole
    assert list(sent.state) == list(V1_FIELDS)
    core.peer_versions[1] = 2
    request = core.request(1, "demo-1", holder_state())
    assert request.whole
    assert decode_request(request.body).state == holder_state()


def test_a_version_1_token_request_gets_a_version_1_answer() -> None:
    core = make_core(Token(), ordinal=1)
    old = {"holding": False, "epoch": [3, 0], "since": None, "seenAt": 1.0, "offer": None}
    reply = serve(core, body_of(old, sender="demo-0"))
    assert reply.status == 200
    assert reply.raw is not None
    answered = json.loads(reply.raw)
    assert "v" not in answered
    assert set(answered["state"]) == set(V1_FIELDS)
    assert answered["state"]["epoch"] == [3, 0]  # it learned the epoch
    assert set(reply.body["state"]) == set(V1_FIELDS)


def test_a_cut_down_body_from_a_version_2_node_is_answered_but_not_acted_on() -> None:
    responder = make_core(Token(), ordinal=1)
    before = dict(responder.state or {})
    # Node 0 has not heard version 2 from node 1 yet: its offer goes out cut down.
    offer = {**holder_state(), "offer": {"to": 1, "epoch": [5, 1]}}
    cut = make_core(Token()).request(1, "demo-1", offer)
    reply = serve(responder, cut.body, header="2")
    assert reply.status == 200
    assert reply.raw is not None
    answered = json.loads(reply.raw)
    assert answered["v"] == 2
    assert answered["state"] == before  # whole, and unchanged
    assert responder.state == before  # the offer waits for the whole body
    whole = serve(responder, body_of(offer, seq=2, version=2, sender="demo-0", boot=7))
    assert whole.status == 200
    assert responder.state is not None
    assert responder.state["holding"]
    assert responder.state["origin"] == [2, 1]


def test_an_answer_to_a_cut_down_body_is_no_vouch() -> None:
    core = make_core(Token())
    core.set_state(holder_state())
    vouching = {**holder_state(), "holding": False, "since": None}
    shell = Shell(core)
    # The body is cut down (the peer's version is not known yet); the peer
    # answers in version 2, so the same round trip says it again, whole.
    shell.run(core.initiate(), answer(vouching), answer(vouching))
    sends = [e for e in shell.effects if isinstance(e, Send)]
    assert [s.request.whole for s in sends] == [False, True]
    assert [s.request.version for s in sends] == [1, 2]
    assert set(core.lease.acks) == {1}  # the whole body was vouched for, not the cut one
    old = make_core(Token())  # a peer of version 1: one body, cut, and no vouch
    old.set_state(holder_state())
    v1 = Shell(old)
    v1.run(old.initiate(), answer({k: vouching[k] for k in V1_FIELDS}, version=1))
    assert [e.request.version for e in v1.effects if isinstance(e, Send)] == [1]
    assert old.lease.acks == {}
    assert core.acting_now() is None  # within the webhook's timeout after its start
    clock = core.clock
    assert isinstance(clock, Clock)
    clock.now += contract.TOKEN_WEBHOOK_TIMEOUT_SECONDS
    shell.run(core.initiate(), answer(vouching))
    # It acts on the renewal of the epoch it acquired, its term the wall clock's ms.
    assert core.acting_now() == (int(clock.now * 1000), 0)


# --- the guard ends when the holder vouched for stops holding -------------------------
def _vouched_for_holder_0(now: float = 100.0) -> Lease:
    """Node 1's lease right after it vouched for node 0's epoch [4, 0]."""
    lease = Lease(Token(), SETTINGS, 1, now=0.0)
    holder = holder_state()
    vouching = {**holder, "holding": False, "since": None}
    lease.served(holder, vouching, now)
    assert lease.guard_quiet(vouching, now + 1.0) == 1.0
    return lease


NO_LONGER_MAY_ACT = {
    "released": {**holder_state(), "holding": False, "since": None, "epoch": [5, 3]},
    "gave it up": {**holder_state(), "holding": False, "since": None, "lost": True},
    "offered it on": {**holder_state(), "offer": {"to": 1, "epoch": [5, 1]}},
}


@pytest.mark.parametrize("shown", NO_LONGER_MAY_ACT.values(), ids=list(NO_LONGER_MAY_ACT))
def test_a_voucher_is_free_once_its_holder_shows_it_no_longer_may_act(shown: State) -> None:
    lease = _vouched_for_holder_0()
    lease.heard(0, shown)  # in a request (admitted by the stale check: sent later)
    assert lease.guard_quiet(shown, 101.0) == math.inf
    answered = _vouched_for_holder_0()
    answered.heard(0, shown, sent_at=100.5)  # in an answer to a request sent later
    assert answered.guard_quiet(shown, 101.0) == math.inf


def test_a_voucher_keeps_its_guard_on_anything_else() -> None:
    released = NO_LONGER_MAY_ACT["released"]
    lease = _vouched_for_holder_0()
    lease.heard(2, released)  # another node's word
    lease.heard(0, released, sent_at=99.0)  # an answer to a request sent before the vouch
    lease.heard(0, holder_state())  # the holder still holds, no offer
    lease.heard(0, {**holder_state(), "acked": [1, 1]})  # not acting, but may yet
    assert lease.guard_quiet(released, 101.0) == 1.0
    restarted = Lease(Token(), SETTINGS, 1, now=100.0)  # the vouch is forgotten
    restarted.heard(0, released)
    assert restarted.guard_quiet(released, 101.0) == 1.0


def test_a_holder_is_free_once_it_stops_holding() -> None:
    lease = Lease(Token(), SETTINGS, 0, now=0.0)
    lease.changed(None, holder_state(), 50.0)
    offered = NO_LONGER_MAY_ACT["offered it on"]
    lease.changed(holder_state(), offered, 60.0)
    assert lease.guard_quiet(offered, 61.0) == math.inf
    other = Lease(Token(), SETTINGS, 1, now=0.0)  # holds a chain it does not vouch for
    borrowed = {**holder_state(), "epoch": [4, 1], "acked": [1, 1]}
    other.changed(None, borrowed, 50.0)
    other.changed(borrowed, {**borrowed, "holding": False, "since": None}, 60.0)
    assert other.guard_quiet(borrowed, 61.0) == 61.0  # from its start: it vouched for no one


# --- one core for the node and the simulation -----------------------------------------
def calls(module: str) -> set[str]:
    """Names of the functions and methods `module` calls."""
    tree = ast.parse((PACKAGE / module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            found.add(func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", ""))
    return found


RULES = {
    "respond",
    "react",
    "tick",
    "validate",
    "choose_peer",
    "SeenTable",
    "stale",
    "advance",
    "decode_request",
    "decode_response",
    "RoundTripRequest",
    "RoundTripResponse",
    "answered",
    "served",
    "judge",
    "version_refused",
}


def test_the_simulation_keeps_no_copy_of_a_rule() -> None:
    assert not calls("core/simulation.py") & RULES


def test_the_node_shell_leaves_the_round_trip_to_the_core() -> None:
    # `respond` and `validate`: the injected target of a pod annotation, an input
    # the shell merges like a responder (not a round trip).
    assert not calls("runtime/node.py") & (RULES - {"respond", "validate"})


def test_the_node_and_the_simulation_drive_the_same_core() -> None:
    sim = Simulation(Token(), 3, "ring", seed=1, settings=SETTINGS)
    assert all(type(node.core) is NodeCore for node in sim.nodes)
    sim.run_until(30)
    assert sum(node.core.tally.loops for node in sim.nodes) > 30
    assert sim.acquires  # a token was created and acted on


def test_injections_reach_the_simulation_as_operator_round_trips() -> None:
    sim = Simulation(Converge(), 2, "ring", seed=1)
    sim.inject(0, {"generation": 1, "target": "t"})
    assert sim.nodes[0].state == {"generation": 1, "target": "t"}
    with pytest.raises(ValueError, match="injection refused"):
        sim.inject(0, {"generation": "x"})
    request = make_request("sim", contract.OPERATOR_SENDER, 1, 1, {"generation": 1, "target": 0})
    assert request.version == 1
