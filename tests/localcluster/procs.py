"""Start, find and stop the processes the local cluster owns, by recorded PID.

A PID file holds the PID and the process start time (field 22 of
/proc/PID/stat), so a PID recycled by an unrelated process after a crash is
never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def start_time(pid: int) -> int | None:
    """The kernel start time of `pid` in clock ticks, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after ")" are fixed.
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] == "Z":  # a zombie is as good as gone
        return None
    return int(rest[19])


@dataclass(frozen=True)
class ProcRecord:
    """A process we started: its PID and the start time that identifies it."""

    pid: int
    started: int

    def alive(self) -> bool:
        return start_time(self.pid) == self.started

    def to_json(self) -> dict[str, int]:
        return {"pid": self.pid, "started": self.started}

    @classmethod
    def of(cls, pid: int) -> ProcRecord | None:
        st = start_time(pid)
        return None if st is None else cls(pid, st)


def write_pidfile(path: Path, rec: ProcRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec.to_json()))


def read_pidfile(path: Path) -> ProcRecord | None:
    try:
        data = json.loads(path.read_text())
        return ProcRecord(int(data["pid"]), int(data["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> ProcRecord:
    """Start `args` in its own session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    rec = ProcRecord.of(proc.pid)
    if rec is None:
        raise RuntimeError(f"{args[0]} exited at once; see {log}")
    return rec


def stop(rec: ProcRecord, grace: float = 5.0) -> None:
    """SIGTERM the process group of `rec`, then SIGKILL after `grace` seconds."""
    if not rec.alive():
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # The group id equals the pid: every process we spawn leads its session.
            os.killpg(rec.pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(rec.pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(rec.pid, os.WNOHANG)
            if not rec.alive():
                _wait_released(rec.pid)
                return
            time.sleep(0.05)


def _wait_released(pid: int, timeout: float = 5.0) -> None:
    """Wait until `pid` is reaped, not only a zombie: a multi-threaded process's
    leader shows as a zombie while its other threads still hold its sockets."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a listener could bind `host:port` now (SO_REUSEADDR, as Go's listeners)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
