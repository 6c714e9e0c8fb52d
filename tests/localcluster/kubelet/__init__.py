"""The test kubelet: runs the pods bound to the local cluster's one Node.

Each pod gets a network namespace with its own address on the cluster bridge,
a mount namespace per container in which /etc/hosts, /etc/resolv.conf and the
ServiceAccount directory are bind-mounted from the pod's directory under
`.local-cluster/pods/<uid>/`, and each container's command runs as a local
process from the checkout's virtualenv. Module map:

- `api`      — a small aiohttp client for the Kubernetes API (admin identity).
- `specs`    — pure functions: env, hosts file, resolv.conf, pod status.
- `runtime`  — one `PodWorker` per pod: sandbox, containers, probes, deletion.
- `agent`    — the Node, its Lease, the pod/service watches and DNS updates.
"""
