"""Round-trip cost of the reactive loop against a bare aiohttp echo and a raw asyncio echo.

Three servers run as separate processes on 127.0.0.1, and one client process
(this one) talks to each in turn, one request at a time, in interleaved
rounds so that a noisy neighbour on the machine hits all three alike:

* loop: a real node process (`reactive-loop node`, memory store) answers
  round trips; the client is a real `Node` (memory store) running its own
  `Node.step` -- pick the peer, tick, encode, POST through the node's own
  aiohttp transport, validate the answer, react, persist. One step is one loop.
* aiohttp: a bare aiohttp app that parses the JSON body and answers it back,
  called through the same node transport (same session, same body size).
* asyncio: a raw TCP echo of one line, with asyncio streams on both sides.

CPU per round trip is the client's plus the server's CPU time over the
measured rounds of that kind, divided by the number of round trips: the
client's from `time.process_time()`, the server's from the scheduler's
nanosecond run time of all its threads (/proc/<pid>/task/*/schedstat; the
clock-tick counters of /proc/<pid>/stat where schedstat is missing). Both
include the kernel's share (loopback TCP), for every kind alike.

Every process (servers and client) runs on the event loop a node process
uses: uvloop when it is installed, the standard library's with
`RL_EVENT_LOOP=asyncio`.

Then two node processes loop at each other freely (memory store, interval
0.1 ms) until each has initiated `--rss-roundtrips` loops, and their resident
memory (VmRSS) is read.

    python bench/roundtrip.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry
from reactive_node.behaviors import Converge
from reactive_node.core import contract
from reactive_node.local.supervisor import free_ports
from reactive_node.runtime.app import aiohttp_transport
from reactive_node.runtime.config import make_config
from reactive_node.runtime.metrics import NodeMetrics
from reactive_node.runtime.node import Node
from reactive_node.runtime.server import event_loop_factory
from reactive_node.runtime.store import MemoryStore

LOOP = "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SCHEDSTAT = Path("/proc/self/schedstat").exists()


# ---------------------------------------------------------------- servers


async def _serve_aiohttp(port: int) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(await request.json())

    app = web.Application()
    app.router.add_post(contract.ROUNDTRIP_PATH, echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def _serve_asyncio(port: int) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def _spawn(args: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _node_env(name: str, ordinal: int, peers: Sequence[str], interval: float) -> dict[str, str]:
    return {
        contract.ENV_LOOP: LOOP,
        contract.ENV_NODE: name,
        contract.ENV_ORDINAL: str(ordinal),
        contract.ENV_PEERS: ",".join(peers),
        contract.ENV_PORT: peers[ordinal].rpartition(":")[2],
        contract.ENV_BIND: "127.0.0.1",
        contract.ENV_STORE: "memory",
        contract.ENV_INTERVAL: repr(interval),
        contract.ENV_MAX_BACKOFF: "30",
        "RL_LOG_LEVEL": "WARNING",
    }


def _spawn_node(
    name: str, ordinal: int, peers: Sequence[str], interval: float
) -> subprocess.Popen[bytes]:
    return _spawn(["-m", "reactive_node.cli", "node"], _node_env(name, ordinal, peers, interval))


async def _wait_listening(port: int, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > end:
                raise RuntimeError(f"nothing listens on {port} after {deadline}s") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


# ---------------------------------------------------------------- measuring


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, to the nanosecond where the kernel tells."""
    if not SCHEDSTAT:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _timed(op: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter_ns()
        await op()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


async def measure(rounds: int, per_round: int, warmup: int) -> dict[str, Any]:
    node_port, aio_port, raw_port = free_ports(3)
    responder = f"127.0.0.1:{node_port}"
    procs = {
        # The responder has no peer of its own, so it only answers.
        "loop": _spawn_node(f"{LOOP}-0", 0, [responder], 1.0),
        "aiohttp": _spawn([__file__, "--serve", "aiohttp", "--port", str(aio_port)]),
        "asyncio": _spawn([__file__, "--serve", "asyncio", "--port", str(raw_port)]),
    }
    try:
        for port in (node_port, aio_port, raw_port):
            await _wait_listening(port)
        config = make_config(
            {
                "loop": LOOP,
                "node": f"{LOOP}-1",
                "ordinal": 1,
                "peers": (responder, "127.0.0.1:1"),
                "interval": 1.0,
                "timeout": 5.0,
            }
        )
        registry = CollectorRegistry()
        initiator = Node(
            config,
            Converge(),
            MemoryStore(),
            NodeMetrics(registry, LOOP, config.node, "converge", "ring"),
            rng=random.Random(1),
        )
        await initiator.start()
        # A state the size of a small real target, so the echo bodies match the loop's.
        initiator.state = {"generation": 1, "target": {"image": "demo:v1", "replicas": 5}}
        body = json.dumps(
            {"loop": LOOP, "from": config.node, "boot": 1, "seq": 1, "state": initiator.state}
        ).encode()
        headers = {"Content-Type": "application/json"}
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, ttl_dns_cache=10)
        ) as session:
            transport = aiohttp_transport(session, 5.0)
            reader, writer = await asyncio.open_connection("127.0.0.1", raw_port)

            async def loop_step() -> None:
                if not await initiator.step(transport):
                    raise RuntimeError(f"round trip failed: {initiator.last_wait_reason}")

            async def aiohttp_echo() -> None:
                outcome = await transport(
                    f"http://127.0.0.1:{aio_port}{contract.ROUNDTRIP_PATH}", body, headers
                )
                if outcome.status != 200:
                    raise RuntimeError(f"aiohttp echo failed: {outcome}")
                json.loads(outcome.body)

            async def asyncio_echo() -> None:
                writer.write(body + b"\n")
                await writer.drain()
                json.loads(await reader.readline())

            probe_seq = iter(range(1, 10**9))

            async def node_server_only() -> None:
                # The node's server side alone: a plain client sends a ready-made round trip.
                request = {
                    "loop": LOOP,
                    "from": "probe",
                    "boot": 1,
                    "seq": next(probe_seq),
                    "state": initiator.state,
                }
                outcome = await transport(
                    f"http://{responder}{contract.ROUNDTRIP_PATH}",
                    json.dumps(request).encode(),
                    headers,
                )
                if outcome.status != 200:
                    raise RuntimeError(f"round trip failed: {outcome}")
                json.loads(outcome.body)

            ops = {
                "loop": loop_step,
                "aiohttp": aiohttp_echo,
                "asyncio": asyncio_echo,
                "node_server": node_server_only,
            }
            for op in ops.values():
                await _timed(op, warmup)
            samples: dict[str, list[float]] = {k: [] for k in ops}
            client: dict[str, float] = dict.fromkeys(ops, 0.0)
            server: dict[str, float] = dict.fromkeys(ops, 0.0)
            for _ in range(rounds):
                for name, op in ops.items():
                    pid = procs["loop" if name == "node_server" else name].pid
                    server_cpu, client_cpu = _cpu_seconds(pid), time.process_time()
                    samples[name] += await _timed(op, per_round)
                    client[name] += time.process_time() - client_cpu
                    server[name] += _cpu_seconds(pid) - server_cpu
            writer.close()
        n = rounds * per_round
        cpu = {k: client[k] + server[k] for k in ops}
        loop_p50 = statistics.median(samples["loop"])
        aio_p50 = statistics.median(samples["aiohttp"])
        return {
            "roundtrips_per_kind": n,
            "loop_p50_us": round(loop_p50, 1),
            "loop_p99_us": round(_percentile(samples["loop"], 0.99), 1),
            "aiohttp_p50_us": round(aio_p50, 1),
            "aiohttp_p99_us": round(_percentile(samples["aiohttp"], 0.99), 1),
            "asyncio_p50_us": round(statistics.median(samples["asyncio"]), 1),
            "asyncio_p99_us": round(_percentile(samples["asyncio"], 0.99), 1),
            "ratio_loop_vs_aiohttp": round(loop_p50 / aio_p50, 3),
            "node_server_only_p50_us": round(statistics.median(samples["node_server"]), 1),
            "node_server_only_cpu_ms": round(1000 * cpu["node_server"] / n, 4),
            "cpu_ms_per_roundtrip": round(1000 * cpu["loop"] / n, 4),
            "loop_client_cpu_ms": round(1000 * client["loop"] / n, 4),
            "loop_server_cpu_ms": round(1000 * server["loop"] / n, 4),
            "aiohttp_client_cpu_ms": round(1000 * client["aiohttp"] / n, 4),
            "aiohttp_server_cpu_ms": round(1000 * server["aiohttp"] / n, 4),
            "aiohttp_cpu_ms_per_roundtrip": round(1000 * cpu["aiohttp"] / n, 4),
            "asyncio_cpu_ms_per_roundtrip": round(1000 * cpu["asyncio"] / n, 4),
        }
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=10)


async def measure_pair(roundtrips: int, deadline: float = 300.0) -> dict[str, Any]:
    """Two node processes looping at each other; RSS once each initiated `roundtrips` loops."""
    ports = free_ports(2)
    peers = [f"127.0.0.1:{p}" for p in ports]
    procs = [_spawn_node(f"{LOOP}-{i}", i, peers, 0.0001) for i in range(2)]
    try:
        for port in ports:
            await _wait_listening(port)
        rss_start = [_rss_mb(p.pid) for p in procs]
        cpu_start = sum(_cpu_seconds(p.pid) for p in procs)
        started = time.monotonic()
        states: list[dict[str, Any]] = []
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < deadline:
                states = []
                for peer in peers:
                    async with session.get(f"http://{peer}{contract.STATE_PATH}") as r:
                        states.append(await r.json())
                if all(s["loops"] >= roundtrips for s in states):
                    break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError(f"pair did not reach {roundtrips} loops each in {deadline}s")
        elapsed = time.monotonic() - started
        loops = sum(int(s["loops"]) for s in states)
        cpu = sum(_cpu_seconds(p.pid) for p in procs) - cpu_start
        return {
            "pair_loops": loops,
            "pair_waits": sum(int(s["waits"]) for s in states),
            "pair_loops_per_s": round(loops / elapsed, 1),
            "pair_cpu_ms_per_roundtrip": round(1000 * cpu / loops, 4),
            "node_rss_mb_start": round(max(rss_start), 1),
            "node_rss_mb_after_10k": round(max(_rss_mb(p.pid) for p in procs), 1),
        }
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="reactive-loop round-trip benchmark")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--per-round", type=int, default=1000, help="round trips per kind/round")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rss-roundtrips", type=int, default=10_000)
    parser.add_argument("--serve", choices=("aiohttp", "asyncio"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Every process runs on the event loop a node process picks (uvloop if installed,
    # unless RL_EVENT_LOOP=asyncio), so the kinds differ only in what they do.
    factory = event_loop_factory()
    if args.serve:
        serve = _serve_aiohttp if args.serve == "aiohttp" else _serve_asyncio
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(args.port))
        return 0
    if min(args.rounds, args.per_round, args.rss_roundtrips) < 1 or args.warmup < 0:
        parser.error("counts must be positive")
    load_before = os.getloadavg()[0]
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(measure(args.rounds, args.per_round, args.warmup))
    with asyncio.Runner(loop_factory=factory) as runner:
        result.update(runner.run(measure_pair(args.rss_roundtrips)))
    result["event_loop"] = "asyncio" if factory is None else factory.__module__.split(".")[0]
    # Other jobs on the machine inflate every figure; say how busy it was.
    result["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    result["cpus"] = os.cpu_count()
    result["goals"] = {
        "ratio_loop_vs_aiohttp<=1.25": result["ratio_loop_vs_aiohttp"] <= 1.25,
        "cpu_ms_per_roundtrip<=0.25": result["cpu_ms_per_roundtrip"] <= 0.25,
        "node_rss_mb_after_10k<=60": result["node_rss_mb_after_10k"] <= 60,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
