"""The Grafana dashboard of reactive-loop, as code (grafana-foundation-sdk).

`reactive-loop.json` beside this file is generated from here and checked in,
because the chart ships it as a ConfigMap (`.Files.Get`); never edit the JSON
by hand. Regenerate it with

    make dashboard
    # or: .venv/bin/python charts/reactive-loop/dashboards/reactive_loop_dashboard.py

and `tests/chart/test_dashboard_generated.py` fails while the two differ.

Every query selects `cluster=~"$cluster"` and `namespace=~"$namespace"` (the
operator's own metrics: `loop_namespace`, the namespace of the loop they are
about; `namespace` there is the operator's). All three variables are
multi-select with "All" = `.*`, which also matches a series without the label,
so a single cluster whose series carry no `cluster` label shows everything.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

OUTPUT = Path(__file__).with_name("reactive-loop.json")
UID = "reactive-loop"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

#: The selector of every node series, and of the operator's series.
NODES = 'cluster=~"$cluster", namespace=~"$namespace", loop=~"$loop"'
OPERATOR = 'cluster=~"$cluster", loop_namespace=~"$namespace"'
RATE = "[$__rate_interval]"


def _query_variable(name: str, label: str, query: str) -> db.QueryVariable:
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .include_all(True)
        .multi(True)
        .all_value(".*")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def _target(ref: str, expr: str, legend: str = "") -> prometheus.Dataquery:
    return (
        prometheus.Dataquery().ref_id(ref).datasource(DATASOURCE).expr(expr).legend_format(legend)
    )


def _stat(
    pid: int, title: str, description: str, unit: str, expr: str, width: int = 3
) -> stat.Panel:
    """A stat panel of the overview row: seven of them share its 24 columns."""
    return (
        stat.Panel()
        .id(pid)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .height(4)
        .span(width)
        .unit(unit)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.AREA)
        .text_mode(common.BigValueTextMode.AUTO)
        .with_target(_target("A", expr))
    )


def _series(
    pid: int,
    title: str,
    description: str,
    unit: str,
    size: tuple[int, int],
    targets: list[tuple[str, str]],
    *,
    steps: bool = False,
) -> timeseries.Panel:
    height, width = size
    panel = (
        timeseries.Panel()
        .id(pid)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .height(height)
        .span(width)
        .unit(unit)
        .legend(
            cb.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.RIGHT)
            .calcs(["lastNotNull"])
            .show_legend(True)
        )
        .tooltip(
            cb.VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if steps:
        panel = panel.line_interpolation(common.LineInterpolation.STEP_AFTER)
    for ref, (expr, legend) in zip("ABCDEFGH", targets, strict=False):
        panel = panel.with_target(_target(ref, expr, legend))
    return panel


def _quantiles(metric: str, selector: str, by: str, legend: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}) (rate({metric}{{{selector}}}{RATE})))",
            f"p{round(q * 100)}{legend}",
        )
        for q in (0.5, 0.9, 0.99)
    ]


def build() -> db.Dashboard:
    """The dashboard: panels, queries, units and descriptions."""
    n = NODES
    ns_loop = "namespace, loop"
    return (
        db.Dashboard("reactive-loop")
        .uid(UID)
        .description(
            "Successful loops against waits, round-trip latency, behaviour state and "
            "operator health of reactive-loop."
        )
        .tags(["reactive-loop", "kubernetes", "operator"])
        .timezone("browser")
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .version(1)
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            _query_variable("cluster", "Cluster", "label_values(reactive_loop_node_info, cluster)")
        )
        .with_variable(
            _query_variable(
                "namespace",
                "Namespace",
                'label_values(reactive_loop_node_info{cluster=~"$cluster"}, namespace)',
            )
        )
        .with_variable(
            _query_variable(
                "loop",
                "Loop",
                'label_values(reactive_loop_node_info{cluster=~"$cluster", '
                'namespace=~"$namespace"}, loop)',
            )
        )
        # ---------------------------------------------------------------- overview
        .with_row(db.Row("Overview").id(1))
        .with_panel(
            _stat(
                2,
                "Nodes looping",
                "Nodes whose last round trip succeeded.",
                "short",
                f'sum(reactive_loop_node_phase{{{n}, phase="looping"}})',
            )
        )
        .with_panel(
            _stat(
                3,
                "Nodes waiting",
                "Nodes whose last round trip failed and that wait for the next opportunity.",
                "short",
                f'sum(reactive_loop_node_phase{{{n}, phase="waiting"}})',
            )
        )
        .with_panel(
            _stat(
                4,
                "Nodes suspended",
                "Nodes of loops with spec.suspend: they answer round trips but start none, "
                "so they count neither as looping nor as waiting.",
                "short",
                f'sum(reactive_loop_node_phase{{{n}, phase="suspended"}})',
            )
        )
        .with_panel(
            _stat(
                5,
                "Loops/s",
                "Successful round trips per second, all selected loops.",
                "ops",
                f"sum(rate(reactive_loop_loops_total{{{n}}}{RATE}))",
                width=4,
            )
        )
        .with_panel(
            _stat(
                6,
                "Waits/s",
                "Failed round trips per second, all reasons.",
                "ops",
                f"sum(rate(reactive_loop_waits_total{{{n}}}{RATE}))",
                width=4,
            )
        )
        .with_panel(
            _stat(
                7,
                "Newest generation",
                "Highest converge generation any node holds.",
                "none",
                f"max(reactive_loop_converge_generation{{{n}}})",
            )
        )
        .with_panel(
            _stat(
                8,
                "Token holders",
                "Nodes that hold a token now (1 in a healthy token loop).",
                "none",
                f"sum(reactive_loop_token_holder{{{n}}})",
                width=4,
            )
        )
        # ---------------------------------------------------------------- loops and waits
        .with_row(db.Row("Loops and waits").id(9))
        .with_panel(
            _series(
                10,
                "Loops/s vs waits/s by reason",
                "Successful round trips (loops) against failed ones (waits), by wait reason. "
                "A healthy loop shows loops and no waits.",
                "ops",
                (9, 12),
                [
                    (
                        f"sum by ({ns_loop}) (rate(reactive_loop_loops_total{{{n}}}{RATE}))",
                        "loops {{namespace}}/{{loop}}",
                    ),
                    (
                        f"sum by ({ns_loop}, reason) "
                        f"(rate(reactive_loop_waits_total{{{n}}}{RATE}))",
                        "waits {{namespace}}/{{loop}} ({{reason}})",
                    ),
                ],
            )
        )
        .with_panel(
            _series(
                11,
                "Round-trip latency",
                "Quantiles of the round-trip duration seen by the initiators (successful and "
                "failed round trips).",
                "s",
                (9, 12),
                _quantiles(
                    "reactive_loop_roundtrip_duration_seconds_bucket",
                    n,
                    f"{ns_loop}, le",
                    " {{namespace}}/{{loop}}",
                ),
            )
        )
        # ---------------------------------------------------------------- behaviour state
        .with_row(db.Row("Behaviour state").id(12))
        .with_panel(
            _series(
                13,
                "Converge generation per node",
                "The generation of the target each node holds; all lines meet once the loop "
                "has converged.",
                "none",
                (8, 8),
                [
                    (
                        f"max by ({ns_loop}, node) (reactive_loop_converge_generation{{{n}}})",
                        "{{node}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                14,
                "Token holder",
                "1 while a node holds the token; exactly one line at 1 per token loop in "
                "steady state.",
                "none",
                (8, 8),
                [(f"max by ({ns_loop}, node) (reactive_loop_token_holder{{{n}}})", "{{node}}")],
                steps=True,
            )
        )
        .with_panel(
            _series(
                15,
                "Token epoch",
                "Term of the newest token epoch each loop has seen; it only increases.",
                "none",
                (8, 8),
                [
                    (
                        f"max by ({ns_loop}) (reactive_loop_token_epoch{{{n}}})",
                        "{{namespace}}/{{loop}}",
                    )
                ],
            )
        )
        # ---------------------------------------------------------------- node health
        .with_row(db.Row("Node health").id(16))
        .with_panel(
            _series(
                17,
                "Last successful loop age",
                "Seconds since each node's last successful round trip (ReactiveLoopStalled "
                "fires above its threshold).",
                "s",
                (8, 12),
                [
                    (
                        f"time() - max by ({ns_loop}, node) "
                        f"(reactive_loop_last_loop_timestamp_seconds{{{n}}})",
                        "{{node}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                18,
                "Nodes by phase",
                "How many nodes are looping, waiting or starting.",
                "none",
                (8, 12),
                [
                    (
                        f"sum by ({ns_loop}, phase) (reactive_loop_node_phase{{{n}}})",
                        "{{namespace}}/{{loop}} {{phase}}",
                    )
                ],
            )
        )
        # ---------------------------------------------------------------- requests, writes
        .with_row(db.Row("Requests and state writes").id(19))
        .with_panel(
            _series(
                20,
                "Requests served by outcome",
                "Round trips answered by the nodes, by outcome (ok, stale, bad_request, ...).",
                "reqps",
                (8, 12),
                [
                    (
                        f"sum by ({ns_loop}, outcome) "
                        f"(rate(reactive_loop_requests_served_total{{{n}}}{RATE}))",
                        "{{namespace}}/{{loop}} {{outcome}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                21,
                "State writes by result",
                "Writes of the node state (pod annotation or file); zero in steady state. "
                "Invalid hand edits are counted apart.",
                "wps",
                (8, 12),
                [
                    (
                        f"sum by ({ns_loop}, result) "
                        f"(rate(reactive_loop_state_writes_total{{{n}}}{RATE}))",
                        "{{namespace}}/{{loop}} {{result}}",
                    ),
                    (
                        f"sum by ({ns_loop}) "
                        f"(rate(reactive_loop_state_invalid_total{{{n}}}{RATE}))",
                        "{{namespace}}/{{loop}} invalid state read",
                    ),
                ],
            )
        )
        # ---------------------------------------------------------------- operator
        .with_row(db.Row("Operator").id(22))
        .with_panel(
            _series(
                23,
                "Operator reconciles by result",
                "Reconciliations of ReactiveLoop resources per second in the selected "
                "namespaces, by result.",
                "ops",
                (8, 8),
                [
                    (
                        "sum by (result) (rate("
                        f"reactive_loop_operator_reconcile_duration_seconds_count{{{OPERATOR}}}"
                        f"{RATE}))",
                        "{{result}}",
                    )
                ],
            )
        )
        .with_panel(
            _series(
                24,
                "Operator reconcile duration",
                "Quantiles of the time one reconciliation takes.",
                "s",
                (8, 8),
                _quantiles(
                    "reactive_loop_operator_reconcile_duration_seconds_bucket", OPERATOR, "le", ""
                ),
            )
        )
        .with_panel(
            _series(
                25,
                "Managed loops and target injections",
                "ReactiveLoops the operator manages, and converge target injections per "
                "second by result.",
                "short",
                (8, 8),
                [
                    (f"sum(reactive_loop_operator_managed_loops{{{OPERATOR}}})", "managed loops"),
                    (
                        "sum by (result) (rate("
                        f"reactive_loop_operator_target_injections_total{{{OPERATOR}}}{RATE}))",
                        "injections {{result}}",
                    ),
                ],
            )
        )
    )


def render() -> str:
    """The dashboard's JSON as checked in: sorted keys, two-space indent, final newline."""
    model: Any = json.loads(json.dumps(build().build(), cls=JSONEncoder))
    return json.dumps(model, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv[1:] == ["--check"]:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run `make dashboard`", file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(f"usage: {argv[0]} [--check]", file=sys.stderr)
        return 2
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
