"""The decision file: what the node has decided now, for the applications beside it.

A node keeps its current decision in one JSON file (docs/node.md, "The
decision file"): in Kubernetes `/var/run/reactive-loop/decision/state.json`
on an emptyDir volume that sidecars of the pod mount too; in local mode
`<state dir>/decision/<node>.json`. The document:

    {"version": 1, "loop": "demo", "node": "demo-0", "behavior": "converge",
     "changedAt": 1796101705.5, "decision": {...}}

`decision` is, for converge, `{"generation", "target"}` (the target this node
holds); for token, `{"holding", "epoch"}` (whether this node *acts* as the
holder now, and the epoch it acts on, else null); for a custom behaviour, its
`summary()`.

The file is replaced atomically (a temporary file in the same directory,
then a rename): a reader sees the previous or the next document, never a
partial one. It is written only when the decision changes (and once at
start), never on a loop that changes nothing. Writing it is best effort: a
failure is logged (once until it works again) and never stops the node; the
next change tries again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..core.behaviors import canonical
from ..core.decision import document

log = logging.getLogger(__name__)

#: Mode of the file: the node's sidecars may run as another user.
FILE_MODE: Final = 0o644


def replace_file(path: pathlib.Path, text: str) -> None:
    """Replace `path` by a file holding `text`, atomically (no fsync: the file
    is a view of the state, rewritten at every start; a crash loses nothing)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), FILE_MODE)
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class DecisionFile:
    """Writes the decision document when the decision changed."""

    def __init__(
        self,
        path: pathlib.Path,
        *,
        loop: str,
        node: str,
        behavior: str,
        clock: Callable[[], float],
        write: Callable[[pathlib.Path, str], None] = replace_file,
    ) -> None:
        self.path = path
        self.loop = loop
        self.node = node
        self.behavior = behavior
        self.clock = clock
        self._write = write
        self.written: str | None = None
        """Canonical text of the decision in the file (None: not written yet)."""
        self.writes = 0
        self.error: str | None = None
        """Why the last write failed, while it does."""

    def publish(self, decision: Mapping[str, Any]) -> bool:
        """Write `decision` unless it is the one in the file; True if written."""
        key = canonical(decision)
        if key == self.written:
            return False
        text = json.dumps(
            document(
                loop=self.loop,
                node=self.node,
                behavior=self.behavior,
                decision=decision,
                changed_at=self.clock(),
            ),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(self.path, text + "\n")
        except OSError as e:
            problem = f"cannot write the decision file {self.path}: {e.strerror or e}"
            if problem != self.error:
                log.warning("node %s: %s", self.node, problem)
            self.error = problem
            return False
        self.error = None
        self.written = key
        self.writes += 1
        return True
