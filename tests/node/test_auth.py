"""Signed round trips without HTTP: what is signed, the replay rules, the keyring
and its files (reactive_node.core.auth; docs/node.md "Signed round trips")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reactive_node.core import auth, contract
from reactive_node.runtime import keyfiles

WINDOW = contract.SIGNATURE_WINDOW_SECONDS
NOW = 1_800_000_000.0

keys = st.binary(min_size=auth.MIN_KEY_BYTES, max_size=80).filter(
    lambda k: k.strip() == k and k.strip() != b""
)
names = st.from_regex(auth.NAME_PATTERN, fullmatch=True).filter(lambda n: len(n) <= 60)
bodies = st.binary(max_size=300)
FEW = settings(max_examples=60, deadline=None)


def verifier(recipient: str, *, not_before: float = NOW - 3600) -> auth.Verifier:
    return auth.Verifier(recipient, not_before=not_before)


@FEW
@given(key=keys, sender=names, recipient=names, body=bodies, skew=st.floats(-WINDOW, WINDOW))
def test_a_signed_request_verifies_once(
    key: bytes, sender: str, recipient: str, body: bytes, skew: float
) -> None:
    ring = auth.Keyring.of(key)
    header = auth.sign(ring, sender=sender, recipient=recipient, body=body, now=NOW + skew)
    check = verifier(recipient)
    signed = check.check(ring, header, body=body, now=NOW)
    assert (signed.sender, signed.recipient, signed.keyid) == (sender, recipient, ring.primary_id)
    with pytest.raises(auth.Unauthorized, match="replayed"):
        check.check(ring, header, body=body, now=NOW)
    with pytest.raises(auth.Unauthorized):  # replayed, or by then out of the window
        check.check(ring, header, body=body, now=NOW + WINDOW)


@FEW
@given(
    key=keys,
    other=keys,
    sender=names,
    recipient=names,
    body=bodies,
    change=st.sampled_from(["body", "recipient", "method", "path", "key", "sig", "ts"]),
    extra=st.binary(min_size=1, max_size=4),
)
def test_any_change_to_what_is_signed_is_refused(
    key: bytes,
    other: bytes,
    sender: str,
    recipient: str,
    body: bytes,
    change: str,
    extra: bytes,
) -> None:
    ring = auth.Keyring.of(key)
    header = auth.sign(ring, sender=sender, recipient=recipient, body=body, now=NOW)
    method, path, me = "POST", contract.ROUNDTRIP_PATH, recipient
    if change == "body":
        body += extra
    elif change == "recipient":
        me = recipient + "x"
    elif change == "method":
        method = "PUT"
    elif change == "path":
        path += "x"
    elif change == "key":
        if auth.key_id(other) == auth.key_id(key):
            return
        ring = auth.Keyring.of(other)
    elif change == "sig":
        digit = header[-1]
        header = header[:-1] + ("0" if digit != "0" else "1")
    elif change == "ts":
        header = header.replace(" ts=", " ts=1", 1)
    with pytest.raises(auth.Unauthorized):
        verifier(me).check(ring, header, body=body, now=NOW, method=method, path=path)


@settings(max_examples=150, deadline=None)
@given(value=st.text(max_size=120) | st.binary(max_size=120).map(lambda b: b.decode("latin-1")))
def test_any_header_text_is_parsed_or_unauthorized(value: str) -> None:
    try:
        parsed = auth.parse(value)
    except auth.Unauthorized:
        return
    assert len(parsed.sig) == 64


def test_header_format_is_exact() -> None:
    ring = auth.Keyring.of(b"k" * 32)
    header = auth.sign(ring, sender="demo-0", recipient="demo-1", body=b"{}", now=NOW)
    assert header.startswith(f"v1 keyid={auth.key_id(b'k' * 32)} ts={int(NOW * 1000)} ")
    assert " from=demo-0 to=demo-1 sig=" in header
    for bad in (
        header.replace("v1 ", "v2 "),
        header.replace(" ts=", "  ts="),
        header + " extra=1",
        header.upper(),
        "sha256=" + "0" * 64,
        "",
    ):
        with pytest.raises(auth.Unauthorized):
            auth.parse(bad)
    with pytest.raises(ValueError, match="cannot be signed"):
        auth.sign(ring, sender="a b", recipient="x", body=b"", now=NOW)


@FEW
@given(offset=st.floats(-3 * WINDOW, 3 * WINDOW).filter(lambda x: abs(abs(x) - WINDOW) > 0.01))
def test_timestamps_outside_the_window_are_refused(offset: float) -> None:
    ring = auth.Keyring.of(b"k" * 32)
    header = auth.sign(ring, sender="a", recipient="b", body=b"", now=NOW + offset)
    check = verifier("b")
    if abs(offset) <= WINDOW:
        check.check(ring, header, body=b"", now=NOW)
    else:
        with pytest.raises(auth.Unauthorized, match="more than"):
            check.check(ring, header, body=b"", now=NOW)


def test_a_request_signed_before_the_receiver_started_is_refused() -> None:
    """Across restarts: the memory of signatures is gone, so a capture from before
    the (re)start is refused by its timestamp, even within the window."""
    ring = auth.Keyring.of(b"k" * 32)
    captured = auth.sign(ring, sender="a", recipient="b", body=b"", now=NOW - 0.002)
    restarted = verifier("b", not_before=NOW)
    with pytest.raises(auth.Unauthorized, match="before this node started"):
        restarted.check(ring, captured, body=b"", now=NOW + 1)
    fresh = auth.sign(ring, sender="a", recipient="b", body=b"", now=NOW + 0.001)
    restarted.check(ring, fresh, body=b"", now=NOW + 1)


def test_a_request_for_one_node_is_refused_by_another() -> None:
    ring = auth.Keyring.of(b"k" * 32)
    header = auth.sign(ring, sender="demo-0", recipient="demo-1", body=b"x", now=NOW)
    with pytest.raises(auth.Unauthorized, match="signed for demo-1, this is demo-2"):
        verifier("demo-2").check(ring, header, body=b"x", now=NOW)


def test_the_replay_memory_forgets_expired_signatures_and_is_bounded() -> None:
    ring = auth.Keyring.of(b"k" * 32)
    check = auth.Verifier("b", not_before=0, capacity=3)
    for i in range(3):
        header = auth.sign(ring, sender="a", recipient="b", body=b"%d" % i, now=NOW + i / 1000)
        check.check(ring, header, body=b"%d" % i, now=NOW)
    late = auth.sign(ring, sender="a", recipient="b", body=b"late", now=NOW)
    with pytest.raises(auth.ReplayCacheFull):
        check.check(ring, late, body=b"late", now=NOW)
    # Past the window the old ones are forgotten (and could not be replayed anyway).
    later = NOW + WINDOW + 1
    fresh = auth.sign(ring, sender="a", recipient="b", body=b"late", now=later)
    check.check(ring, fresh, body=b"late", now=later)
    assert len(check) == 1


@FEW
@given(k1=keys, k2=keys, body=bodies)
def test_rotation_steps_never_refuse_a_signer_of_a_neighbouring_step(
    k1: bytes, k2: bytes, body: bytes
) -> None:
    """The three rings of the rotation procedure: each step's signer is accepted
    by every node of the step before and after it."""
    if k1 == k2:
        return
    steps = [
        auth.Keyring.of(k1),  # before
        auth.Keyring.of(k1, [k2]),  # 1: the new key accepted
        auth.Keyring.of(k2, [k1]),  # 2: the new key signs, the old one accepted
        auth.Keyring.of(k2),  # 3: the old key dropped
    ]
    for i in range(len(steps) - 1):
        for signer, receiver in ((steps[i], steps[i + 1]), (steps[i + 1], steps[i])):
            header = auth.sign(signer, sender="a", recipient="b", body=body, now=NOW)
            verifier("b").check(receiver, header, body=body, now=NOW)
    header = auth.sign(steps[0], sender="a", recipient="b", body=body, now=NOW)
    with pytest.raises(auth.Unauthorized, match="unknown key id"):
        verifier("b").check(steps[3], header, body=body, now=NOW)


def test_keys_are_checked_and_never_shown() -> None:
    with pytest.raises(auth.BadKey, match="empty"):
        auth.Keyring.of(b" \n")
    with pytest.raises(auth.BadKey, match="at least 32"):
        auth.Keyring.of(b"k" * 31)
    assert auth.parse_keys(b"\n" + b"a" * 32 + b", " + b"b" * 32 + b"\r\n\n", "f") == [
        b"a" * 32,
        b"b" * 32,
    ]
    with pytest.raises(auth.BadKey, match="entry 2"):
        auth.parse_keys(b"a" * 32 + b",short", "f")
    ring = auth.Keyring.of(b"s" * 40 + b"\n", [b"s" * 40, b"t" * 40])
    assert ring.accepted == (b"t" * 40,)
    assert ring.ids == [auth.key_id(b"s" * 40), auth.key_id(b"t" * 40)]
    assert "sss" not in repr(ring)


def _replace(path: Path, text: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(text)
    os.replace(tmp, path)


def test_key_files_are_re_read_when_they_change(tmp_path: Path) -> None:
    primary, accepted = tmp_path / "primary", tmp_path / "accepted"
    primary.write_bytes(b"1" * 32 + b"\n")
    files = keyfiles.KeyFiles(primary, accepted)  # a missing accepted file holds no key
    assert files.current.ids == [auth.key_id(b"1" * 32)]
    assert not files.refresh()
    _replace(accepted, b"2" * 32)  # an atomic rename, as the kubelet does
    assert files.refresh()
    assert files.current.ids == [auth.key_id(b"1" * 32), auth.key_id(b"2" * 32)]
    with primary.open("wb") as f:  # an edit in place
        f.write(b"2" * 32)
    _replace(accepted, b"1" * 32)
    assert files.refresh()
    assert files.current.primary_id == auth.key_id(b"2" * 32)
    # A bad change keeps the last good keyring and says why, until it is fixed.
    _replace(primary, b"short")
    assert not files.refresh()
    assert files.error is not None
    assert "at least 32" in files.error
    assert files.current.primary_id == auth.key_id(b"2" * 32)
    assert files.describe()["error"] == files.error
    _replace(primary, b"3" * 32)
    assert files.refresh()
    assert files.error is None
    assert files.current.primary_id == auth.key_id(b"3" * 32)
