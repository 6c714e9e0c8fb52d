"""A real local Kubernetes control plane for the tests that need only an API server.

etcd, kube-apiserver and kube-controller-manager from the Go-built binaries
(hack/build-tools.sh); no node runs, so no pod ever starts here. Everything
with pods (images, kubelet, NetworkPolicy, faults) is the kind tier's. See
docs/testing.md. Entry points:

- CLI: `PYTHONPATH=tests python -m localcluster up|down|restart|status`
- `Cluster` (localcluster.cluster): kubectl/helm/get/apply/wait_for for tests.
"""

from localcluster.cluster import Cluster, WaitTimeout
from localcluster.config import ClusterConfig

__all__ = ["Cluster", "ClusterConfig", "WaitTimeout"]
