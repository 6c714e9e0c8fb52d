#!/usr/bin/env bash
# Scan the rendered chart and the objects the operator creates with checkov.
#
#   hack/checkov.sh [OUTPUT_DIR]     (make checkov)
#
# 1. Installs checkov $CHECKOV_VERSION into its own venv, $CACHE/checkov-venv
#    (pip; kept out of the project's dev extra: its dependencies clash with
#    the project's), once per version.
# 2. Renders into OUTPUT_DIR/manifests (default: a fresh temporary directory):
#    chart-default.yaml     helm template with the default values,
#    chart-monitoring.yaml  helm template with ci/monitoring-values.yaml,
#    children.yaml          the objects of three loops (hack/render_children.py).
# 3. Runs checkov's kubernetes checks over them with .checkov.yaml, whose
#    every skipped check has its reason in docs/security.md ("Chart scans").
#    Writes OUTPUT_DIR/results.json. Exits non-zero on any failed check.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${CACHE:-$HOME/.cache/reactive-loop}
CHECKOV_VERSION=${CHECKOV_VERSION:-3.3.30}
VENV=$CACHE/checkov-venv
PYTHON=${CHECKOV_PYTHON:-}
HELM=${HELM:-$CACHE/bin/helm}
PROJECT_PY=${PROJECT_PY:-$ROOT/.venv/bin/python}
OUT=${1:-$(mktemp -d "${TMPDIR:-/tmp}/checkov.XXXXXX")}

log() { printf 'checkov.sh: %s\n' "$*" >&2; }

install_checkov() {
	if [[ -x $VENV/bin/checkov && -f $VENV/.version && $(<"$VENV/.version") == "$CHECKOV_VERSION" ]]; then
		return
	fi
	if [[ -z $PYTHON ]]; then
		for candidate in python3.11 python3.12 python3; do
			if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 9))' 2>/dev/null; then
				PYTHON=$candidate
				break
			fi
		done
	fi
	log "installing checkov $CHECKOV_VERSION into $VENV (with $PYTHON)"
	rm -rf "$VENV"
	"$PYTHON" -m venv "$VENV"
	"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
	echo "$CHECKOV_VERSION" >"$VENV/.version"
}

render() {
	if [[ ! -x $HELM ]]; then
		HELM=$(command -v helm || true)
	fi
	if [[ -z $HELM ]]; then
		log "helm not found: make tools builds it into $CACHE/bin"
		exit 2
	fi
	local chart=$ROOT/charts/reactive-loop dir=$OUT/manifests
	rm -rf "$dir"
	mkdir -p "$dir"
	"$HELM" template reactive-loop "$chart" --namespace reactive-loop-system >"$dir/chart-default.yaml"
	"$HELM" template reactive-loop "$chart" --namespace reactive-loop-system \
		-f "$chart/ci/monitoring-values.yaml" >"$dir/chart-monitoring.yaml"
	"$PROJECT_PY" "$ROOT/hack/render_children.py" "$dir/children.yaml"
}

install_checkov
render
log "scanning $OUT"
status=0
# checkov reads every *.yaml of the directory; results.json (every check, passed,
# failed and skipped) is what tests/chart/test_checkov.py reads.
"$VENV/bin/checkov" --config-file "$ROOT/.checkov.yaml" --directory "$OUT/manifests" \
	--output json >"$OUT/results.json" || status=$?
"$VENV/bin/python" - "$OUT/results.json" <<'PY'
import json, sys
data = json.load(open(sys.argv[1]))
for report in data if isinstance(data, list) else [data]:
    s = report.get("summary", {})
    print(f"{report.get('check_type')}: passed {s.get('passed')}, failed {s.get('failed')},"
          f" skipped {s.get('skipped')}")
    for c in report.get("results", {}).get("failed_checks", []):
        print(f"FAILED {c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})")
PY
exit "$status"
