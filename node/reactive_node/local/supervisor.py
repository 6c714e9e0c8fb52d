"""Local mode: a whole loop as processes on 127.0.0.1, no Kubernetes.

`run` plays the part the operator and the kubelet play in a cluster, and no
more: it starts one `reactive-loop node` process per node with a file store,
restarts a node that dies (the node catches up from its state file and its
peers), and watches the nodes by polling their `GET /v1/state`. It never
touches node state: like the operator, it can only inject a converge target
by a round trip (`set-target`).

The run file, the views and target injection are in `runfile.py`, `views.py`
and `inject.py`; the web view's server in `web.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp
from aiohttp import web

from reactive_node.core import auth, contract
from reactive_node.local.runfile import (
    FAULTS_FILE,
    RUN_FILE,
    RunFile,
    RunFileError,
    RunOptions,
    key_files,
    node_name,
    read_run_file,
    write_run_file,
)
from reactive_node.local.views import NodeView, Timeline, build_summary, render_table, view_model
from reactive_node.runtime import keyfiles
from reactive_node.runtime.client import NodeClient, NodeError
from reactive_node.runtime.store import write_atomically

#: Held (flock) by the supervisor of the state dir for its whole life.
SUPERVISOR_LOCK = "supervisor.lock"
POLL_SECONDS = 0.5
POLL_TIMEOUT = 1.0
RESTART_BACKOFF_MIN = 0.2
RESTART_BACKOFF_MAX = 5.0
STOP_GRACE_SECONDS = 5.0
#: A node that ran this long before dying is restarted at once again.
HEALTHY_RUN_SECONDS = 10.0
#: The supervisor reads each node's /v1/history every this many polls (view only).
HISTORY_EVERY_POLLS = 4


def ensure_keys(state_dir: Path) -> auth.Keyring:
    """The keyring of `<state-dir>/hmac/`: a random primary key (and an empty
    accepted file) is made where none exists; existing files are kept (and
    checked: BadKey if they cannot be used). Only the user may read them."""
    primary, accepted = key_files(state_dir)
    primary.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    for path, text in ((primary, secrets.token_hex(32) + "\n"), (accepted, "")):
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
    return keyfiles.load_keyring(primary, accepted)


def node_environment(options: RunOptions, ordinal: int, addresses: Sequence[str]) -> dict[str, str]:
    """The RL_* environment of node `ordinal` (the same variables the operator sets in a pod)."""
    env = {
        contract.ENV_LOOP: options.loop,
        contract.ENV_NODE: node_name(options.loop, ordinal),
        contract.ENV_ORDINAL: str(ordinal),
        contract.ENV_REPLICAS: str(options.nodes),
        contract.ENV_BEHAVIOR: options.behavior,
        contract.ENV_TOPOLOGY: options.topology,
        contract.ENV_PEERS: ",".join(addresses),
        contract.ENV_BIND: options.bind,
        contract.ENV_PORT: addresses[ordinal].rpartition(":")[2],
        contract.ENV_STORE: "file",
        contract.ENV_STATE_DIR: str(options.state_dir.resolve()),
    }
    if options.interval is not None:
        env[contract.ENV_INTERVAL] = repr(options.interval)
    if options.auth:
        primary, accepted = key_files(options.state_dir)
        env[contract.ENV_HMAC_KEY_FILE] = str(primary)
        env[contract.ENV_HMAC_ACCEPTED_FILE] = str(accepted)
    if options.faults:
        env[contract.ENV_FAULTS_FILE] = str(options.state_dir.resolve() / FAULTS_FILE)
    return env


def node_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The timings a node started with `env` runs with (empty if its config is bad:
    the node then refuses to start and says why)."""
    from reactive_node.runtime.config import ConfigError, load_config

    try:
        config = load_config(None, env)
    except (ConfigError, ValueError):
        return {}
    return {
        "behavior": config.behavior,
        "topology": config.topology,
        "replicas": config.replicas,
        "interval": config.interval,
        "timeout": config.timeout,
        "maxBackoff": config.max_backoff,
        "tokenHold": config.token_hold,
        "tokenLossTimeout": config.token_loss_timeout,
        "tokenLease": config.lease,
    }


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel says are free now (held together so they are distinct)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class _Node:
    view: NodeView
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None


class Supervisor:
    """Starts, restarts, polls and stops the node processes of one local loop."""

    def __init__(self, options: RunOptions, *, out: TextIO = sys.stdout) -> None:
        self.options = options
        self.out = out
        self.stopping = asyncio.Event()
        self.started_at = time.monotonic()
        ports = (
            [options.base_port + i for i in range(options.nodes)]
            if options.base_port is not None
            else free_ports(options.nodes, options.bind)
        )
        addresses = [f"{options.bind}:{p}" for p in ports]
        logs = options.state_dir / "logs"
        self.nodes = [
            _Node(
                view=NodeView(name=node_name(options.loop, i), ordinal=i, address=addresses[i]),
                env=node_environment(options, i, addresses),
                log=logs / f"{node_name(options.loop, i)}.log",
            )
            for i in range(options.nodes)
        ]
        self.view_url: str | None = None
        self.faults_path = options.state_dir.resolve() / FAULTS_FILE if options.faults else None
        self.settings = node_settings({**os.environ, **self.nodes[0].env}) if self.nodes else {}
        self.timeline = Timeline()

    @property
    def views(self) -> list[NodeView]:
        return [n.view for n in self.nodes]

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    async def _spawn(self, node: _Node) -> None:
        node.log.parent.mkdir(parents=True, exist_ok=True)
        with node.log.open("ab") as log:
            node.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "reactive_node.cli",
                "node",
                env={**os.environ, **node.env},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # a Ctrl-C reaches the supervisor only
            )
        node.view.pid = node.process.pid
        node.view.running = True
        node.view.state = None
        node.view.error = "starting"

    async def _keep_running(self, node: _Node) -> None:
        backoff = RESTART_BACKOFF_MIN
        while not self.stopping.is_set():
            started = time.monotonic()
            await self._spawn(node)
            self._write_run_file()
            assert node.process is not None
            code = await node.process.wait()
            node.view.running = False
            if self.stopping.is_set():
                return
            node.view.restarts += 1
            self.timeline.exited(node.view.name, time.time(), code)
            print(
                f"{node.view.name} exited with {code}; restarting (see {node.log})",
                file=sys.stderr,
            )
            backoff = (
                RESTART_BACKOFF_MIN
                if time.monotonic() - started > HEALTHY_RUN_SECONDS
                else min(backoff * 2, RESTART_BACKOFF_MAX)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)

    async def _poll(self, nodes: NodeClient) -> None:
        async def one(view: NodeView) -> None:
            if not view.running:
                return
            try:
                view.state, view.error = await nodes.state(view.address), None
            except NodeError as e:
                view.error = e.kind

        await asyncio.gather(*(one(v) for v in self.views))

    async def _poll_history(self, nodes: NodeClient) -> None:
        """Read each node's new decisions for the web view's timeline."""

        async def one(view: NodeView) -> None:
            if not view.reachable or view.state is None:
                return
            since = self.timeline.since_for(view.name, view.state.boot)
            try:
                page = await nodes.history(view.address, since)
            except NodeError:
                return
            self.timeline.history(view.name, page)

        await asyncio.gather(*(one(v) for v in self.views))

    def _read_links(self) -> None:
        if self.faults_path is None:
            return
        from reactive_node.runtime.faults import parse_faults

        with contextlib.suppress(OSError, ValueError):
            self.timeline.links(time.time(), parse_faults(self.faults_path.read_bytes()))

    async def _poll_forever(self, nodes: NodeClient) -> None:
        polls = 0
        while not self.stopping.is_set():
            await self._poll(nodes)
            self.timeline.sample(time.time(), self.views)
            self._read_links()
            if self.options.view_port is not None and polls % HISTORY_EVERY_POLLS == 0:
                await self._poll_history(nodes)
            polls += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), POLL_SECONDS)

    async def _display_forever(self) -> None:
        tty = self.out.isatty()
        period = 1.0 if tty else 5.0
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), period)
            table = render_table(self.options, self.views, self.elapsed())
            if tty:
                extra = f"\nweb view: {self.view_url}" if self.view_url else ""
                self.out.write("\x1b[H\x1b[2J" + table + extra + "\n(Ctrl-C stops the loop)\n")
            else:
                self.out.write(table + "\n\n")
            self.out.flush()

    def _write_run_file(self) -> None:
        run = RunFile(
            loop=self.options.loop,
            supervisor_pid=os.getpid(),
            addresses=[v.address for v in self.views],
            pids=[v.pid if v.running else None for v in self.views],
            view=self.view_url,
            faults=str(self.faults_path) if self.faults_path is not None else None,
            settings=self.settings,
        )
        write_run_file(self.options.state_dir, run)

    async def _stop_nodes(self) -> None:
        running = [n.process for n in self.nodes if n.process and n.process.returncode is None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                await asyncio.wait_for(p.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await p.wait()

    def _lock_state_dir(self) -> TextIO:
        """Hold the state dir's supervisor lock (until the returned file is closed,
        or the process ends); RunFileError if another live supervisor holds it."""
        lock = (self.options.state_dir / SUPERVISOR_LOCK).open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            other = "another process"
            with contextlib.suppress(RunFileError):
                other = f"pid {read_run_file(self.options.state_dir).supervisor_pid}"
            raise RunFileError(
                f"a loop already runs from {self.options.state_dir} ({other}); "
                "stop it or use another --state-dir"
            ) from None
        return lock

    async def run(self) -> int:
        self.options.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = self._lock_state_dir()
        except RunFileError as e:
            print(f"reactive-loop run: {e}", file=sys.stderr)
            return 1
        with lock:
            if self.faults_path is not None:  # every run starts with every link up
                from reactive_node.runtime.faults import encode_faults

                write_atomically(self.faults_path, encode_faults(()).decode())
            if self.options.auth:
                try:
                    keys = ensure_keys(self.options.state_dir)
                except (auth.BadKey, OSError) as e:
                    print(f"reactive-loop run: {e}", file=sys.stderr)
                    return 2
                print(
                    f"signed round trips: keys in {key_files(self.options.state_dir)[0].parent}"
                    f" (primary {keys.primary_id})",
                    file=sys.stderr,
                )
            return await self._run()

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        runner: web.AppRunner | None = None
        tasks: list[asyncio.Task[None]] = []
        summary: dict[str, Any] | None = None
        final_table = ""
        try:
            if self.options.view_port is not None:
                from reactive_node.local.web import serve_view

                runner = await serve_view(
                    lambda: view_model(
                        self.options,
                        self.views,
                        self.elapsed(),
                        self.timeline.to_json(time.time()),
                    ),
                    self.options.bind,
                    self.options.view_port,
                )
                self.view_url = f"http://{self.options.bind}:{self.options.view_port}/"
                print(f"web view: {self.view_url}", file=sys.stderr)
            async with aiohttp.ClientSession() as session:
                nodes = NodeClient(session, POLL_TIMEOUT)
                tasks = [asyncio.create_task(self._keep_running(n)) for n in self.nodes]
                tasks.append(asyncio.create_task(self._poll_forever(nodes)))
                if not self.options.json_summary:
                    tasks.append(asyncio.create_task(self._display_forever()))
                if self.options.duration is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stopping.wait(), self.options.duration)
                else:
                    await self.stopping.wait()
                await self._poll(nodes)  # the summary reflects the last moment
                summary = build_summary(self.options, self.views, self.elapsed())
                final_table = render_table(self.options, self.views, self.elapsed())
        finally:
            self.stopping.set()
            await self._stop_nodes()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()
            with contextlib.suppress(FileNotFoundError):
                (self.options.state_dir / RUN_FILE).unlink()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if summary is None:
            return 1
        if self.options.json_summary:
            self.out.write(json.dumps(summary) + "\n")
        else:
            self.out.write(final_table + "\n")
        self.out.flush()
        return 0


async def run(options: RunOptions) -> int:
    return await Supervisor(options).run()
