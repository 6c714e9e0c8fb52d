"""`kubectl rloop`: look at and try a ReactiveLoop in a cluster (docs/chaos.md).

A kubectl plugin (the console script `kubectl-rloop`) on the official,
synchronous `kubernetes` client, with the user's kubeconfig and context:

* `view` — pure: parsing of durations and times, the status and history
  tables (no I/O, no Kubernetes client);
* `kube` — the only module that imports `kubernetes` (import-linter): the
  loop, its pods, the node endpoints through the API server's pod proxy or a
  port-forward, pod deletion, the chaos run's NetworkPolicies;
* `chaos` — `kubectl rloop chaos`: faults the Kubernetes way, then the
  verdict of `reactive_node.core.verdict` and the page of `reactive_node.core.timeline`;
* `cli` — the command line.
"""
