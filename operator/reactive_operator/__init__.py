"""reactive-loop operator: runs ReactiveLoop resources as node pods (kopf).

Layers: pure logic (`spec`, `builders`, `plan`, `status`, `config`) never does
I/O; `kube` is the only module that talks to the Kubernetes API; `nodes`
talks HTTP to the node pods; `handlers` wires kopf to both; `main` starts it.
"""
