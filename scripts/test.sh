#!/usr/bin/env bash
# Runs every test of cafe-stream: starts the local AWS stack (installing what
# it needs), runs the unit and integration tests of every crate, then the
# cold-start, morning-rush and menu-sync scenarios end to end (daemon +
# loadgen, the daemon mirroring into Redshift's stand-in, the local
# PostgreSQL) at a small scale, and two of them under chaos profiles.
# Stops the stack afterwards if this script started it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
stack=scripts/local-stack/stack.sh

started_stack=0
if ! "$stack" status > /dev/null 2>&1; then started_stack=1; fi
# When a phase fails, what the processes behind it logged: CI keeps only
# this script's output, and a failure that does not come back on a rerun
# (a stall, a timeout) can only be read from here. The daemon's and the
# chaos instances' warnings and errors, and the requests moto refused or
# failed (a 5xx loses what a receive had taken for a visibility timeout).
diagnose() {
  echo "== test failed: what the processes logged" >&2
  local log logs="${CAFE_STACK_DIR:-$repo/.stack}/logs"
  for log in "$logs/cafe-streamd.log" target/e2e-chaos-*/instances/instance-*.log; do
    [ -f "$log" ] || continue
    echo "-- $log: its last warnings and errors" >&2
    grep -aE '^[^ ]+ +(WARN|ERROR) ' "$log" | tail -n 40 | cut -c1-400 >&2 || true
  done
  log="$logs/moto.log"
  if [ -f "$log" ]; then
    echo "-- $log: answers by status, the last 5xx, and the last exceptions (a 500's cause)" >&2
    grep -aoE '" [0-9]{3} ' "$log" | sort | uniq -c >&2 || true
    grep -aE '" 5[0-9]{2} ' "$log" | tail -n 10 >&2 || true
    grep -aE '^(Exception on |[A-Za-z_.]+(Error|Exception): )' "$log" | tail -n 20 | cut -c1-400 >&2 || true
  fi
  log="$logs/emulators.log"
  if [ -f "$log" ]; then
    echo "-- $log: its last lines" >&2
    tail -n 20 "$log" | cut -c1-400 >&2
  fi
}
cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then diagnose || true; fi
  CAFE_STREAMD_BIN="$repo/target/debug/cafe-streamd" scripts/daemon.sh stop > /dev/null 2>&1 || true
  scripts/local-stack/prometheus.sh stop || true
  if [ "$started_stack" = 1 ] && [ "${CAFE_KEEP_STACK:-0}" != 1 ]; then "$stack" stop || true; fi
}
trap cleanup EXIT
# Stopped from outside (a job's timeout, a cancel, ^C), the script exits
# with the signal's status, so that the trap above sees a failure and
# prints what the processes logged: a stall that runs into a timeout is
# the failure most in need of it.
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

# Each phase's header says when it began (seconds since the script started),
# so a slow CI run shows where its time went.
phase() { echo "== $* [at ${SECONDS}s]"; }

"$stack" start
eval "$("$stack" env)"

phase "lint: rustfmt, then clippy as the build's compiler"
cargo fmt --all --check
# Clippy lints this workspace's crates (every target) while the build below
# compiles them, its warnings denied: clippy-driver as the workspace's
# compiler, as `cargo clippy` itself sets it up. A separate `cargo clippy`
# checked every dependency again (8 min 20 s on 2 cores, CI's whole run 32
# min with it); this costs about a minute. Every cargo command of this
# script and of the integration tests runs with the same two variables, so
# nothing is built twice; what this script installs from crates.io
# (package.sh's tools) is built without them.
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
RUSTC_WORKSPACE_WRAPPER=$(dirname "$(rustup which cargo 2>/dev/null || command -v cargo)")/clippy-driver
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
[ -x "$RUSTC_WORKSPACE_WRAPPER" ] || { echo "test: clippy-driver not found next to cargo (rustup component add clippy)" >&2; exit 1; }

phase "bench table: scripts/bench_table.py on a stored run of bench.sh"
python3 scripts/test_bench_table.py
phase "this script stopped from outside: its exit status, what it prints, the stack it leaves"
python3 scripts/test_test_script.py
phase "the stack script: a server started from other files than the checkout's is restarted"
python3 scripts/local-stack/test_stack_script.py

phase "the emulators' own tests (emulators/: DynamoDB's front, the options' defaults), clippy as their compiler"
# In the stack's build folder (its release dependencies are built there
# already): only cafe-emulators' test build is new.
(cd emulators && cargo test -q --release --locked \
  --target-dir "${CAFE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cafe-stream}/emulators/target")

phase "features: the release builds with and without the benches resolve the same (scripts/check_features.py)"
python3 scripts/test_check_features.py
python3 scripts/check_features.py

phase "unit and integration tests"
# One selection for every build of this script and of the integration tests
# (daemon/tests/it/main.rs, workspace_bin): features unify per selection, so a
# narrower `cargo build -p loadgen` rebuilds every dependency (6.5 min on
# 2 cores). Building it first also gives the tests both binaries before they
# start, instead of a compile racing the chaos tests.
cargo build --workspace --all-targets --locked
cargo test --workspace --all-targets --locked
# The daemon's lib on glibc's malloc (the `system-allocator` feature, for
# heap profilers): its tests, the build info's label among them. Built in
# the workspace's selection, so every dependency keeps the features the
# build above gave it and only the daemon's lib and what uses it compile
# again (`-p daemon` resolved features for that one package and rebuilt
# tokio, the SDK and the rest: 4 min 24 s on 2 cores). Only the libs' test
# binaries (a build of the daemon's binary here would put that variant at
# target/debug/cafe-streamd, which the phases below run), and of those only
# the daemon's is run: the others are the ones the line above ran.
alloc_tests=$(cargo test --workspace --lib --features daemon/system-allocator --locked --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "daemon" and m["profile"]["test"] \
            and "system-allocator" in m["features"] and m.get("executable"):
        print(m["executable"])
')
[ -n "$alloc_tests" ] || { echo "test: no test binary of the daemon's lib with system-allocator" >&2; exit 1; }
# From the package's folder, as cargo test runs it.
(cd daemon && "$alloc_tests")

phase "end to end: cold-start at scale ${CAFE_E2E_SCALE:-0.05} (daemon restarted into the burst)"
# Both binaries come from the build above.
export CAFE_STREAMD_BIN="$repo/target/debug/cafe-streamd"
# The Redshift mirror on, into the local PostgreSQL, and checked by menu-sync.
export CAFE_SINKS__REDSHIFT__ENABLED=true CAFE_SINKS__REDSHIFT__URL="$CAFE_PG_URL" CAFE_LOADGEN_REDSHIFT_URL="$CAFE_PG_URL"
phase "Prometheus (Debian's package): the rules check, then it scrapes the daemon through every scenario"
promtool_rules() { promtool check rules dashboards/cafe-stream.rules.yml; }
scripts/local-stack/prometheus.sh start
promtool_rules
"$CAFE_STREAMD_BIN" provision > /dev/null
scripts/daemon.sh start
CAFE_LOADGEN_RESTART_COMMAND="$repo/scripts/daemon.sh restart" \
  target/debug/cafe-loadgen run cold-start --scale "${CAFE_E2E_SCALE:-0.05}" --report-dir target/e2e-report
# docs/walkthrough.md, as written, against the same daemon.
scripts/walkthrough.sh

phase "end to end: morning-rush at scale ${CAFE_E2E_RUSH_SCALE:-0.5}, stages at ${CAFE_E2E_RUSH_TIME_SCALE:-0.25}x length"
target/debug/cafe-loadgen run morning-rush --scale "${CAFE_E2E_RUSH_SCALE:-0.5}" \
  --time-scale "${CAFE_E2E_RUSH_TIME_SCALE:-0.25}" --report-dir target/e2e-report-morning-rush
# Each run's report.html opens offline and holds the latency chart: no
# script or stylesheet, and the p50, p95 and p99 series drawn.
for page in target/e2e-report/report.html target/e2e-report-morning-rush/report.html; do
  grep -q 'class="p99"' "$page" && grep -q 'class="p95"' "$page" || { echo "test: $page has no latency chart" >&2; exit 1; }
  if grep -q '<script\|<link\|https://' "$page"; then echo "test: $page loads something from elsewhere" >&2; exit 1; fi
done

phase "end to end: menu-sync at scale ${CAFE_E2E_MENU_SCALE:-0.03}, Redshift checked against DynamoDB"
target/debug/cafe-loadgen run menu-sync --scale "${CAFE_E2E_MENU_SCALE:-0.03}" --report-dir target/e2e-report-menu-sync

phase "dashboards and alerts on the live Prometheus"
curl -sf http://127.0.0.1:9464/metrics | promtool check metrics
echo "promtool check metrics: no problems on a live scrape"
target/debug/cafe-loadgen check-dashboards --prometheus "$(scripts/local-stack/prometheus.sh url)" --dir dashboards
scripts/daemon.sh stop
scripts/local-stack/prometheus.sh stop

phase "chaos: morning-rush with 3 instances, the busiest killed twice; cold-start with DynamoDB throttled"
# The loadgen starts its own instances behind its fault proxies.
target/debug/cafe-loadgen run morning-rush --chaos kill-instances --instances 3 \
  --scale "${CAFE_E2E_RUSH_SCALE:-0.5}" --time-scale 0.5 --report-dir target/e2e-chaos-kill-instances
# The burst lands in the profile's first window (all throttled, 15 s); its
# second (half) finds every write still to be made.
target/debug/cafe-loadgen run cold-start --chaos throttle-dynamodb \
  --scale "${CAFE_E2E_CHAOS_SCALE:-0.3}" --report-dir target/e2e-chaos-throttle-dynamodb

phase "packages: .deb and .rpm of the dev build, their contents inspected"
scripts/package.sh dev
# The same selection as the first cargo test, so nothing is rebuilt.
cargo test --workspace --all-targets --locked -- --ignored packages::
echo "all done in ${SECONDS}s"
echo "7 passed, 0 failed: end-to-end cold-start (and the walkthrough), morning-rush, menu-sync; dashboards and rules on Prometheus; chaos kill-instances and throttle-dynamodb; packages"
