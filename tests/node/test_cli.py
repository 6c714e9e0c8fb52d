"""`reactive-loop` command line: bad input ends with a clear message and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from reactive_node import cli


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--nodes", "0"], "--nodes: must be between 1 and 200, got 0"),
        (["run", "--nodes", "five"], "--nodes: not a whole number: 'five'"),
        (["run", "--nodes", "1000"], "must be between 1 and 200"),
        (["run", "--behavior", "paxos"], "invalid choice: 'paxos'"),
        (["run", "--topology", "tree"], "invalid choice: 'tree'"),
        (["run", "--interval", "0"], "--interval: must be a positive number"),
        (["run", "--interval", "-1"], "--interval: must be a positive number"),
        (["run", "--duration", "soon"], "--duration: not a number: 'soon'"),
        (["run", "--view-port", "70000"], "--view-port: must be a port between 1 and 65535"),
        (["run", "--base-port", "65530", "--nodes", "10"], "leaves no room for 10 nodes"),
        (
            ["run", "--base-port", "9000", "--nodes", "5", "--view-port", "9002"],
            "--view-port falls inside the node port range",
        ),
        (["run", "--behavior", "token", "--topology", "mesh"], "token needs --topology ring"),
        (["run", "--loop", "no spaces"], "--loop must be a short name"),
        (["run", "--colour", "blue"], "unrecognized arguments: --colour blue"),
        (["set-target", "{not json"], "target is not valid JSON"),
        (["set-target", "1", "--peer", "localhost"], "expected HOST:PORT, got 'localhost'"),
        (["set-target", "1", "--peer", "localhost:0"], "must be a port between 1 and 65535"),
        (
            ["set-target", '"x"', "--peer", "a:1", "--state-dir", "d"],
            "not allowed with argument",
        ),
        (["set-target"], "the following arguments are required: target"),
        (["launch"], "invalid choice: 'launch'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert captured.out == ""


def test_oversized_target_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    target = '{"blob": "' + "x" * 20_000 + '"}'
    assert cli.main(["set-target", target, "--peer", "127.0.0.1:1"]) == 2
    assert "limit" in capsys.readouterr().err


def test_set_target_without_a_running_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["set-target", '{"v": 1}', "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no running loop found" in err
    assert str(tmp_path / "run.json") in err


def test_state_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    assert cli.main(["run", "--state-dir", str(not_a_dir)]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--help"]) == 0
    assert "--view-port" in capsys.readouterr().out


def test_installed_entry_point_exit_code() -> None:
    """The real console script, not only `main`: the shell sees 2 and one clear line."""
    script = Path(sys.executable).with_name("reactive-loop")
    done = subprocess.run(
        [str(script), "run", "--nodes", "-3"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "reactive-loop run: error: argument --nodes" in done.stderr
