"""Local loops for the monitoring tests: `reactive-loop run` processes on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from reactive_node.local.runfile import RunFileError, read_run_file

NAMESPACE = "local-test"
#: The `cluster` label the scrape gives every node series (as a multi-cluster setup would).
CLUSTER = "local-cluster"
REACTIVE_LOOP = str(Path(sys.executable).parent / "reactive-loop")


@dataclass
class LocalLoop:
    """A `reactive-loop run` process and what its run file says."""

    name: str
    behavior: str
    state_dir: Path
    process: subprocess.Popen[bytes]
    addresses: list[str]

    def pids(self) -> list[int | None]:
        return read_run_file(self.state_dir).pids


def start_loop(workdir: Path, name: str, behavior: str, nodes: int, interval: float) -> LocalLoop:
    state_dir = workdir / name
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [
            REACTIVE_LOOP,
            "run",
            "--loop",
            name,
            "--nodes",
            str(nodes),
            "--behavior",
            behavior,
            "--topology",
            "ring",
            "--interval",
            str(interval),
            "--duration",
            "900",  # a bound on its life, whatever happens to the test run
            "--state-dir",
            str(state_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    end = time.monotonic() + 60
    while time.monotonic() < end:
        if process.poll() is not None:
            raise RuntimeError(f"loop {name} exited: {(workdir / f'{name}.log').read_text()}")
        try:
            run = read_run_file(state_dir)
            if all(run.pids):
                return LocalLoop(name, behavior, state_dir, process, run.addresses)
        except RunFileError:
            pass
        time.sleep(0.2)
    process.terminate()
    raise TimeoutError(f"loop {name} wrote no run file in 60 s")


def stop_loop(loop: LocalLoop) -> None:
    if loop.process.poll() is None:
        loop.process.send_signal(signal.SIGTERM)
        try:
            loop.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            loop.process.kill()
            loop.process.wait(timeout=10)


def resume(loop: LocalLoop) -> None:
    """SIGCONT every node of the loop (the stall test stops one)."""
    try:
        pids = [p for p in loop.pids() if p]
    except RunFileError:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
