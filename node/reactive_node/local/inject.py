"""`reactive-loop set-target`: inject a converge target into a running local
loop by a round trip to one of its nodes (reactive_node.runtime.client).

The injected generation is above every generation the nodes hold; from a
state dir, injections are one at a time and their generations are allotted
there (`allot_generation`), so two injections never share one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import msgspec

from reactive_node.core import auth, contract
from reactive_node.core.codec import StateDocument, decode_state
from reactive_node.local.runfile import RUN_FILE
from reactive_node.runtime.client import NodeClient, NodeError
from reactive_node.runtime.store import write_atomically

#: The last generation `set-target` allotted from this state dir, and its lock.
GENERATION_FILE = "generation"
GENERATION_LOCK = "generation.lock"


def injected_state(generations: Sequence[int | None], target: Any) -> dict[str, Any]:
    """The converge state the injector sends: one generation above the newest seen."""
    newest = max((g for g in generations if g is not None), default=0)
    return {"generation": newest + 1, "target": target}


class GenerationError(Exception):
    """No new generation can be allotted (the newest is at the bound)."""


def _stored_generations(state_dir: Path) -> list[int]:
    """The generations the node state files of `state_dir` hold (unreadable ones skipped)."""
    found = []
    for path in state_dir.glob("*.json"):
        if path.name == RUN_FILE:
            continue
        with contextlib.suppress(OSError, ValueError):
            generation = _generation_of({"state": decode_state(path.read_text("utf-8"))})
            if generation is not None:
                found.append(generation)
    return found


def _lock_for_injection(state_dir: Path) -> TextIO:
    """Wait for and hold the state dir's injection lock (until the file is closed)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = (state_dir / GENERATION_LOCK).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
    except BaseException:
        lock.close()
        raise
    return lock


def allot_generation(state_dir: Path, seen: Sequence[int | None]) -> int:
    """A generation no other `set-target` on this state dir ever gets: one above the
    last one allotted here, every generation `seen` and every state file's, and
    recorded before it is used. The caller holds the injection lock."""
    counter = state_dir / GENERATION_FILE
    last = 0
    with contextlib.suppress(OSError, ValueError):
        last = int(counter.read_text().strip())
    known = [g for g in seen if g is not None]
    generation = max([last, *known, *_stored_generations(state_dir)]) + 1
    if generation > contract.MAX_STATE_INT:
        raise GenerationError(f"generation {generation} would be above the bound")
    write_atomically(counter, f"{generation}\n")
    return generation


def _generation_of(body: Mapping[str, Any]) -> int | None:
    summary = body.get("summary")
    if isinstance(summary, Mapping) and isinstance(summary.get("generation"), int):
        return int(summary["generation"])
    state = body.get("state")
    if isinstance(state, Mapping) and isinstance(state.get("generation"), int):
        return int(state["generation"])
    return None


@dataclass
class InjectResult:
    ok: bool
    address: str | None = None
    generation: int | None = None
    failures: list[str] = field(default_factory=list)


async def set_target(
    target: Any,
    addresses: Sequence[str],
    *,
    request_timeout: float = 2.0,
    state_dir: Path | None = None,
    keys: auth.Keyring | None = None,
) -> InjectResult:
    """Inject `target` by a round trip to one reachable node.

    Reads every node's generation first, so the injected generation is above
    all of them; then tries the nodes in order until one answers 200 holding
    the injected generation.

    With a `state_dir`, injections from it are one at a time (an exclusive
    lock on the state dir) and the generation is allotted by
    `allot_generation`: unique even when injections race or the node holding
    the newest generation is unreachable, and a later injection always gets a
    higher generation, so it can never lose to an earlier one.

    With `keys`, each round trip is signed with the primary key, addressed to
    the node that `/v1/state` named at that address.
    """
    if state_dir is None:
        return await _inject(target, addresses, request_timeout, None, keys)
    try:
        lock = await asyncio.to_thread(_lock_for_injection, state_dir)
    except OSError as e:
        return InjectResult(ok=False, failures=[f"cannot lock {state_dir}: {e}"])
    with lock:
        return await _inject(target, addresses, request_timeout, state_dir, keys)


async def _inject(
    target: Any,
    addresses: Sequence[str],
    request_timeout: float,
    state_dir: Path | None,
    keys: auth.Keyring | None,
) -> InjectResult:
    result = InjectResult(ok=False)
    async with aiohttp.ClientSession() as session:
        nodes = NodeClient(session, request_timeout)
        answers = await nodes.states({a: a for a in addresses})
        reachable: list[tuple[str, StateDocument]] = []
        for address, document in answers.items():
            if isinstance(document, NodeError):
                result.failures.append(str(document))
            else:
                reachable.append((address, document))
        if not reachable:
            return result
        seen = [
            _generation_of({"summary": msgspec.to_builtins(d.summary), "state": d.state})
            for _, d in reachable
        ]
        state = injected_state(seen, target)
        if state_dir is not None:
            try:
                state["generation"] = await asyncio.to_thread(allot_generation, state_dir, seen)
            except (OSError, GenerationError) as e:
                result.failures.append(f"cannot allot a generation in {state_dir}: {e}")
                return result
        boot = time.time_ns()
        for seq, (address, known) in enumerate(reachable, start=1):
            try:
                answer = await nodes.inject(
                    address,
                    loop=str(known.loop),
                    recipient=known.node,
                    boot=boot,
                    seq=seq,
                    state=state,
                    keys=keys,
                )
            except NodeError as e:
                result.failures.append(str(e))
                continue
            held = _generation_of(answer)
            if held is not None and held >= state["generation"]:
                result.ok, result.address, result.generation = True, address, state["generation"]
                return result
            result.failures.append(f"{address}: answered without generation {state['generation']}")
    return result


async def set_target_command(
    target: Any,
    addresses: Sequence[str],
    *,
    request_timeout: float,
    state_dir: Path | None,
    keys: auth.Keyring | None = None,
) -> int:
    result = await set_target(
        target, addresses, request_timeout=request_timeout, state_dir=state_dir, keys=keys
    )
    for failure in result.failures:
        print(f"set-target: {failure}", file=sys.stderr)
    if not result.ok:
        print("set-target: no node took the target", file=sys.stderr)
        return 1
    print(f"generation {result.generation} injected through {result.address}")
    return 0
