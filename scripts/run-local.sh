#!/usr/bin/env bash
# The main job, locally: start the local AWS stack, build release binaries,
# provision every resource, start cafe-streamd, replay a scenario against it
# (default cold-start: the daemon is restarted as the burst lands), print the
# summary and where the reports are.
#
# Usage: scripts/run-local.sh [--keep] [SCENARIO] [cafe-loadgen run options...]
#   e.g. scripts/run-local.sh cold-start --scale 0.5 --seed 7
#   --keep leaves cafe-streamd running afterwards (docs/walkthrough.md's
#   commands need it); `scripts/daemon.sh stop` stops it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
keep=0
if [ "${1:-}" = --keep ]; then keep=1; shift; fi
scenario=${1:-cold-start}
shift || true

scripts/local-stack/stack.sh start
eval "$(scripts/local-stack/stack.sh env)"
cargo build --release --locked -p daemon -p loadgen
export CAFE_STREAMD_BIN="$repo/target/release/cafe-streamd"
# Mirror the aggregates into Redshift's local stand-in, PostgreSQL 15, and
# let menu-sync check it (set these to your cluster's to use a real one).
export CAFE_SINKS__REDSHIFT__ENABLED=${CAFE_SINKS__REDSHIFT__ENABLED:-true}
export CAFE_SINKS__REDSHIFT__URL=${CAFE_SINKS__REDSHIFT__URL:-$CAFE_PG_URL}
export CAFE_LOADGEN_REDSHIFT_URL=${CAFE_LOADGEN_REDSHIFT_URL:-$CAFE_PG_URL}
"$CAFE_STREAMD_BIN" provision
scripts/daemon.sh start
if [ "$keep" = 0 ]; then trap 'scripts/daemon.sh stop' EXIT; fi

report="$repo/reports/$scenario-$(date -u +%Y%m%dT%H%M%SZ)"
status=0
CAFE_LOADGEN_RESTART_COMMAND="$repo/scripts/daemon.sh restart" \
  target/release/cafe-loadgen run "$scenario" --report-dir "$report" "$@" || status=$?
echo
echo "daemon log:   ${CAFE_STACK_DIR:-$repo/.stack}/logs/cafe-streamd.log"
echo "report:       $report/report.html (self-contained: latency and throughput over the run)"
echo "summary:      $report/summary.md"
if [ "$keep" = 1 ]; then
  echo "cafe-streamd: still running (--keep); scripts/daemon.sh stop stops it"
fi
exit $status
