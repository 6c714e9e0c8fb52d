"""The contract between a node, the operator and the chart.

Everything another component relies on lives here and nowhere else: annotation
keys, labels, environment variable names, the HTTP port and paths, and metric
names. The operator imports this module; the node never imports the operator.
Changing a value here is a wire or API change.
"""

from __future__ import annotations

from typing import Final, Literal

API_GROUP: Final = "reactive-loop.dev"
API_VERSION: Final = "v1alpha1"
KIND: Final = "ReactiveLoop"
PLURAL: Final = "reactiveloops"

# --- pod annotations -------------------------------------------------------
ANNOTATION_PREFIX: Final = "reactive-loop.dev/"
#: Node-owned. The behaviour state as one JSON object. Only the node writes it
#: (a human may `kubectl annotate` it; the node validates what it reads).
STATE_ANNOTATION: Final = ANNOTATION_PREFIX + "state"
#: Operator-owned. Current replica count of the loop, so a node learns its ring
#: size without a restart when the loop scales.
REPLICAS_ANNOTATION: Final = ANNOTATION_PREFIX + "replicas"
#: Operator-owned. Hash of the pod template inputs; a change rolls the pod.
SPEC_HASH_ANNOTATION: Final = ANNOTATION_PREFIX + "spec-hash"
#: Operator-owned. "true" while the loop is suspended (`spec.suspend`): the node
#: then starts no round trip (it still answers); any other value or none: it runs.
SUSPENDED_ANNOTATION: Final = ANNOTATION_PREFIX + "suspended"
#: Operator-owned. A target the operator injects, `{"generation": G, "target": T}`
#: as JSON, written on one node pod; the node checks it like a round trip's state
#: and merges it (docs/node.md, "Injected targets"). A node never writes it: its
#: admission policy allows it only the state annotation.
INJECT_ANNOTATION: Final = ANNOTATION_PREFIX + "inject"

# --- labels ------------------------------------------------------------------
LOOP_LABEL: Final = ANNOTATION_PREFIX + "loop"
ORDINAL_LABEL: Final = ANNOTATION_PREFIX + "ordinal"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
NODE_COMPONENT: Final = "node"
#: Set on a node pod by `kubectl rloop chaos` while it cuts the pod off: the
#: loop's NetworkPolicy neither selects such a pod nor admits it as a peer (so
#: the chaos run's deny-all policy is the only one that applies to it).
PARTITIONED_LABEL: Final = ANNOTATION_PREFIX + "partitioned"

# --- HTTP ------------------------------------------------------------------
DEFAULT_PORT: Final = 8080
ROUNDTRIP_PATH: Final = "/v1/roundtrip"
STATE_PATH: Final = "/v1/state"
METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"
#: The node's decision history (reactive_node.core.history; docs/node.md).
HISTORY_PATH: Final = "/v1/history"
#: Request header of a round trip: the highest protocol version the sender
#: speaks. A version 2 node answers a version 1 body in version 2 when it is
#: there (version 1 nodes ignore it); docs/node.md, "Protocol version".
PROTOCOL_HEADER: Final = "X-Reactive-Loop-Protocol"
#: Key of the decision history's tail inside the stored state object (the state
#: annotation or file); the node takes it out before it validates the state.
HISTORY_STATE_KEY: Final = ANNOTATION_PREFIX + "history"
MAX_BODY_BYTES: Final = 64 * 1024
MAX_NODE_ANSWER_BYTES: Final = 1024 * 1024
"""The most a node client reads of any node's answer: a `/v1/history` page
stays under ~512 KiB, a `/v1/state` document far under; more is an error,
so a node (or something posing as one) cannot fill the reader's memory."""
#: Seconds a client has to finish sending a request's headers (and that an idle
#: keep-alive connection is kept); then the connection is closed.
HEADER_TIMEOUT_SECONDS: Final = 30.0
#: Seconds a client has to finish sending a round-trip body; then `408 timeout`.
BODY_TIMEOUT_SECONDS: Final = 10.0

# --- bounds of every number on the wire and in stored state (docs/node.md) -------
#: Largest integer anywhere in a behaviour state (body, answer, annotation, file):
#: 2^53 - 1 fits a Kubernetes int64 status field, is exact as a Prometheus sample
#: (float64) and as a number in JavaScript and other JSON readers.
MAX_STATE_INT: Final = 2**53 - 1
#: Largest `boot` and `seq` of a round trip (int64; `boot` is nanoseconds since
#: the epoch and also bounded by the receiver's clock, below).
MAX_WIRE_INT: Final = 2**63 - 1
#: How far ahead of the receiver's clock a sender's `boot` may be (clock skew).
BOOT_SKEW_SECONDS: Final = 300
#: Deepest nesting of arrays and objects in a state (the state object is level 1).
MAX_STATE_DEPTH: Final = 32
# --- names and limits ------------------------------------------------------------
# One home for them: the CLI, the operator's spec, the node's config, topology,
# builders and local mode import these; the chart's CRD repeats the numbers
# (tests/operator/test_operator_crd.py checks that they are equal).
#: The built-in behaviours; any other is custom, `python:package.module:Class`.
BEHAVIORS: Final = ("converge", "token")
CUSTOM_BEHAVIOR_PREFIX: Final = "python:"
#: The topologies, as a type (`TopologyName`) and as values (`TOPOLOGIES`);
#: tests/node/test_contract.py checks that they list the same names.
TopologyName = Literal["ring", "mesh", "star"]
TOPOLOGIES: Final = ("ring", "mesh", "star")
#: Fewest and most nodes of a loop: `spec.replicas` (the CRD and the operator),
#: `reactive-loop run --nodes`, and the loop size a node adopts from the
#: replicas annotation.
MIN_REPLICAS: Final = 1
MAX_REPLICAS: Final = 200
#: A ReactiveLoop's name: a DNS-1035 label of at most `MAX_LOOP_NAME` characters,
#: so `<name>-<ordinal>` and the names of its other objects stay valid.
LOOP_NAME_PATTERN: Final = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_LOOP_NAME: Final = 40
#: A local loop's name (`reactive-loop run --loop`): letters, digits and '-',
#: at most this many characters.
MAX_LOCAL_LOOP_NAME: Final = 63


def node_name(loop: str, ordinal: int) -> str:
    """The name of a loop's node, and in a cluster of its pod: `<loop>-<ordinal>`."""
    return f"{loop}-{ordinal}"


def is_local_loop_name(name: str) -> bool:
    """Whether `name` can name a local loop (`MAX_LOCAL_LOOP_NAME`)."""
    return 0 < len(name) <= MAX_LOCAL_LOOP_NAME and name.replace("-", "").isalnum()


#: The signature of a round trip when the loop has a key (reactive_node.core.auth):
#: "v1 keyid=<8 hex> ts=<unix ms> from=<sender> to=<recipient> sig=<64 hex>".
SIGNATURE_HEADER: Final = "X-Reactive-Loop-Signature"
#: A signed request's timestamp must be within this many seconds of the receiver's clock.
SIGNATURE_WINDOW_SECONDS: Final = 30
#: Signatures a node remembers within the window to refuse replays (then 503).
SIGNATURE_CACHE_SIZE: Final = 16384
#: Shortest HMAC key a node, the operator or set-target accepts (bytes).
HMAC_MIN_KEY_BYTES: Final = 32
#: The "from" of a target injected by a round trip: local mode's `set-target`
#: and operators before the inject annotation (INJECT_ANNOTATION) was used.
OPERATOR_SENDER: Final = "reactive-loop-operator"

# --- node configuration (environment of `reactive-loop node`) -------------
ENV_LOOP: Final = "RL_LOOP"
ENV_NODE: Final = "RL_NODE"  # pod name, e.g. demo-3
ENV_ORDINAL: Final = "RL_ORDINAL"
ENV_REPLICAS: Final = "RL_REPLICAS"  # initial; REPLICAS_ANNOTATION overrides
ENV_NAMESPACE: Final = "RL_NAMESPACE"
ENV_POD_NAME: Final = "RL_POD_NAME"
ENV_BEHAVIOR: Final = "RL_BEHAVIOR"  # converge | token | python:pkg.mod:Class
ENV_TOPOLOGY: Final = "RL_TOPOLOGY"  # ring | mesh | star
#: Peer address template; "{ordinal}" is replaced, e.g.
#: "demo-{ordinal}.demo.default.svc.cluster.local:8080".
ENV_PEER_TEMPLATE: Final = "RL_PEER_TEMPLATE"
ENV_PEERS: Final = "RL_PEERS"  # explicit comma-separated host:port list (local mode)
ENV_PORT: Final = "RL_PORT"
ENV_BIND: Final = "RL_BIND"
ENV_STORE: Final = "RL_STORE"  # pod | file | memory
ENV_STATE_DIR: Final = "RL_STATE_DIR"
ENV_DECISION_FILE: Final = "RL_DECISION_FILE"  # the decision file (docs/node.md)
ENV_INTERVAL: Final = "RL_INTERVAL"  # seconds between round trips
ENV_TIMEOUT: Final = "RL_TIMEOUT"  # round-trip timeout, seconds
ENV_MAX_BACKOFF: Final = "RL_MAX_BACKOFF"  # seconds
ENV_RING_SKIP: Final = "RL_RING_SKIP"  # unreachable successors a ring may skip
ENV_TOKEN_HOLD: Final = "RL_TOKEN_HOLD_SECONDS"
ENV_TOKEN_LOSS_TIMEOUT: Final = "RL_TOKEN_LOSS_TIMEOUT"
#: Seconds a token holder acts after a majority vouched for it (default 3 intervals).
ENV_TOKEN_LEASE: Final = "RL_TOKEN_LEASE_SECONDS"
ENV_TOKEN_WEBHOOK: Final = "RL_TOKEN_WEBHOOK"  # URL; POST {node, epoch, event}
#: Comma-separated host names the token webhook may be on; empty: any host.
ENV_TOKEN_WEBHOOK_ALLOWED_HOSTS: Final = "RL_TOKEN_WEBHOOK_ALLOWED_HOSTS"
#: Bound of one webhook call (connect, send, answer), seconds; then it has failed.
TOKEN_WEBHOOK_TIMEOUT_SECONDS: Final = 2.0
#: The `to` of a signed webhook call (docs/node.md, "The token webhook").
TOKEN_WEBHOOK_RECIPIENT: Final = "token-webhook"
#: File holding the key this node signs with (and accepts); auth is on when set.
ENV_HMAC_KEY_FILE: Final = "RL_HMAC_KEY_FILE"
#: File of more keys this node accepts (newline or comma separated; may be absent).
ENV_HMAC_ACCEPTED_FILE: Final = "RL_HMAC_ACCEPTED_FILE"
#: No longer read: a node given a key in its environment refuses to start.
ENV_HMAC_KEY_LEGACY: Final = "RL_HMAC_KEY"
#: Local mode's fault switch (`run --faults`): a JSON file of blocked links the
#: node re-reads once per interval (docs/chaos.md). Refused with the pod store.
ENV_FAULTS_FILE: Final = "RL_FAULTS_FILE"
#: Keys inside the per-loop Secret `<loop>-hmac`, mounted as files in HMAC_MOUNT_DIR.
HMAC_SECRET_PRIMARY: Final = "primary"
HMAC_SECRET_ACCEPTED: Final = "accepted"
#: Where a node pod mounts the loop's Secret (read-only; the kubelet updates it).
HMAC_MOUNT_DIR: Final = "/var/run/reactive-loop/hmac"
#: Where node pods mount their decision volume (an emptyDir sidecars mount too),
#: and the decision file in it (docs/node.md, "The decision file").
DECISION_MOUNT_DIR: Final = "/var/run/reactive-loop/decision"
DECISION_FILE: Final = "/var/run/reactive-loop/decision/state.json"
#: The cluster CA a pod's ServiceAccount volume holds (the API server's issuer).
SERVICE_ACCOUNT_CA: Final = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

# --- metrics (node) ----------------------------------------------------------
# Every node metric has the labels {loop, node}; listed extra labels follow.
M_LOOPS: Final = "reactive_loop_loops_total"
M_WAITS: Final = "reactive_loop_waits_total"  # + reason
M_ROUNDTRIP_SECONDS: Final = "reactive_loop_roundtrip_duration_seconds"
M_REQUESTS: Final = "reactive_loop_requests_served_total"  # + outcome
M_STATE_WRITES: Final = "reactive_loop_state_writes_total"  # + result
M_STATE_INVALID: Final = "reactive_loop_state_invalid_total"
M_GENERATION: Final = "reactive_loop_converge_generation"
M_TOKEN_HOLDER: Final = "reactive_loop_token_holder"  # 1 while holding
M_TOKEN_EPOCH: Final = "reactive_loop_token_epoch"  # term of the newest epoch seen
M_LAST_LOOP: Final = "reactive_loop_last_loop_timestamp_seconds"
M_PHASE: Final = "reactive_loop_node_phase"  # + phase (looping|waiting|starting|suspended), 0/1
M_INFO: Final = "reactive_loop_node_info"  # + behavior, topology; always 1

# Wait reasons (bounded label values).
WAIT_REASONS: Final = (
    "timeout",
    "refused",
    "unreachable",
    "stale",
    "rejected",
    "unauthorized",
    "server_error",
    "no_peer",
)
# Served request outcomes (bounded label values).
REQUEST_OUTCOMES: Final = (
    "ok",
    "bad_request",
    "unauthorized",
    "too_large",
    "stale",
    "wrong_loop",
    "unavailable",
)

# --- metrics (operator) ------------------------------------------------------
M_OP_RECONCILES: Final = "reactive_loop_operator_reconciles_total"  # + result
M_OP_RECONCILE_SECONDS: Final = "reactive_loop_operator_reconcile_duration_seconds"
M_OP_INJECTIONS: Final = "reactive_loop_operator_target_injections_total"  # + result
M_OP_LOOPS: Final = "reactive_loop_operator_managed_loops"
