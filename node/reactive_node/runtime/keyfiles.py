"""The HMAC key files of a node (docs/node.md, "Signed round trips"): read
once (`load_keyring`) or kept current as they change (`KeyFiles`). The
keyring itself, signing and verifying are pure, in `reactive_node.core.auth`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from ..core.auth import BadKey, Keyring, parse_keys

#: Largest key file read (the accepted file holds several keys).
MAX_KEY_FILE_BYTES: Final = 64 * 1024


def _read_key_file(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as e:
        raise BadKey(f"cannot read HMAC key file {path}: {e.strerror or e}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise BadKey(f"HMAC key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes")
    return data


def load_keyring(primary: Path, accepted: Path | None = None) -> Keyring:
    """The keyring from its files: `primary` holds the signing key; `accepted`, if
    given and present, more keys to accept (a missing accepted file is empty).
    BadKey, naming the file, for an unreadable, empty or short key."""
    extra: list[bytes] = []
    if accepted is not None and accepted.exists():
        extra = parse_keys(_read_key_file(accepted), f"HMAC accepted keys file {accepted}")
    return Keyring.of(_read_key_file(primary), extra, where=f"HMAC key file {primary}")


def _stamp(path: Path | None) -> tuple[int, int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)  # follows the symlinks of a mounted Secret
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class KeyFiles:
    """The keyring of a node, from its files, re-read when they change.

    `refresh` (called once per interval) compares the files' modification time,
    size and inode with the last read ones, so it sees an edit in place, an
    atomic rename and the kubelet's update of a mounted Secret alike. A change
    that is not a valid keyring keeps the last good one and sets `error`."""

    def __init__(self, primary: Path, accepted: Path | None = None) -> None:
        self.primary = primary
        self.accepted = accepted
        self.error: str | None = None
        self._stamps, self.current = self._read()

    def _stamps_now(self) -> tuple[tuple[int, int, int] | None, ...]:
        return (_stamp(self.primary), _stamp(self.accepted))

    def _read(self) -> tuple[tuple[tuple[int, int, int] | None, ...], Keyring]:
        """(stamps, keyring) of one consistent state of both files: read again if
        either changed while they were read (the kubelet swaps a Secret's files
        at once, so a reader never mixes an old primary with new accepted keys)."""
        for _ in range(5):
            before = self._stamps_now()
            keyring = load_keyring(self.primary, self.accepted)
            if self._stamps_now() == before:
                break
        return before, keyring

    def refresh(self) -> bool:
        """Re-read the files if they changed; True if the keyring changed."""
        if self._stamps_now() == self._stamps and self.error is None:
            return False
        try:
            self._stamps, keyring = self._read()
        except BadKey as e:
            self._stamps = self._stamps_now()
            self.error = str(e)
            return False
        self.error = None
        if keyring == self.current:
            return False
        self.current = keyring
        return True

    def describe(self) -> dict[str, object]:
        return {**self.current.describe(), "error": self.error}
