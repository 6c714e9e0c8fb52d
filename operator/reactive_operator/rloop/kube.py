"""The Kubernetes side of `kubectl rloop`, on the official synchronous client.

The only module of the project that imports `kubernetes` (an import-linter
contract; the node never imports a Kubernetes client, and the operator runs
on kubernetes_asyncio). It loads the user's kubeconfig and context, finds a
loop and its pods, reads the node endpoints, deletes pods and creates and
deletes the chaos run's NetworkPolicies.

Reading a node (`NodeReader`): the API server's pod proxy
(`/api/v1/namespaces/NS/pods/POD:8080/proxy/...`) connects from the API
server to the pod's IP, over the pod network, so the loop's NetworkPolicy
(which admits only the loop's pods, the operator and the scraper) refuses it
wherever policies are enforced. A port-forward (`pods/portforward`) is
carried by the kubelet into the pod's own network namespace and reaches the
node on its loopback interface, which no NetworkPolicy governs. `auto` tries
the proxy once and, when the API server cannot reach the pod through it,
reads every node through port-forwards from then on; the output names the
path used (docs/chaos.md, "In a cluster").
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import portforward
from reactive_node.core import contract as c

from .view import LoopInfo

#: How a node is read: `auto` (proxy, then port-forward), or only one of them.
VIA_MODES: Final = ("auto", "proxy", "port-forward")
PROXY, PORT_FORWARD = "proxy", "port-forward"
#: Largest answer read from a node (a full history is at most ~512 KiB).
MAX_ANSWER_BYTES: Final = 4 * 1024 * 1024
#: Characters of an API error's message kept in ours.
ERROR_CHARS: Final = 300


class KubeError(Exception):
    """The cluster could not be asked, or said no; the message says what and why."""


class NodeReadError(Exception):
    """A node's endpoint could not be read."""


def _detail(body: Any) -> str:
    """The `message` of a Kubernetes Status body, else the body's first line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.strip().splitlines()[0] if body.strip() else ""
    if isinstance(doc, dict) and "message" in doc:
        return str(doc["message"])
    return body.strip().splitlines()[0] if body.strip() else ""


def _message(e: ApiException) -> str:
    """The API server's message of an error (its Status `message`), short. The
    websocket calls (port-forward) fail with status 0 and the handshake's
    answer in the reason: "Handshake status 400 Bad Request -+-+- {headers}
    -+-+- {body}"."""
    reason = str(e.reason or "")
    if e.status == 0 and " -+-+- " in reason:
        parts = reason.split(" -+-+- ")
        detail = _detail(parts[-1])
        return (parts[0].strip() + (f": {detail}" if detail else ""))[:ERROR_CHARS]
    detail = _detail(getattr(e, "body", None))
    text = f"{e.status} {reason}".strip() + (f": {detail}" if detail else "")
    return " ".join(text.split())[:ERROR_CHARS]


@dataclass(frozen=True)
class PodRef:
    """A node pod of the loop, as the API server lists it."""

    name: str
    uid: str
    ordinal: int
    ready: bool
    phase: str | None
    restarts: int
    deleting: bool
    env: Mapping[str, str]
    """The node container's literal environment (RL_*): the node's settings."""


def pod_ref(obj: Mapping[str, Any]) -> PodRef | None:
    """A `PodRef` of a pod (as JSON), None unless it is a node pod with an ordinal."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        ordinal = int(labels.get(c.ORDINAL_LABEL, ""))
    except ValueError:
        return None
    status = obj.get("status") or {}
    ready = any(
        cond.get("type") == "Ready" and cond.get("status") == "True"
        for cond in status.get("conditions") or []
    )
    statuses = status.get("containerStatuses") or []
    restarts = sum(int(s.get("restartCount", 0) or 0) for s in statuses)
    containers = (obj.get("spec") or {}).get("containers") or []
    env = {
        str(e["name"]): str(e["value"])
        for e in (containers[0].get("env") or [] if containers else [])
        if isinstance(e, Mapping) and "name" in e and isinstance(e.get("value"), str)
    }
    return PodRef(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        ordinal=ordinal,
        ready=ready,
        phase=status.get("phase"),
        restarts=restarts,
        deleting=meta.get("deletionTimestamp") is not None,
        env=env,
    )


class Cluster:
    """The API of the user's kubeconfig context, in one namespace."""

    def __init__(
        self,
        *,
        kubeconfig: str | None = None,
        context: str | None = None,
        namespace: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        try:
            contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
            chosen = current
            if context is not None:
                chosen = next((x for x in contexts if x.get("name") == context), None)
                if chosen is None:
                    raise KubeError(f"no context {context!r} in the kubeconfig")
            configuration = client.Configuration()
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except (ConfigException, OSError, ValueError) as e:
            raise KubeError(f"cannot load the kubeconfig: {e}") from None
        # One try per call: the callers poll, and a node read must fail fast
        # (a pod proxy refused by a NetworkPolicy never answers).
        configuration.retries = 0
        self.context = str((chosen or {}).get("name", ""))
        ns = ((chosen or {}).get("context") or {}).get("namespace")
        self.namespace = namespace or ns or "default"
        self.timeout = timeout
        self.configuration = configuration
        self.api = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api)
        self.net = client.NetworkingV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def _json(self, obj: Any) -> dict[str, Any]:
        data = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return data if isinstance(data, dict) else {}

    def loop(self, name: str) -> LoopInfo:
        """The ReactiveLoop `name`; KubeError if it is not there."""
        try:
            found = self.custom.get_namespaced_custom_object(
                c.API_GROUP,
                c.API_VERSION,
                self.namespace,
                c.PLURAL,
                name,
                _request_timeout=self.timeout,
            )
        except ApiException as e:
            if e.status == 404:
                raise KubeError(
                    f"reactiveloop {name!r} not found in namespace {self.namespace!r}"
                    f" (context {self.context or '?'})"
                ) from None
            raise KubeError(f"cannot get reactiveloop {name!r}: {_message(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"cannot reach the API server: {e}") from None
        obj: dict[str, Any] = found if isinstance(found, dict) else self._json(found)
        spec = obj.get("spec") or {}
        return LoopInfo(
            name=name,
            namespace=self.namespace,
            behavior=str(spec.get("behavior", "converge")),
            topology=str(spec.get("topology", "ring")),
            replicas=int(spec.get("replicas", 0) or 0),
            extra={"status": obj.get("status") or {}},
        )

    def _loop_pods(self, loop: str, *more: str) -> list[dict[str, Any]]:
        """The loop's node pods (by its selector labels, and `more` selectors) as JSON."""
        selector = ",".join(
            (f"{c.LOOP_LABEL}={loop}", f"{c.COMPONENT_LABEL}={c.NODE_COMPONENT}", *more)
        )
        try:
            found = self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=self.timeout
            )
        except ApiException as e:
            raise KubeError(f"cannot list the pods of {loop!r}: {_message(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"cannot reach the API server: {e}") from None
        return [self._json(p) for p in found.items or []]

    def pods(self, loop: str) -> list[PodRef]:
        """The loop's node pods (by its selector labels), by ordinal."""
        refs = [pod_ref(p) for p in self._loop_pods(loop)]
        return sorted((r for r in refs if r is not None), key=lambda r: (r.ordinal, r.deleting))

    def delete_pod(self, name: str, uid: str) -> None:
        """Delete the pod `name` if it is still the one with `uid` (its grace period)."""
        try:
            self.core.delete_namespaced_pod(
                name,
                self.namespace,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)),
                _request_timeout=self.timeout,
            )
        except ApiException as e:
            if e.status in (404, 409):
                return  # gone already, or already another pod
            raise KubeError(f"cannot delete pod {name!r}: {_message(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"cannot reach the API server: {e}") from None

    def set_partitioned(self, name: str, run: str | None) -> bool:
        """Label the pod `name` as cut off by the run `run` (None: remove the label);
        False if there is no such pod. A merge patch of that one label."""
        try:
            self.core.patch_namespaced_pod(
                name,
                self.namespace,
                {"metadata": {"labels": {c.PARTITIONED_LABEL: run}}},
                _request_timeout=self.timeout,
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise KubeError(f"cannot label pod {name!r}: {_message(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"cannot reach the API server: {e}") from None
        return True

    def partitioned(self, loop: str, run: str | None = None) -> list[str]:
        """The loop's node pods that carry the partition label of `run` (None: any run's)."""
        label = c.PARTITIONED_LABEL if run is None else f"{c.PARTITIONED_LABEL}={run}"
        return sorted(str(p["metadata"]["name"]) for p in self._loop_pods(loop, label))

    def create_policy(self, body: Mapping[str, Any]) -> None:
        policy = client.V1NetworkPolicy.from_dict(dict(body))
        assert policy is not None
        try:
            self.net.create_namespaced_network_policy(
                self.namespace,
                policy,
                _request_timeout=self.timeout,
            )
        except ApiException as e:
            name = (body.get("metadata") or {}).get("name")
            raise KubeError(f"cannot create NetworkPolicy {name!r}: {_message(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"cannot reach the API server: {e}") from None

    def delete_policy(self, name: str) -> bool:
        """Delete a NetworkPolicy; False if it was not there."""
        try:
            self.net.delete_namespaced_network_policy(
                name, self.namespace, _request_timeout=self.timeout
            )
        except ApiException as e:
            if e.status == 404:
                return False
            raise KubeError(f"cannot delete NetworkPolicy {name!r}: {_message(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"cannot reach the API server: {e}") from None
        return True

    def policies(self, selector: str) -> list[str]:
        """Names of the namespace's NetworkPolicies with labels `selector`."""
        try:
            found = self.net.list_namespaced_network_policy(
                self.namespace, label_selector=selector, _request_timeout=self.timeout
            )
        except ApiException as e:
            raise KubeError(f"cannot list NetworkPolicies: {_message(e)}") from None
        except urllib3.exceptions.HTTPError as e:
            raise KubeError(f"cannot reach the API server: {e}") from None
        return sorted(str(self._json(p)["metadata"]["name"]) for p in found.items or [])

    # --- reading a node ---------------------------------------------------------
    def proxy_get(
        self, pod: str, path: str, query: Sequence[tuple[str, str]], timeout: float
    ) -> bytes:
        """GET a node endpoint through the API server's pod proxy."""
        method, url, headers, _, _ = self.api.param_serialize(
            method="GET",
            resource_path="/api/v1/namespaces/{namespace}/pods/{name}/proxy" + path,
            path_params={"namespace": self.namespace, "name": f"{pod}:{c.DEFAULT_PORT}"},
            query_params=list(query),
            header_params={"Accept": "*/*"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(method, url, header_params=headers,
                                         _request_timeout=timeout)  # fmt: skip
            # The urllib3 response is not preloaded: read at most the cap.
            data = response.response.read(MAX_ANSWER_BYTES + 1)
        except ApiException as e:
            raise NodeReadError(f"pod proxy: {_message(e)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise NodeReadError(f"pod proxy: {type(e).__name__}: {e}"[:ERROR_CHARS]) from None
        if len(data or b"") > MAX_ANSWER_BYTES:
            response.response.close()
            raise NodeReadError(f"pod proxy: the answer exceeds {MAX_ANSWER_BYTES} bytes")
        if response.status != 200:
            text = " ".join(_detail(data or b"").split())
            raise NodeReadError(f"pod proxy: {response.status}: {text}"[:ERROR_CHARS])
        return bytes(data or b"")

    def forward(self, pod: str, timeout: float) -> _Forward:
        """A port-forward to the node port of `pod`, as one kept-alive HTTP connection."""
        # The client opens the websocket without a timeout: open it in a thread
        # of its own, and give up on it (a daemon thread) after `timeout`; a
        # connection that comes later is closed at once.
        done: list[Any] = []
        abandoned: list[bool] = []
        lock = threading.Lock()

        def open_forward() -> None:
            result: Any
            # A client of its own: the library's `portforward` swaps the
            # `call_api` of the client it is given while it connects, which
            # would send every other thread's request over a websocket.
            api = client.ApiClient(self.configuration)
            try:
                result = portforward(
                    client.CoreV1Api(api).connect_get_namespaced_pod_portforward,
                    pod,
                    self.namespace,
                    ports=str(c.DEFAULT_PORT),
                )
            except ApiException as e:
                result = NodeReadError(f"port-forward: {_message(e)}")
            except Exception as e:  # the websocket client raises many kinds
                result = NodeReadError(f"port-forward: {type(e).__name__}: {e}"[:ERROR_CHARS])
            finally:
                api.close()  # type: ignore[no-untyped-call]
            with lock:
                if abandoned and not isinstance(result, NodeReadError):
                    result.close()
                done.append(result)

        opener = threading.Thread(target=open_forward, name=f"rloop-forward-{pod}", daemon=True)
        opener.start()
        opener.join(timeout)
        with lock:
            if not done:
                abandoned.append(True)
                raise NodeReadError(f"port-forward: no connection within {timeout:g} s")
        if isinstance(done[0], NodeReadError):
            raise done[0]
        return _Forward(done[0], c.DEFAULT_PORT, timeout)


class _ForwardConnection(http.client.HTTPConnection):
    """HTTP over a port-forward's socket; never a socket of its own."""

    def connect(self) -> None:
        raise ConnectionError("the port-forward's connection is closed")


class _Forward:
    def __init__(self, pf: Any, port: int, timeout: float) -> None:
        self.pf = pf
        self.port = port
        sock = pf.socket(port)
        sock.settimeout(timeout)
        self.conn = _ForwardConnection("localhost", port, timeout=timeout)
        self.conn.sock = sock

    def get(self, target: str) -> bytes:
        try:
            self.conn.request("GET", target, headers={"Accept": "*/*"})
            response = self.conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as e:
            error = self.pf.error(self.port)
            self.close()
            raise NodeReadError(
                f"port-forward: {error or type(e).__name__ + ': ' + str(e)}"[:ERROR_CHARS]
            ) from None
        if response.will_close:
            self.close()
        if len(data) > MAX_ANSWER_BYTES:
            self.close()
            raise NodeReadError(f"port-forward: the answer exceeds {MAX_ANSWER_BYTES} bytes")
        if response.status != 200:
            text = " ".join(_detail(data).split())
            raise NodeReadError(f"port-forward: {response.status}: {text}"[:ERROR_CHARS])
        return data

    @property
    def closed(self) -> bool:
        return self.conn.sock is None

    def close(self) -> None:
        self.conn.close()
        self.pf.close()


class NodeReader:
    """Reads node endpoints by pod name, through the pod proxy or a port-forward.

    `auto` reads through the proxy until it first fails without an answer of
    the node (refused by a NetworkPolicy, forbidden by RBAC, timed out); from
    then on through port-forwards, one kept-alive connection per pod. `via`
    and `fallback` say what was used and why. Safe to use from threads (one
    request per pod at a time)."""

    def __init__(self, cluster: Cluster, mode: str = "auto", timeout: float = 3.0) -> None:
        if mode not in VIA_MODES:
            raise ValueError(f"via must be one of {', '.join(VIA_MODES)}")
        self.cluster = cluster
        self.mode = mode
        self.timeout = timeout
        self.fallback: str | None = None
        """Why `auto` left the proxy (its first failure), if it did."""
        self.used: set[str] = set()
        self.pod_via: dict[str, str] = {}
        """Pod -> the path its last successful read took."""
        self._forwards: dict[str, _Forward] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    @property
    def via(self) -> str:
        """What was used, for the output: `proxy`, `port-forward` (and why)."""
        if self.mode == "auto" and self.fallback is not None:
            return f"{PORT_FORWARD} (the pod proxy failed: {self.fallback})"
        if self.used:
            return " and ".join(sorted(self.used))
        return PORT_FORWARD if self.mode == PORT_FORWARD else PROXY

    def _pod_lock(self, pod: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(pod, threading.Lock())

    def get(self, pod: str, path: str, query: Sequence[tuple[str, str]] = ()) -> bytes:
        """The body of a 200 answer of `pod` to GET `path`; NodeReadError otherwise."""
        if self.mode == PROXY or (self.mode == "auto" and self.fallback is None):
            try:
                data = self.cluster.proxy_get(pod, path, query, self.timeout)
                self.used.add(PROXY)
                self.pod_via[pod] = PROXY
                return data
            except NodeReadError as e:
                if self.mode == PROXY:
                    raise
                with self._lock:
                    if self.fallback is None:
                        self.fallback = str(e)
        with self._pod_lock(pod):
            forward = self._forwards.get(pod)
            if forward is None or forward.closed:
                forward = self.cluster.forward(pod, self.timeout)
                self._forwards[pod] = forward
            target = path + ("?" + urllib.parse.urlencode(list(query)) if query else "")
            try:
                data = forward.get(target)
            except NodeReadError:
                self._forwards.pop(pod, None)
                raise
            self.used.add(PORT_FORWARD)
            self.pod_via[pod] = PORT_FORWARD
            return data

    def get_json(self, pod: str, path: str, query: Sequence[tuple[str, str]] = ()) -> Any:
        data = self.get(pod, path, query)
        try:
            return json.loads(data)
        except ValueError:
            raise NodeReadError(f"{path}: not JSON") from None

    def forget(self, pod: str) -> None:
        """Drop the port-forward of `pod` (it was deleted)."""
        with self._pod_lock(pod):
            forward = self._forwards.pop(pod, None)
            if forward is not None:
                forward.close()

    def close(self) -> None:
        for pod in list(self._forwards):
            self.forget(pod)
