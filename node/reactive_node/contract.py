"""The contract between a node, the operator and the chart.

Everything another component relies on lives here and nowhere else: annotation
keys, labels, environment variable names, the HTTP port and paths, and metric
names. The operator imports this module; the node never imports the operator.
Changing a value here is a wire or API change.
"""

from __future__ import annotations

from typing import Final

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

# --- labels ------------------------------------------------------------------
LOOP_LABEL: Final = ANNOTATION_PREFIX + "loop"
ORDINAL_LABEL: Final = ANNOTATION_PREFIX + "ordinal"
COMPONENT_LABEL: Final = "app.kubernetes.io/component"
NODE_COMPONENT: Final = "node"

# --- HTTP ------------------------------------------------------------------
DEFAULT_PORT: Final = 8080
ROUNDTRIP_PATH: Final = "/v1/roundtrip"
STATE_PATH: Final = "/v1/state"
METRICS_PATH: Final = "/metrics"
HEALTH_PATH: Final = "/healthz"
READY_PATH: Final = "/readyz"
MAX_BODY_BYTES: Final = 64 * 1024
#: HMAC-SHA256 of the raw request body, hex, as "sha256=<hex>".
SIGNATURE_HEADER: Final = "X-Reactive-Loop-Signature"
#: Name the operator uses as "from" when it injects a target by a round trip.
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
ENV_INTERVAL: Final = "RL_INTERVAL"  # seconds between round trips
ENV_TIMEOUT: Final = "RL_TIMEOUT"  # round-trip timeout, seconds
ENV_MAX_BACKOFF: Final = "RL_MAX_BACKOFF"  # seconds
ENV_RING_SKIP: Final = "RL_RING_SKIP"  # unreachable successors a ring may skip
ENV_TOKEN_HOLD: Final = "RL_TOKEN_HOLD_SECONDS"
ENV_TOKEN_LOSS_TIMEOUT: Final = "RL_TOKEN_LOSS_TIMEOUT"
ENV_TOKEN_WEBHOOK: Final = "RL_TOKEN_WEBHOOK"  # URL; POST {node, epoch, event}
ENV_HMAC_KEY: Final = "RL_HMAC_KEY"  # from the loop's Secret when auth is on
HMAC_SECRET_KEY: Final = "hmac-key"  # key inside the per-loop Secret
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
M_PHASE: Final = "reactive_loop_node_phase"  # + phase (looping|waiting|starting), 0/1
M_INFO: Final = "reactive_loop_node_info"  # + behavior, topology; always 1

# Wait reasons (bounded label values).
WAIT_REASONS: Final = (
    "timeout",
    "refused",
    "unreachable",
    "stale",
    "rejected",
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
