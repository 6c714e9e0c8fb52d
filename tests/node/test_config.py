"""Node configuration from environment and flags, and the `reactive-loop node` process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from reactive_node.core import contract
from reactive_node.runtime.config import SETTINGS, ConfigError, load_config
from reactive_node.runtime.server import main


def test_environment_then_flags() -> None:
    env = {
        contract.ENV_LOOP: "demo",
        contract.ENV_ORDINAL: "2",
        contract.ENV_REPLICAS: "5",
        contract.ENV_PEER_TEMPLATE: "demo-{ordinal}.demo.ns.svc.cluster.local:8080",
        contract.ENV_INTERVAL: "0.5",
        contract.ENV_TIMEOUT: "0.2",
        contract.ENV_BEHAVIOR: "token",
        contract.ENV_HMAC_KEY_FILE: "/keys/primary",
    }
    config = load_config(["--interval", "2", "--topology", "mesh"], env)
    assert config.loop == "demo"
    assert config.node == "demo-2"
    assert config.ordinal == 2
    assert config.replicas == 5
    assert config.interval == 2.0
    assert config.timeout == 0.2
    assert config.topology == "mesh"
    assert config.behavior == "token"
    assert config.hmac_key_file == Path("/keys/primary")
    assert config.signed
    assert config.peer_address(4) == "demo-4.demo.ns.svc.cluster.local:8080"
    assert config.node_name(4) == "demo-4"


def test_peers_list_and_file_store(tmp_path: Path) -> None:
    env = {
        contract.ENV_PEERS: "127.0.0.1:9000, 127.0.0.1:9001,127.0.0.1:9002",
        contract.ENV_ORDINAL: "1",
        contract.ENV_STATE_DIR: str(tmp_path),
    }
    config = load_config([], env)
    assert config.replicas == 3
    assert config.peer_address(2) == "127.0.0.1:9002"
    assert config.store == "file"


def test_every_setting_has_an_env_var_and_a_flag() -> None:
    fields = {field for field, *_ in SETTINGS}
    from reactive_node.runtime.config import NodeConfig

    assert fields == set(NodeConfig.__struct_fields__)
    envs = [env for _, env, _, _ in SETTINGS]
    assert all(env.startswith("RL_") for env in envs)
    assert len(set(envs)) == len(envs)
    doc = (Path(__file__).parents[2] / "docs" / "node.md").read_text()
    for _, env, flag, _ in SETTINGS:
        assert f"`{env}`" in doc, env
        assert f"`{flag}`" in doc, flag


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--interval", "-1"], {}),
        (["--interval", "soon"], {}),
        (["--topology", "tree"], {}),
        (["--store", "file"], {}),
        (["--store", "pod"], {}),
        (["--peer-template", "demo.svc:8080"], {}),
        (["--ordinal", "3"], {contract.ENV_PEERS: "a:1,b:2"}),
        (["--replicas", "3"], {contract.ENV_PEERS: "a:1,b:2"}),
        (["--port", "70000"], {}),
        (["--token-hold", "30", "--token-loss-timeout", "20"], {}),
    ],
)
def test_bad_configuration_is_rejected(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(argv, env)


def test_a_key_in_the_environment_is_refused() -> None:
    with pytest.raises(ConfigError, match="RL_HMAC_KEY_FILE"):
        load_config([], {contract.ENV_HMAC_KEY_LEGACY: "x" * 64})


def test_accepted_keys_need_a_primary_and_signed_names_are_plain() -> None:
    with pytest.raises(ConfigError, match="hmac_key_file"):
        load_config(["--hmac-accepted-file", "/k/accepted"], {})
    with pytest.raises(ConfigError, match="letters, digits"):
        load_config(["--hmac-key-file", "/k/primary", "--loop", "a b"], {})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the key is empty"),
        (b"  \n", "the key is empty"),
        (b"short-key\n", "has 9 bytes; at least 32"),
        (None, "cannot read HMAC key file"),
    ],
)
def test_main_refuses_an_empty_short_or_missing_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes | None, message: str
) -> None:
    key = tmp_path / "primary"
    if content is not None:
        key.write_bytes(content)
    assert main(["--hmac-key-file", str(key)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert str(key) in err, err


def test_main_refuses_a_short_accepted_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "primary").write_bytes(b"p" * 32)
    (tmp_path / "accepted").write_bytes(b"a" * 40 + b"\n,tiny\n")
    argv = ["--hmac-key-file", str(tmp_path / "primary")]
    assert main([*argv, "--hmac-accepted-file", str(tmp_path / "accepted")]) == 2
    assert "entry 3" in capsys.readouterr().err


def test_main_exits_2_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--behavior", "python:no_such_module_xyz:Thing"]) == 2
    assert "no_such_module_xyz" in capsys.readouterr().err
    assert main(["--interval", "0"]) == 2
    assert "interval" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            status: int = r.status
            return status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.mark.processes
def test_node_process_serves_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        contract.ENV_LOOP: "proc",
        contract.ENV_PEERS: f"127.0.0.1:{port}",
        contract.ENV_BIND: "127.0.0.1",
        contract.ENV_PORT: str(port),
        contract.ENV_STATE_DIR: str(tmp_path),
    }
    code = "import sys; from reactive_node.runtime.server import main; sys.exit(main())"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 20
        while _get(f"http://127.0.0.1:{port}{contract.READY_PATH}") != 200:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "node not ready"
            time.sleep(0.05)
        assert _get(f"http://127.0.0.1:{port}{contract.STATE_PATH}") == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        err = proc.stderr.read() if proc.stderr else ""
        assert "stopping" in err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
