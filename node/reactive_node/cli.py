"""The `reactive-loop` command line.

One entry point with four subcommands:

* `node` runs one node process (the pod entrypoint); it hands its arguments to
  `reactive_node.runtime.server.main` untouched, so the node owns its own flags.
* `run` starts a whole loop as local processes on 127.0.0.1 (local mode), see
  `reactive_node.local`.
* `set-target` injects a new converge target into a running local loop by a
  round trip, the way the operator does it in a cluster.
* `chaos` plays timed faults against a running local loop and checks the
  invariants on the nodes' decision histories, see `reactive_node.local.chaos`.

Every check of user input happens here, before anything starts, so bad input
always ends the same way: one clear line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reactive_node.core import contract
from reactive_node.core.behaviors import Converge, InvalidState

DEFAULT_STATE_DIR = Path(".reactive-loop")
EXIT_USAGE = 2


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _node_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not contract.MIN_REPLICAS <= value <= contract.MAX_REPLICAS:
        raise argparse.ArgumentTypeError(
            f"must be between {contract.MIN_REPLICAS} and {contract.MAX_REPLICAS}, got {value}"
        )
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, got {value}")
    return value


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    _port(port)
    return text


def _json_target(text: str) -> Any:
    try:
        target = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"target is not valid JSON ({e.msg} at {e.pos})") from None
    try:  # the same check every node applies to a converge state it receives
        Converge().validate({"generation": 0, "target": target})
    except InvalidState as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return target


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reactive-loop",
        description="A distributed reactive loop: nodes that round-trip to peers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    node = sub.add_parser(
        "node",
        help="run one node process (the pod entrypoint; configured by RL_* variables)",
        add_help=False,
    )
    node.add_argument("node_args", nargs=argparse.REMAINDER)

    run = sub.add_parser("run", help="run a loop of N nodes as local processes on 127.0.0.1")
    run.add_argument("--nodes", type=_node_count, default=5, help="number of nodes (default 5)")
    run.add_argument("--behavior", choices=contract.BEHAVIORS, default="converge")
    run.add_argument("--topology", choices=contract.TOPOLOGIES, default="ring")
    run.add_argument("--interval", type=_positive_float, help="seconds between round trips")
    run.add_argument("--duration", type=_positive_float, help="stop after S seconds, summarise")
    run.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"state files, logs and the run file (default {DEFAULT_STATE_DIR}/)",
    )
    run.add_argument("--view-port", type=_port, help="serve the live web view on this port")
    run.add_argument("--json", action="store_true", help="print the final summary as JSON")
    run.add_argument(
        "--base-port", type=_port, help="node i listens on BASE+i (default: free ports)"
    )
    run.add_argument("--loop", default="local", help="loop name (default 'local')")
    run.add_argument(
        "--auth",
        action="store_true",
        help="sign round trips with the keys in STATE_DIR/hmac/ (a random key is made there"
        " if none exists; rewrite its files to rotate)",
    )
    run.add_argument(
        "--faults",
        action="store_true",
        help="give the nodes the fault switch STATE_DIR/faults.json, so `chaos` can cut links"
        " (tests only)",
    )

    target = sub.add_parser(
        "set-target", help="inject a new converge target into a running local loop"
    )
    target.add_argument("target", type=_json_target, help="the new target, as JSON")
    where = target.add_mutually_exclusive_group()
    where.add_argument(
        "--state-dir",
        type=Path,
        help=f"find the loop from its run file (default {DEFAULT_STATE_DIR}/)",
    )
    where.add_argument(
        "--peer",
        type=_host_port,
        action="append",
        help="HOST:PORT of a node (repeatable); tried in order",
    )
    target.add_argument("--timeout", type=_positive_float, default=2.0, help="per request")
    target.add_argument(
        "--hmac-key-file",
        type=Path,
        help="sign with the key in this file (default: STATE_DIR/hmac/primary if it exists)",
    )
    chaos = sub.add_parser(
        "chaos",
        help="inject faults into a running local loop and check its invariants",
        description="Kill, pause and partition the nodes of a running local loop, inject"
        " converge targets, collect the nodes' decision histories and check the invariants"
        " (docs/chaos.md). Prints the verdict as JSON; exit 1 on any violation.",
    )
    chaos.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"the loop's state dir (default {DEFAULT_STATE_DIR}/)",
    )
    chaos.add_argument("--scenario", type=Path, help="a JSON or YAML scenario file")
    chaos.add_argument("--duration", type=_positive_float, help="seconds of faults (max 600)")
    chaos.add_argument("--kill", type=_count, default=0, help="kill -9 this many times")
    chaos.add_argument("--pause", type=_count, default=0, help="pause (SIGSTOP) this many times")
    chaos.add_argument("--partition", type=_count, default=0, help="cut this many partitions")
    chaos.add_argument("--seed", type=int, default=0, help="seed of the random scenario")
    chaos.add_argument("--out", type=Path, help="also write the verdict JSON to this file")
    chaos.add_argument(
        "--html", type=Path, help="the timeline page (default STATE_DIR/chaos-<time>.html)"
    )
    return parser


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, got {value}")
    return value


def _chaos(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from reactive_node.local import chaos, runfile

    flags = args.duration is not None or args.kill or args.pause or args.partition
    if args.scenario is not None and flags:
        parser.error("give either --scenario or --duration/--kill/--pause/--partition")
    try:
        if args.scenario is not None:
            scenario = chaos.load_scenario(args.scenario)
        else:
            if args.duration is None:
                parser.error("give --scenario FILE or --duration S")
            try:
                nodes = len(runfile.read_run_file(args.state_dir).addresses)
            except runfile.RunFileError as e:
                parser.error(str(e))
            scenario = chaos.scenario_from_flags(
                args.duration, args.kill, args.pause, args.partition, args.seed, nodes
            )
    except chaos.ScenarioError as e:
        parser.error(str(e))
    return asyncio.run(chaos.chaos_command(args.state_dir, scenario, out=args.out, html=args.html))


def _check_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.behavior == "token" and args.topology != "ring":
        parser.error("--behavior token needs --topology ring (the token circulates round a ring)")
    if args.base_port is not None and args.base_port + args.nodes - 1 > 65535:
        parser.error(f"--base-port {args.base_port} leaves no room for {args.nodes} nodes")
    if (
        args.view_port is not None
        and args.base_port is not None
        and args.base_port <= args.view_port < args.base_port + args.nodes
    ):
        parser.error("--view-port falls inside the node port range")
    if not contract.is_local_loop_name(args.loop or ""):
        parser.error(f"--loop must be a short name of letters, digits and '-', got {args.loop!r}")
    if args.state_dir.exists() and not args.state_dir.is_dir():
        parser.error(f"--state-dir {args.state_dir} exists and is not a directory")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv[:1] == ["node"]:
        # The node parses its own flags: pass them through untouched.
        from reactive_node.runtime import server

        return int(server.main(argv[1:]) or 0)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 0 for --help, 2 for bad input
        return int(e.code or 0)
    try:
        return _dispatch(parser, args)
    except SystemExit as e:
        return int(e.code or 0)


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from reactive_node.core import auth
    from reactive_node.local import inject, runfile, supervisor
    from reactive_node.runtime import keyfiles

    if args.command == "run":
        _check_run(parser, args)
        options = runfile.RunOptions(
            nodes=args.nodes,
            behavior=args.behavior,
            topology=args.topology,
            interval=args.interval,
            duration=args.duration,
            state_dir=args.state_dir,
            view_port=args.view_port,
            json_summary=args.json,
            base_port=args.base_port,
            loop=args.loop,
            auth=args.auth,
            faults=args.faults,
        )
        return asyncio.run(supervisor.run(options))
    if args.command == "chaos":
        return _chaos(parser, args)
    if args.command == "set-target":
        state_dir: Path | None = None
        if args.peer:
            addresses = list(args.peer)
        else:
            state_dir = args.state_dir or DEFAULT_STATE_DIR
            try:
                addresses = runfile.read_run_file(state_dir).addresses
            except runfile.RunFileError as e:
                parser.error(str(e))
        key_file: Path | None = args.hmac_key_file
        if key_file is None and state_dir is not None:
            primary = runfile.key_files(state_dir)[0]
            key_file = primary if primary.exists() else None
        keys = None
        if key_file is not None:
            try:
                keys = keyfiles.load_keyring(key_file)
            except auth.BadKey as e:
                parser.error(str(e))
        return asyncio.run(
            inject.set_target_command(
                args.target,
                addresses,
                request_timeout=args.timeout,
                state_dir=state_dir,
                keys=keys,
            )
        )
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks choices
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
