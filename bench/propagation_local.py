"""Target propagation with real local processes: from injection until every node holds it.

For each topology and N: `reactive-loop run` (the local mode supervisor; one
node process per node, file store, HTTP on 127.0.0.1) in a scratch state
dir, the node's default timings (`--interval` 1 s). Once every node is
looping, `--injections` times: wait 1 to 2 intervals (a random pause, so that
injections fall at random points of the nodes' loops), inject a new converge
target the way `reactive-loop set-target` does (`reactive_node.local.inject.set_target`:
read every node's generation, then one round trip to a node; each injection
goes to the next node in turn), then poll `GET /v1/state` of every node that
does not hold it yet every `--poll` seconds until all do. A node's time is
when the first answer showing the target arrived, measured from the start of
the injection; the propagation time is the last node's. Loops per node
during the propagation (the nodes' own `loops` counters, read just before
the injection and just after the last node was seen holding) are the rounds
of bench/README.md's goals.

Every process the bench starts is stopped by its PID at the end: SIGTERM to
the supervisor (which stops its nodes), then any node process still alive
gets SIGKILL.

    nice -n 19 python bench/propagation_local.py [--nodes 5 20] [--topologies ring mesh] \\
        [--injections 20] [--out bench/results/propagation_local.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from reactive_node.core import contract
from reactive_node.local.inject import set_target
from reactive_node.local.runfile import RunFileError, read_run_file

T = TypeVar("T")
START_DEADLINE = 180.0
STOP_DEADLINE = 30.0


async def eventually(probe: Callable[[], Awaitable[T | None]], what: str, deadline: float) -> T:
    """Poll `probe` until it returns something truthy, or fail saying what never happened."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        found = await probe()
        if found:
            return found
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what}: not within {deadline} s")


async def read_state(session: aiohttp.ClientSession, address: str) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://{address}{contract.STATE_PATH}") as r:
            body = await r.json(content_type=None)
            return body if r.status == 200 and isinstance(body, dict) else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "p90": round(percentile(values, 0.9), 3),
        "max": round(max(values), 3),
        "min": round(min(values), 3),
        "mean": round(statistics.fmean(values), 3),
    }


class LocalLoop:
    """One `reactive-loop run` supervisor and its node processes, stopped by PID."""

    def __init__(
        self,
        nodes: int,
        topology: str,
        interval: float,
        state_dir: Path,
        *,
        behavior: str = "converge",
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: more RL_* variables the nodes inherit (e.g. the token's timings)."""
        self.nodes = nodes
        self.state_dir = state_dir
        self.log = (state_dir / "supervisor.log").open("wb")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "reactive_node.cli", "run"),
                *("--nodes", str(nodes), "--behavior", behavior, "--topology", topology),
                *("--interval", repr(interval), "--state-dir", str(state_dir)),
            ],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.node_pids: set[int] = set()
        self.addresses: list[str] = []

    def read_run_file(self) -> list[str] | None:
        try:
            run = read_run_file(self.state_dir)
        except RunFileError:
            return None
        if len(run.addresses) != self.nodes:
            return None
        self.node_pids.update(p for p in run.pids if p is not None)
        return run.addresses

    def pid_of(self, address: str) -> int:
        """The PID of the node process listening on `address` now (from the run file)."""
        run = read_run_file(self.state_dir)
        pid = dict(zip(run.addresses, run.pids, strict=True)).get(address)
        if pid is None:
            raise RuntimeError(f"no running node at {address}")
        self.node_pids.add(pid)
        return pid

    async def started(self, session: aiohttp.ClientSession) -> None:
        """Wait until every node answers and loops."""

        async def run_file() -> list[str] | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"the supervisor exited with {self.process.returncode}")
            return self.read_run_file()

        self.addresses = await eventually(run_file, "run file written", START_DEADLINE)
        for address in self.addresses:
            host = address.rpartition(":")[0]
            if not host.startswith("127."):
                raise RuntimeError(f"a node listens on {address}, not on loopback")

        async def looping() -> bool:
            states = await asyncio.gather(*(read_state(session, a) for a in self.addresses))
            return all(s is not None and s.get("phase") == "looping" for s in states)

        await eventually(looping, "every node looping", START_DEADLINE)
        self.read_run_file()

    def stop(self) -> list[int]:
        """Stop the supervisor and every node process it ran; the PIDs that needed SIGKILL."""
        self.read_run_file()
        killed: list[int] = []
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            killed.append(self.process.pid)
        for pid in sorted(self.node_pids):
            if _is_node_process(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
        self.log.close()
        return killed


def _is_node_process(pid: int) -> bool:
    """Whether `pid` is still one of our node processes (and not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    zombie = "\nState:\tZ" in status
    return not zombie and b"reactive_node.cli\x00node" in cmdline


async def propagate_once(
    session: aiohttp.ClientSession,
    addresses: Sequence[str],
    state_dir: Path,
    first: int,
    target: Any,
    poll: float,
    deadline: float,
) -> dict[str, Any]:
    """Inject `target` through node `first` (then the others in turn) and time its spread."""
    n = len(addresses)
    before = await asyncio.gather(*(read_state(session, a) for a in addresses))
    loops_before = sum(int(s["loops"]) for s in before if s is not None)
    order = [*addresses[first:], *addresses[:first]]
    started = time.perf_counter()
    result = await set_target(target, order, state_dir=state_dir)
    injected = time.perf_counter()
    if not result.ok or result.generation is None:
        raise RuntimeError(f"injection failed: {result.failures}")
    want = {"generation": result.generation, "target": target}
    seen: dict[int, float] = {}

    async def check(i: int) -> None:
        state = await read_state(session, addresses[i])
        if state is not None and state.get("state") == want:
            seen[i] = time.perf_counter() - started

    end = started + deadline
    while len(seen) < n:
        tick = time.perf_counter()
        if tick > end:
            raise TimeoutError(f"only {len(seen)} of {n} nodes held the target after {deadline} s")
        await asyncio.gather(*(check(i) for i in range(n) if i not in seen))
        await asyncio.sleep(max(0.0, tick + poll - time.perf_counter()))
    after = await asyncio.gather(*(read_state(session, a) for a in addresses))
    loops_after = sum(int(s["loops"]) for s in after if s is not None)
    times = sorted(seen.values())
    return {
        "generation": result.generation,
        "through": result.address,
        "inject_call_s": round(injected - started, 4),
        "all_s": round(times[-1], 4),
        "half_s": round(times[(n - 1) // 2], 4),
        "loops_per_node": round((loops_after - loops_before) / n, 2),
        "node_s": [round(seen[i], 4) for i in range(n)],
    }


async def measure_loop(
    nodes: int, topology: str, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    state_dir = Path(tempfile.mkdtemp(prefix=f"rl-bench-{topology}{nodes}-"))
    loop = LocalLoop(nodes, topology, args.interval, state_dir)
    injections: list[dict[str, Any]] = []
    killed: list[int] = []
    try:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            started = time.perf_counter()
            await loop.started(session)
            ready_s = time.perf_counter() - started
            for k in range(args.injections):
                await asyncio.sleep(rng.uniform(1.0, 2.0) * args.interval)
                target = {"bench": "propagation", "n": nodes, "topology": topology, "k": k}
                one = await propagate_once(
                    session,
                    loop.addresses,
                    state_dir,
                    k % nodes,
                    target,
                    args.poll,
                    args.deadline,
                )
                print(f"{topology} N={nodes} #{k}: {one['all_s']} s", file=sys.stderr)
                injections.append(one)
    finally:
        killed = loop.stop()
        leftover = [pid for pid in sorted(loop.node_pids) if _is_node_process(pid)]
        if leftover:
            raise RuntimeError(f"node processes still running: {leftover}")
        if not args.keep:
            shutil.rmtree(state_dir, ignore_errors=True)
    all_s = [i["all_s"] for i in injections]
    return {
        "topology": topology,
        "n": nodes,
        "interval": args.interval,
        "injections": len(injections),
        "start_to_all_looping_s": round(ready_s, 2),
        "all_s": spread(all_s),
        "all_intervals": spread([s / args.interval for s in all_s]),
        "half_s": spread([i["half_s"] for i in injections]),
        "loops_per_node": spread([i["loops_per_node"] for i in injections]),
        "inject_call_s": spread([i["inject_call_s"] for i in injections]),
        "node_pids": len(loop.node_pids),
        "killed_at_stop": killed,
        "runs": injections,
    }


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(args.seed)
    rows = []
    for topology in args.topologies:
        for nodes in args.nodes:
            rows.append(await measure_loop(nodes, topology, args, rng))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, nargs="+", default=[5, 20])
    parser.add_argument(
        "--topologies", nargs="+", choices=contract.TOPOLOGIES, default=["ring", "mesh"]
    )
    parser.add_argument("--injections", type=int, default=20, help="per loop (default 20)")
    parser.add_argument("--interval", type=float, default=1.0, help="node interval, s")
    parser.add_argument("--poll", type=float, default=0.05, help="poll period, s")
    parser.add_argument("--deadline", type=float, default=120.0, help="per injection, s")
    parser.add_argument("--seed", type=int, default=0, help="of the pauses between injections")
    parser.add_argument("--keep", action="store_true", help="keep the scratch state dirs")
    parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    args = parser.parse_args(argv)
    if any(not 2 <= n <= 200 for n in args.nodes) or args.injections < 1 or args.interval <= 0:
        parser.error("nodes must be 2..200, injections >= 1, interval > 0")
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = asyncio.run(measure(args))
    result = {
        "script": "bench/propagation_local.py",
        "argv": list(sys.argv[1:] if argv is None else argv),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "niceness": os.nice(0),
        "load_average_before": load_before,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "poll_s": args.poll,
        "rows": rows,
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        s, loops = r["all_s"], r["loops_per_node"]
        print(
            f"{r['topology']:>4} N={r['n']:>3} x{r['injections']}: all nodes after "
            f"median {s['median']} s, p90 {s['p90']} s, max {s['max']} s "
            f"(loops per node median {loops['median']}, max {loops['max']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
