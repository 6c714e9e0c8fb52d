"""A local run: what `reactive-loop run` was asked to do (`RunOptions`) and
where a running loop can be reached: the run file `<state-dir>/run.json`
(written by the supervisor, read by `set-target`, `chaos` and the tests), and
the names of the other files in the state dir.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reactive_node.core import contract

RUN_FILE = "run.json"
#: `run --faults`: the fault switch the nodes re-read (reactive_node.runtime.faults).
FAULTS_FILE = "faults.json"
#: `run --auth`: the key files of the loop, in the state dir (docs/node.md).
HMAC_DIR = "hmac"


class RunFileError(Exception):
    """The run file of a local loop is missing or unreadable."""


@dataclass(frozen=True)
class RunOptions:
    """What `reactive-loop run` was asked to do (validated by the CLI)."""

    nodes: int
    behavior: str
    topology: str
    interval: float | None
    duration: float | None
    state_dir: Path
    view_port: int | None
    json_summary: bool
    base_port: int | None
    loop: str = "local"
    bind: str = "127.0.0.1"
    auth: bool = False
    """Sign round trips with the keys in `<state-dir>/hmac/` (made if missing)."""
    faults: bool = False
    """Give the nodes the fault switch `<state-dir>/faults.json` (`reactive-loop chaos`)."""


@dataclass(frozen=True)
class RunFile:
    """Where a running local loop can be reached; written to `<state-dir>/run.json`."""

    loop: str
    supervisor_pid: int
    addresses: list[str]
    pids: list[int | None]
    view: str | None
    faults: str | None = None
    """The fault switch's path when the run has one (`run --faults`)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The timings the nodes run with (`reactive-loop chaos` states its bounds from them)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": self.faults,
            "settings": self.settings,
            "loop": self.loop,
            "supervisorPid": self.supervisor_pid,
            "nodes": [
                {"name": node_name(self.loop, i), "address": a, "pid": p}
                for i, (a, p) in enumerate(zip(self.addresses, self.pids, strict=True))
            ],
            "view": self.view,
        }


def read_run_file(state_dir: Path) -> RunFile:
    path = state_dir / RUN_FILE
    try:
        raw = json.loads(path.read_text())
        nodes = raw["nodes"]
        return RunFile(
            loop=str(raw["loop"]),
            supervisor_pid=int(raw["supervisorPid"]),
            addresses=[str(n["address"]) for n in nodes],
            pids=[None if n.get("pid") is None else int(n["pid"]) for n in nodes],
            view=raw.get("view"),
            faults=None if raw.get("faults") is None else str(raw["faults"]),
            settings=dict(raw.get("settings") or {}),
        )
    except FileNotFoundError:
        raise RunFileError(
            f"no running loop found: {path} does not exist (start one with `reactive-loop run`)"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFileError(f"cannot read {path}: {e}") from None


def write_run_file(state_dir: Path, run: RunFile) -> None:
    """Replace `<state-dir>/run.json` by `run` (a reader never sees half a file)."""
    path = state_dir / RUN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run.to_json(), indent=2) + "\n")
    tmp.replace(path)


def node_name(loop: str, ordinal: int) -> str:
    return contract.node_name(loop, ordinal)


def key_files(state_dir: Path) -> tuple[Path, Path]:
    """(primary, accepted): the key files of a local loop run with `--auth`."""
    folder = state_dir.resolve() / HMAC_DIR
    return folder / contract.HMAC_SECRET_PRIMARY, folder / contract.HMAC_SECRET_ACCEPTED
