"""Render, as one multi-document YAML, every object the operator creates for
a loop, with the operator's own builders (operator/reactive_operator/builders.py)
and its default configuration: what `hack/checkov.sh` scans besides the chart.

Three loops cover every branch of the builders: a signed converge loop (the
HMAC Secret and its volume), a token loop with a webhook (its env and egress
rule) and a loop of a custom behaviour with its own image.

    .venv/bin/python hack/render_children.py [OUT.yaml]   # default: stdout
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from reactive_operator import builders, config
from reactive_operator.spec import parse_spec

NAMESPACE = "apps"
LOOPS: dict[str, dict[str, Any]] = {
    "demo": {
        "replicas": 3,
        "behavior": "converge",
        "topology": "ring",
        "target": {"version": "v1"},
        "auth": {"hmac": True},
    },
    "relay": {
        "replicas": 3,
        "behavior": "token",
        "topology": "ring",
        "token": {"holdSeconds": 2, "lossTimeoutSeconds": 15, "webhook": "http://10.0.0.9:9000/f"},
    },
    "custom": {
        "replicas": 2,
        "behavior": "python:my_behaviors.counter:Counter",
        "topology": "mesh",
        "image": "registry.example.com/reactive-loop/custom-node:1.0.0",
    },
}


def children() -> list[dict[str, Any]]:
    cfg = config.load({"RLO_LEASE_NAMESPACE": "reactive-loop-system"})
    defaults = builders.NodeDefaults(cfg.node_image, cfg.node_image_pull_policy)
    objects: list[dict[str, Any]] = []
    for i, (name, raw) in enumerate(LOOPS.items()):
        owner = builders.Owner(
            name=name, namespace=NAMESPACE, uid=f"00000000-0000-0000-0000-00000000000{i}"
        )
        spec = parse_spec(raw)
        objects.append(builders.service(owner))
        objects.append(builders.network_policy(owner, spec, cfg.node_network))
        if spec.auth.hmac:
            objects.append(builders.hmac_secret(owner, b"0" * 64))
        for ordinal in range(spec.replicas):
            objects.extend(builders.node_rbac(owner, ordinal))
            objects.append(builders.pod(owner, spec, ordinal, defaults))
    return objects


def main(argv: list[str]) -> int:
    text = yaml.safe_dump_all(children(), sort_keys=False)
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
