"""CLI: `python -m localcluster up|down|status|fault cut|restore|kill ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from localcluster import control
from localcluster.config import ClusterConfig
from localcluster.faults import FaultError, Faults, split_ref


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
    fault = sub.add_parser("fault", help="inject a fault into a pod ([NS/]POD)")
    fsub = fault.add_subparsers(dest="fault", required=True)
    cut = fsub.add_parser("cut", help="cut the pod off the network (or only from --peer)")
    cut.add_argument("pod")
    cut.add_argument("--peer", help="another pod of the same namespace")
    cut.add_argument("--all", action="store_true", help="also cut the host (probes, apiserver)")
    restore = fsub.add_parser("restore", help="undo every cut of the pod")
    restore.add_argument("pod")
    kill = fsub.add_parser("kill", help="SIGKILL the pod's container process(es)")
    kill.add_argument("pod")
    kill.add_argument("--container")
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
                if report["apiserver_ready"]:
                    print(f"{'node Ready':24} {report['node_ready']}")
                    for line in report["pods"]:
                        print(f"  pod {line}")
                print(f"{'pod netns':24} {len(report['netns'])}")
                print(f"{'kubeconfig':24} {report['kubeconfig']}")
            return 0 if all(report["components"].values()) else 3
        else:
            faults = Faults(cfg)
            ns, name = split_ref(args.pod)
            if args.fault == "cut":
                faults.cut(ns, name, peer=args.peer, include_host=args.all)
            elif args.fault == "restore":
                faults.restore(ns, name)
            else:
                pids = faults.kill(ns, name, container=args.container)
                print(" ".join(map(str, pids)))
    except (control.ClusterError, FaultError) as e:
        print(f"localcluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
