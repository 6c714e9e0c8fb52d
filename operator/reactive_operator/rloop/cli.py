"""The command line of `kubectl-rloop` (run as `kubectl rloop ...`; docs/chaos.md).

    kubectl rloop status NAME [-o table|json] [-w]
    kubectl rloop history NAME [--since 5m] [-o table|json]
    kubectl rloop chaos NAME --duration 60s [--kill [N]] [--partition [N]] [--seed N] [--out DIR]
    kubectl rloop cleanup NAME

Common flags, before or after the command, as kubectl's: `--kubeconfig`,
`--context`, `-n/--namespace`; and `--via auto|proxy|port-forward` (how the
nodes are read), `--request-timeout`.

Exit status: 0 done (chaos: no violation), 1 a violation or a failure (one
line on stderr), 2 bad input, 130 interrupted (after cleaning up).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from reactive_node.core import contract as c
from reactive_node.core.codec import BadStateDocument, decode_state_document

from . import view

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG: Final = "kubectl rloop"


def _duration(text: str) -> float:
    try:
        return view.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return value


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """kubectl's flags; on the subcommands with SUPPRESS defaults, so that a flag
    given before the command is not overwritten by the subcommand's default."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--kubeconfig", default=default(None), help="kubeconfig file")
    parser.add_argument("--context", default=default(None), help="kubeconfig context")
    parser.add_argument(
        "-n", "--namespace", default=default(None), help="namespace (default: the context's)"
    )
    parser.add_argument(
        "--via",
        choices=("auto", "proxy", "port-forward"),
        default=default("auto"),
        help="how the nodes are read: the API server's pod proxy, a port-forward,"
        " or the proxy and, once it fails, port-forwards (default auto)",
    )
    parser.add_argument(
        "--request-timeout",
        type=_duration,
        default=default(3.0),
        help="bound of one read of a node (default 3s)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at and try a ReactiveLoop in a cluster (docs/chaos.md).",
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = sub.add_parser("status", help="the per-node table of a loop")
    status.add_argument("name", metavar="NAME", help="the ReactiveLoop")
    status.add_argument("-o", "--output", choices=("table", "json"), default="table")
    status.add_argument("-w", "--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument(
        "--interval", type=_duration, default=2.0, help="seconds between refreshes (default 2s)"
    )
    _common(status, suppress=True)

    hist = sub.add_parser("history", help="the decision histories of a loop's nodes")
    hist.add_argument("name", metavar="NAME", help="the ReactiveLoop")
    hist.add_argument(
        "--since",
        default=None,
        help="only entries changed since: a duration back (5m) or an RFC 3339 time",
    )
    hist.add_argument("-o", "--output", choices=("table", "json"), default="table")
    _common(hist, suppress=True)

    chaos = sub.add_parser("chaos", help="faults, then a verdict on the loop's invariants")
    chaos.add_argument("name", metavar="NAME", help="the ReactiveLoop")
    chaos.add_argument(
        "--duration", type=_duration, required=True, help="faults for this long (60s; at most 10m)"
    )
    chaos.add_argument(
        "--kill",
        type=_count,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help="delete a random node pod N times (default 1)",
    )
    chaos.add_argument(
        "--partition",
        type=_count,
        nargs="?",
        const=1,
        default=0,
        metavar="N",
        help="cut a random node pod off by a NetworkPolicy N times (default 1)",
    )
    chaos.add_argument("--seed", type=int, default=None, help="seed of the random plan")
    chaos.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for verdict.json and timeline.html (default ./rloop-chaos-NAME-<time>)",
    )
    _common(chaos, suppress=True)

    clean = sub.add_parser(
        "cleanup", help="delete what chaos runs against a loop left (after a kill -9)"
    )
    clean.add_argument("name", metavar="NAME", help="the ReactiveLoop")
    _common(clean, suppress=True)
    return parser


# ---------------------------------------------------------------- commands


def collect_rows(cluster: Any, reader: Any, loop: view.LoopInfo) -> list[view.NodeRow]:
    """Per ordinal: the pod and what its node serves (`/v1/state`, `/metrics`)."""
    from .kube import NodeReadError

    pods: dict[int, Any] = {}
    for pod in cluster.pods(loop.name):
        if pod.ordinal not in pods or pods[pod.ordinal].deleting:
            pods[pod.ordinal] = pod
    ordinals = range(max([loop.replicas, *(o + 1 for o in pods)]))

    def read(ordinal: int) -> view.NodeRow:
        pod = pods.get(ordinal)
        if pod is None:
            return view.NodeRow(ordinal)
        base: dict[str, Any] = {
            "ordinal": ordinal,
            "pod": pod.name,
            "pod_ready": pod.ready,
            "pod_phase": pod.phase,
            "restarts": pod.restarts,
        }
        try:
            state = decode_state_document(reader.get_json(pod.name, c.STATE_PATH))
        except NodeReadError as e:
            return view.NodeRow(**base, error=str(e))
        except BadStateDocument as e:
            return view.NodeRow(**base, error=f"{c.STATE_PATH}: {e}")
        waits = None
        with contextlib.suppress(NodeReadError, UnicodeDecodeError):
            waits = view.waits_by_reason(reader.get(pod.name, c.METRICS_PATH).decode())
        return view.NodeRow(
            **base,
            state=state,
            waits=waits,
            via=reader.pod_via.get(pod.name),
        )

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(ordinals)))) as pool:
        return list(pool.map(read, ordinals))


def cmd_status(args: argparse.Namespace, cluster: Any, reader: Any) -> int:
    while True:
        loop = cluster.loop(args.name)
        rows = collect_rows(cluster, reader, loop)
        if args.output == "json":
            text = json.dumps(view.status_document(loop, rows, reader.via), indent=2)
        else:
            text = view.render_status(loop, rows, time.time(), reader.via)
        if args.watch and args.output == "table" and sys.stdout.isatty():
            sys.stdout.write("\x1b[H\x1b[2J")
        print(text, flush=True)
        if not args.watch:
            return EXIT_OK
        time.sleep(args.interval)


def cmd_history(args: argparse.Namespace, cluster: Any, reader: Any) -> int:
    from .kube import NodeReadError

    query: list[tuple[str, str]] = []
    if args.since is not None:
        try:
            query.append(("since", view.since_query(args.since, time.time())))
        except ValueError as e:
            print(f"{PROG} history: {e}", file=sys.stderr)
            return EXIT_USAGE
    loop = cluster.loop(args.name)
    pods = sorted({p.name for p in cluster.pods(loop.name) if not p.deleting})

    def read(pod: str) -> tuple[str, Any, str | None]:
        try:
            return pod, reader.get_json(pod, c.HISTORY_PATH, query), None
        except NodeReadError as e:
            return pod, None, str(e)

    with ThreadPoolExecutor(max_workers=min(16, max(1, len(pods)))) as pool:
        results = list(pool.map(read, pods))
    docs = {pod: doc for pod, doc, _ in results if isinstance(doc, dict)}
    errors = {pod: why for pod, _, why in results if why is not None}
    if args.output == "json":
        doc = {
            "loop": loop.name,
            "namespace": loop.namespace,
            "via": reader.via,
            "nodes": docs,
            "errors": errors,
        }
        print(json.dumps(doc, indent=2))
    else:
        print(view.render_history(loop, docs, errors, reader.via))
    return EXIT_OK if docs or not pods else EXIT_FAILED


def cmd_chaos(args: argparse.Namespace, cluster: Any, reader: Any) -> int:
    from . import chaos

    loop = cluster.loop(args.name)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    try:
        plan = chaos.make_plan(args.duration, args.kill, args.partition, seed, loop.replicas)
    except ValueError as e:
        print(f"{PROG} chaos: {e}", file=sys.stderr)
        return EXIT_USAGE
    out = args.out or chaos.default_out_dir(loop.name, time.time())
    run = chaos.ClusterChaos(cluster, reader, loop, plan, out)
    print(
        f"{PROG} chaos: run {run.run_id} against {loop.namespace}/{loop.name}"
        f" for {plan.duration:g} s, seed {seed}: "
        + ", ".join(f"{f.kind} {f.ordinal} at {f.at:g} s" for f in plan.faults),
        file=sys.stderr,
        flush=True,
    )
    try:
        with chaos.signals_raise():
            result = run.run()
    except (KeyboardInterrupt, chaos.Interrupted) as e:
        print(
            f"{PROG} chaos: interrupted ({e or 'SIGINT'});"
            f" cleanup: {json.dumps(run.cleanup.to_json())}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    result["cleanup"] = run.cleanup.to_json()
    text = json.dumps(result, indent=2, sort_keys=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verdict.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    problems = []
    if not result["ok"]:
        problems.append(f"violations {result['violationCounts']}")
    if run.cleanup.left:
        problems.append(f"objects left: {', '.join(run.cleanup.left)}")
    uncut = [p["node"] for p in result["partitions"] if p["cut"] is False]
    if uncut:
        print(
            f"{PROG} chaos: the partition NetworkPolicy did not cut {', '.join(uncut)}:"
            " it kept making round trips (docs/chaos.md, 'In a cluster')",
            file=sys.stderr,
        )
    status = "; ".join(problems) or "no violations"
    print(f"{PROG} chaos: {status}; verdict and timeline in {out}", file=sys.stderr)
    return EXIT_FAILED if problems else EXIT_OK


def cmd_cleanup(args: argparse.Namespace, cluster: Any, reader: Any) -> int:
    from . import chaos

    names = cluster.policies(chaos.loop_selector(args.name))
    failed = []
    labelled = cluster.partitioned(args.name)
    for pod in labelled:
        try:
            cluster.set_partitioned(pod, None)
            print(f"pod/{pod} unlabelled ({c.PARTITIONED_LABEL})")
        except Exception as e:  # KubeError; reported, the others are still tried
            failed.append(f"{pod}: {e}")
    for name in names:
        try:
            cluster.delete_policy(name)
            print(f"networkpolicy/{name} deleted")
        except Exception as e:  # KubeError; reported, the others are still tried
            failed.append(f"{name}: {e}")
    for line in failed:
        print(f"{PROG} cleanup: {line}", file=sys.stderr)
    if not names and not labelled:
        print(f"nothing of kubectl-rloop left for {args.name} in {cluster.namespace}")
    return EXIT_FAILED if failed else EXIT_OK


COMMANDS: Final = {
    "status": cmd_status,
    "history": cmd_history,
    "chaos": cmd_chaos,
    "cleanup": cmd_cleanup,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .kube import Cluster, KubeError, NodeReader
    except ImportError as e:
        print(
            f"{PROG}: the Kubernetes client is missing ({e}): pip install 'reactive-loop[kubectl]'",
            file=sys.stderr,
        )
        return EXIT_FAILED
    try:
        cluster = Cluster(
            kubeconfig=args.kubeconfig, context=args.context, namespace=args.namespace
        )
    except KubeError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILED
    reader = NodeReader(cluster, args.via, args.request_timeout)
    try:
        return COMMANDS[args.command](args, cluster, reader)
    except KubeError as e:
        print(f"{PROG} {args.command}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `| head`: the reader has gone; no traceback
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    finally:
        reader.close()
        cluster.close()


if __name__ == "__main__":
    sys.exit(main())
