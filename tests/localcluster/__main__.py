"""CLI: `python -m localcluster up|down|restart|status|scratch-config`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster import control
from localcluster.config import ClusterConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="start the cluster (or reuse a running one)")
    sub.add_parser("down", help="stop everything and remove what it made")
    scratch = sub.add_parser(
        "scratch-config", help="write DIR/cluster.json for a second instance (RL_CLUSTER_CONFIG)"
    )
    scratch.add_argument("dir", type=Path)
    scratch.add_argument("--index", type=int, default=1, choices=range(1, 6))
    rs = sub.add_parser("restart", help="restart one component with the current code")
    rs.add_argument("component", choices=control.COMPONENTS)
    st = sub.add_parser("status", help="say what runs")
    st.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.cmd == "scratch-config":
        cfg = ClusterConfig.scratch(args.dir.resolve(), args.index)
        args.dir.mkdir(parents=True, exist_ok=True)
        cfg.config_file.write_text(cfg.to_json())
        print(cfg.config_file)
        return 0
    cfg = ClusterConfig.default()
    try:
        if args.cmd == "up":
            control.up(cfg)
        elif args.cmd == "down":
            control.down(cfg)
        elif args.cmd == "restart":
            control.restart(cfg, args.component)
        elif args.cmd == "status":
            report = control.status(cfg)
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                for name, pid in report["components"].items():
                    print(f"{name:24} {'running pid ' + str(pid) if pid else 'not running'}")
                print(f"{'apiserver /readyz':24} {'ok' if report['apiserver_ready'] else 'no'}")
                print(f"{'kubeconfig':24} {report['kubeconfig']}")
            return 0 if all(report["components"].values()) else 3
    except control.ClusterError as e:
        print(f"localcluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
