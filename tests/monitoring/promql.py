"""Helpers of the monitoring tests: a real Prometheus process and the shipped PromQL.

Everything here is I/O-free except `Prometheus`, which runs the Prometheus
that `make tools` builds from its Go module (`find_prometheus`) on 127.0.0.1
with a temporary configuration and stops it (by its own PID) when the test is
done, and `promtool`, which runs its promtool.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

#: What the Grafana variables of the dashboard stand for during the test.
GRAFANA_VARIABLES = {
    "$__rate_interval": "10s",
    "$cluster": ".*",
    "$namespace": ".*",
    "$loop": ".*",
}
COMPARISONS = (">=", "<=", "==", "!=", ">", "<")
#: Chart values that make the alerts react within seconds in the tests (local
#: Prometheus here, the Prometheus Operator's on kind).
TEST_RULE_VALUES = [
    "monitoring.prometheusRule.enabled=true",
    "monitoring.prometheusRule.stalledAfterSeconds=4",
    "monitoring.prometheusRule.stalledFor=1s",
    "monitoring.prometheusRule.rateWindow=10s",
    "monitoring.prometheusRule.tokenLostFor=30s",
    "monitoring.prometheusRule.tokenDuplicatedFor=30s",
]


@dataclass(frozen=True)
class Expression:
    """One PromQL expression the chart ships, and where it comes from."""

    origin: str  # e.g. "rule ReactiveLoopStalled (left side)" or "panel 'Loops/s' A"
    expr: str

    @property
    def needs_operator(self) -> bool:
        return "reactive_loop_operator_" in self.expr


def split_comparison(expr: str) -> tuple[str, str, str] | None:
    """Split `A op B` at the last comparison outside (), {}, [] and strings.

    Returns (A, op, B) or None when the expression has no top-level comparison.
    """
    depth = 0
    quote: str | None = None
    found: tuple[int, str] | None = None
    i = 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            for op in COMPARISONS:
                if expr.startswith(op, i):
                    found = (i, op)
                    i += len(op) - 1
                    break
        i += 1
    if found is None:
        return None
    at, op = found
    return expr[:at].strip(), op, expr[at + len(op) :].strip()


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def rule_expressions(rule_spec: Mapping[str, Any]) -> list[Expression]:
    """The sides of every alert's final comparison that must return data.

    An alert is `A op threshold` or `A op B`: in a healthy loop the alert is
    silent, so the comparison returns nothing, but A (and B when it is not a
    number) must return data, or the alert could never fire.
    """
    found: list[Expression] = []
    for group in rule_spec["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            expr = " ".join(str(rule["expr"]).split())
            parts = split_comparison(expr)
            if parts is None:
                found.append(Expression(f"rule {name}", expr))
                continue
            left, _, right = parts
            found.append(Expression(f"rule {name} (left side)", left))
            if not is_number(right):
                found.append(Expression(f"rule {name} (right side)", right))
    return found


def substitute(expr: str, values: Mapping[str, str] | None = None) -> str:
    """Replace the Grafana variables: `GRAFANA_VARIABLES`, updated with `values`
    (e.g. {"$cluster": "other"} for a selection instead of "All")."""
    variables = {**GRAFANA_VARIABLES, **(values or {})}
    # Longest names first, so $__rate_interval is not read as $__rate...
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(name, variables[name])
    return expr


def dashboard_expressions(
    dashboard: Mapping[str, Any], values: Mapping[str, str] | None = None
) -> list[Expression]:
    """Every panel target of the dashboard, Grafana variables substituted."""
    found: list[Expression] = []

    def panels(items: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dashboard["panels"]):
        for t in p.get("targets", []):
            origin = f"panel {p['title']!r} {t['refId']}"
            found.append(Expression(origin, substitute(t["expr"], values)))
    return found


def variable_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(variable, series selector, label) of every `label_values(series, label)` variable."""
    found = []
    for v in dashboard["templating"]["list"]:
        if v.get("type") != "query":
            continue
        query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        inner = query.strip()
        if not (inner.startswith("label_values(") and inner.endswith(")")):
            raise ValueError(f"variable {v['name']}: not label_values(series, label): {query}")
        series, _, label = inner[len("label_values(") : -1].rpartition(",")
        found.append((v["name"], substitute(series.strip()), label.strip()))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """A real Prometheus on 127.0.0.1 with a temporary configuration."""

    def __init__(self, binary: str, workdir: Path, config: Mapping[str, Any]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config)))
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, deadline_s: float = 60.0) -> None:
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        log.close()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready in {deadline_s}s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (a scalar becomes one sample)."""
        try:
            data = self.api("query", query=expr)
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"bad query {expr!r}: {e.read().decode()}") from e
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def poll(self, expr: str, deadline_s: float, predicate: Any = bool) -> list[dict[str, Any]]:
        """Query until `predicate(result)` holds or the deadline passes; the last result."""
        end = time.monotonic() + deadline_s
        result = self.query(expr)
        while not predicate(result) and time.monotonic() < end:
            time.sleep(0.5)
            result = self.query(expr)
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def active_targets(self) -> list[dict[str, Any]]:
        """`/api/v1/targets` active targets (labels, discoveredLabels, health, scrapePool)."""
        targets: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return targets


def tools_bin() -> Path:
    """Where `make tools` (hack/build-tools.sh) puts the binaries it builds."""
    cache = os.environ.get("RL_CACHE") or str(Path.home() / ".cache" / "reactive-loop")
    return Path(cache) / "bin"


def find_prometheus() -> tuple[str, str]:
    """prometheus and promtool built from the Go module (they have kubernetes_sd_configs).

    Deliberately not looked up on PATH: Debian's packaged Prometheus 2.42
    lacks Kubernetes discovery. Raises FileNotFoundError when they are absent.
    """
    found = tuple(tools_bin() / name for name in ("prometheus", "promtool"))
    missing = [str(p) for p in found if not os.access(p, os.X_OK)]
    if missing:
        raise FileNotFoundError(
            f"not built: {', '.join(missing)}; run `make tools` (hack/build-tools.sh prometheus)"
        )
    return str(found[0]), str(found[1])


def promtool(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; the caller asserts on returncode and output."""
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
