"""A real local Kubernetes cluster for the tests (issue 2).

Control plane from the Go-built binaries (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler) plus a test kubelet that runs each
pod's command as a local process in its own network namespace. See
docs/testing.md. Entry points:

- CLI: `PYTHONPATH=tests python -m localcluster up|down|status|fault ...`
- `Cluster` (localcluster.cluster): kubectl/helm/wait_for/faults for tests.
- `Faults` (localcluster.faults): cut/restore/kill as a Python API.
"""

from localcluster.cluster import Cluster, WaitTimeout
from localcluster.config import ClusterConfig
from localcluster.faults import FaultError, Faults, PodHandle

__all__ = ["Cluster", "ClusterConfig", "FaultError", "Faults", "PodHandle", "WaitTimeout"]
