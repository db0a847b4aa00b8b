#!/usr/bin/env bash
# One run, one table: every performance figure of cafe-stream, each next to
# the best the same machine does with the same stack in the same run.
#
#   1. kernels (criterion, release): the per-event CPU work of each path on
#      one core, each path's stage with in-memory ends against its kernel
#      (benches/benches/pipeline.rs: the decide stage for payments and menu
#      items, one shard's whole task for orders), the SHA-256 floor of the payments path (openssl's
#      speed on this CPU, and the fraud model's loop next to the hasher's),
#      and the AWS SDK's CPU per request with no network
#      (benches/benches/pipeline/sdk.rs);
#   2. end to end on the local stack, a release cafe-streamd restarted for
#      each path, with fresh queues, stream and tables:
#        payments  cold-start sends 10,000 with the daemon restarted just
#                  before (cold start to first decision), then a bare
#                  consumer (the daemon's batches and transactions, then
#                  deletes; no processing) drains as many from a scratch queue as
#                  they are sent (cold-start's own drain_vs_bare); then
#                  the same with the fraud history in the process instead
#                  of the shared table (what the shared state costs);
#        orders    a backlog of 10,000 orders (about 48,000 records: a drain
#                  of seconds, not of one second) drained by a bare
#                  GetRecords reader, written by a bare DynamoDB writer (the
#                  daemon's items, packed as the daemon packs them), then
#                  by the daemon, then by the bare reader and writer at
#                  once (a bare client making the daemon's reads and
#                  writes, neither waiting on the other); each timed by its
#                  own clock, from a first write begun to a last write
#                  durable (the daemon's: its first applied_at to its
#                  sink's last-write stamp, read from its admin endpoint,
#                  docs/scenarios.md);
#        menu      menu-sync, 10,000 items with images, then a bare
#                  consumer (the daemon's reads, writes and deletes, packed
#                  as the daemon packs them; no processing) drains the same
#                  catalogue from a scratch queue as the same pods send it;
#        memory    a backlog of 1,000,000 order records on the stream, the
#                  daemon started into it and its resident memory sampled
#                  every second for 120 s (it must level off, not grow with
#                  what waits on the stream);
#      with the daemon's CPU-seconds per 1,000 events and its peak RSS, and
#      the CPU the emulators took meanwhile (what is left of the machine is
#      the CPU-bound ceiling: cores left / kernel time per event).
#
# Usage: scripts/bench.sh [--scale S] [--rounds N]
#   S multiplies the end-to-end sizes (default 1); each payments path (the
#   fraud history shared, then in the process), the orders path and the
#   menu path run N rounds (default 3), and each path's median round is
#   its figures (2a-2c below). (--payment-rounds is the option's older
#   name.)
# Prints the table and writes it, with every raw figure, to
# target/bench/<UTC time>/ (table.md, figures.json, goals.md: issue 13's goals
# against this run, the table the README shows; scripts/bench_goals.py).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scale=1
rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale=$2; shift 2 ;;
    --rounds|--payment-rounds) rounds=$2; shift 2 ;;
    *) echo "usage: $0 [--scale S] [--rounds N]" >&2; exit 2 ;;
  esac
done
case "$rounds" in ''|*[!0-9]*|0) echo "bench: --rounds must be a whole number of at least 1" >&2; exit 2 ;; esac

started=$(date +%s)
out=$repo/target/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out/scenarios"
stack=scripts/local-stack/stack.sh
"$stack" start
eval "$("$stack" env)"
state=${CAFE_STACK_DIR:-$repo/.stack}

# The commit the figures are of, read as the build starts (a commit made
# while the run goes on is not what was measured); "+changes" when the
# working tree differed from it. --no-optional-locks: a plain `git status`
# rewrites the index when it refreshes its stat data (always in a fresh
# clone), which the daemon's build script watches (daemon/build.rs): the
# build just below then built the daemon again and linked it once more.
{ git rev-parse --short HEAD 2>/dev/null || echo unknown; } | tr -d '\n' > "$out/commit"
[ -z "$(git --no-optional-locks status --porcelain --untracked-files=no 2>/dev/null)" ] || echo -n "+changes" >> "$out/commit"
# And the CPU it ran on, for the table's first line (bench_table.py may make
# the table again from this directory, elsewhere).
sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1 > "$out/machine"
echo "== build (release)"
# One cargo command for the daemon, the load generator and the benches. Two
# (`cargo build -p daemon -p loadgen`, then `cargo bench -p benches`)
# resolve the dependencies' features apart (goose's simplelog turns on
# time's local-offset, the benches' dev-dependencies others), so they
# built the daemon's library, the domain crate and about 80 dependencies
# twice. This one's daemon and loadgen are those of run-local.sh and
# package.sh (`-p daemon -p loadgen`): the workspace asks for the features
# the benches would add (scripts/check_features.py checks it), so after
# either of those, at the same commit, this builds only the benches, and
# they after this nothing (a commit, or a change to git's index, builds the
# daemon again: its build script stamps the commit, daemon/build.rs).
# `--bench '*'`, not `--benches`: that one also builds the daemon's and
# loadgen's own targets as test harnesses. The benches are
# then run from the executables this build names, as `cargo bench` runs
# them (from their package's directory, with `--bench`).
cargo build --release --locked -p daemon -p loadgen -p benches --bins --bench '*' \
  --message-format=json-render-diagnostics > "$out/build.json"
artifact() { # the executable of target $1 of kind $2, from the build's messages
  python3 -c '
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == sys.argv[2] and sys.argv[3] in m["target"]["kind"] and m.get("executable"):
        print(m["executable"])
        break
else:
    sys.exit(f"bench: the build named no {sys.argv[3]} {sys.argv[2]}")
' "$out/build.json" "$1" "$2"
}
bench() { # bench NAME ARGS...: a bench executable of the benches package, its output added to kernels.txt
  local name=$1 exe
  exe=$(artifact "$name" bench)
  shift
  # A bench that fails (a check's panic included) shows the end of its
  # output and stops the run.
  (cd benches && CRITERION_HOME="$repo/target/criterion" "$exe" --bench "$@") >> "$out/kernels.txt" 2>&1 || {
    tail -n 30 "$out/kernels.txt" >&2
    echo "bench: the $name bench failed; its output: $out/kernels.txt" >&2
    exit 1
  }
}
export CAFE_STREAMD_BIN
CAFE_STREAMD_BIN=$(artifact cafe-streamd bin)
loadgen=$(artifact cafe-loadgen bin)

echo "== 1. kernels"
rm -rf target/criterion
crit=(--warm-up-time 1 --measurement-time 3 --sample-size 20 --noplot)
: > "$out/kernels.txt"
# Fraud scoring, applying order events and the menu stage, alone (one
# executable); it ends with its own sha256-against-openssl ratio (a few
# seconds).
bench kernels "${crit[@]}" 'payment: decode|model_work 10000|model_work_many 10000|Sha256::digest 10000|decode \+ apply|100 JSON rounds'
# The AWS SDK's own CPU per request (benches/benches/pipeline/sdk.rs:
# answered in memory, the daemon's client configuration): what each request
# of a path costs before any network; then each path's stage with in-memory
# ends next to its kernel alone (one CPU-pool thread each): the stage's
# overhead per payment, menu item and order event (its groups set their own
# sample size, 10). One executable, one link of the SDK.
bench pipeline "${crit[@]}"
openssl speed -evp sha256 -bytes 16384 -seconds 3 > "$out/openssl.txt" 2>/dev/null || true

# The host's speed next to each end-to-end path: openssl's SHA-256 for one
# second, appended to host-speed.txt as "LABEL BYTES_PER_SEC". This machine
# is a VM whose speed moves with what shares its host, by 1.75 times
# within a few minutes (the same menu kernel: 2.0 and 3.5 ms of CPU an item,
# with no steal time counted): a kernel timed in part 1 is not the speed an
# end-to-end path ran at minutes later. The payments floor is taken from
# the probes around the payments run, and the table gives the spread (of
# the SHA-256 unit's speed: work bound by caches and memory moves more).
probe() {
  local bps
  bps=$(openssl speed -evp sha256 -bytes 16384 -seconds 1 2>/dev/null | awk 'END {sub(/k$/, "", $NF); printf "%.0f\n", $NF * 1000}') || true
  echo "$1 ${bps:-0}" >> "$out/host-speed.txt"
}
: > "$out/host-speed.txt"

# CPU ticks (user + system) and peak RSS (KiB) of a process; "0 0" when gone.
proc_cpu() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
proc_hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
emulator_pids() { cat "$state/moto.pid" "$state/emulators.pid" 2>/dev/null; }
emulators_cpu() { local t=0 p; for p in $(emulator_pids); do t=$((t + $(proc_cpu "$p"))); done; echo "$t"; }
daemon_pid() { cat "$state/cafe-streamd.pid"; }

# Fresh resources for a path: $1 is the id prefix, $2 where the fraud
# history lives (the default when absent).
configure() {
  local id=$1 fraud=${2:-}
  cat > "$out/$id.toml" <<TOML
[sources.payments]
queue = "$id-pay.fifo"
dlq = "$id-pay-dlq.fifo"
[sources.menu]
queue = "$id-menu"
dlq = "$id-menu-dlq"
[sources.orders]
stream = "$id-orders"
lease_table = "$id-leases"
shards = 4
[sinks.dynamodb]
aggregates_table = "$id-aggregates"
payments_table = "$id-payments"
orders_table = "$id-orders"
menu_table = "$id-menu"
fraud_state_table = "$id-fraud-state"
[rejected]
queue = "$id-rejected"
TOML
  if [ -n "$fraud" ]; then printf '[fraud]\nstate = "%s"\n' "$fraud" >> "$out/$id.toml"; fi
  export CAFE_STREAMD_CONFIG=$out/$id.toml
  export CAFE_LOADGEN_PAYMENTS_QUEUE=$id-pay.fifo CAFE_LOADGEN_PAYMENTS_TABLE=$id-payments \
    CAFE_LOADGEN_AGGREGATES_TABLE=$id-aggregates CAFE_LOADGEN_ORDERS_STREAM=$id-orders \
    CAFE_LOADGEN_ORDERS_TABLE=$id-orders CAFE_LOADGEN_MENU_QUEUE=$id-menu CAFE_LOADGEN_MENU_TABLE=$id-menu \
    CAFE_LOADGEN_REJECTED_QUEUE=$id-rejected CAFE_LOADGEN_LEASE_TABLE=$id-leases
  "$CAFE_STREAMD_BIN" provision --config "$CAFE_STREAMD_CONFIG" > /dev/null
}

# Runs "$@" (a loadgen command that leaves the daemon running) and records,
# in $out/$path.proc, the run's wall time, the daemon's CPU and peak RSS, and
# the emulators' CPU over the run.
measure() {
  local path=$1; shift
  local t0 e0 status=0
  probe "$path:before"
  t0=$(date +%s.%N)
  e0=$(emulators_cpu)
  "$@" > "$out/$path.txt" 2>&1 || status=$?
  local pid; pid=$(daemon_pid)
  # The daemon's own counters (batch sizes, stage times, extensions, sink
  # requests) for reading a figure, not for the table.
  curl -s --max-time 5 "http://${CAFE_ADMIN__LISTEN:-127.0.0.1:9464}/metrics" > "$out/$path.metrics" 2> /dev/null || true
  printf '{"wall_secs": %s, "daemon_cpu_ticks": %s, "daemon_peak_rss_kib": %s, "emulators_cpu_ticks": %s, "ticks_per_sec": %s, "status": %s}\n' \
    "$(awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN {printf "%.3f", a - b}')" "$(proc_cpu "$pid")" "$(proc_hwm "$pid")" \
    "$(( $(emulators_cpu) - e0 ))" "$(getconf CLK_TCK)" "$status" > "$out/$path.proc"
  scripts/daemon.sh stop > /dev/null 2>&1 || true
  probe "$path:after"
  if [ "$status" != 0 ]; then
    # A scenario that ran to its verdict and failed a threshold still has its
    # figures (and its lost and duplicated counts): they go in the table with
    # the verdict, and bench.sh exits 1 at the end. Anything else stops here.
    if [ -f "$out/$path/summary.json" ]; then
      echo "bench: the $path run's verdict is FAIL (exit $status); its figures are reported" >&2
    else
      tail -n 30 "$out/$path.txt" >&2; echo "bench: the $path run failed (exit $status); its output: $out/$path.txt" >&2; exit 1
    fi
  fi
}
trap 'scripts/daemon.sh stop > /dev/null 2>&1 || true' EXIT
export CAFE_SCENARIOS_DIR=$out/scenarios
scripts/daemon.sh stop > /dev/null 2>&1 || true

# cold-start measures its bare client itself ([thresholds.local]), right
# after the daemon's run, on the same stack. One round judges the host's
# moment as much as the daemon (the same code's drain was 0.74-1.42 of its
# bare client's over five rounds on 2026-12-07: docs/performance.md), so
# each payments path runs in rounds, each on fresh resources with its own
# bare client, into rounds/NAME-K; the round whose drain / bare client's
# is the median (bench_goals.py's median_round) is the path's: its files
# are copied to NAME.* and NAME/ and its number written to
# rounds/NAME.median. The run's verdict is bench_table.py's (figures.json's
# run.verdicts_failed): a slow round fails the path when it is the median
# round; anything wrong in any round (lost, duplicated, no bare client)
# fails it whichever round it is. Every round's ratio and verdict is in the
# table.
sed 's/^restart = .*/restart = "before"/' scenarios/cold-start.toml > "$out/scenarios/cold-start.toml"
mkdir -p "$out/rounds"
adopt_round() { # adopt_round NAME K: round K's files (rounds/NAME-K.*, its report folder if any) become the path's
  local name=$1 k=$2 f
  for f in proc txt metrics; do cp "$out/rounds/$name-$k.$f" "$out/$name.$f" 2> /dev/null || true; done
  if [ -d "$out/rounds/$name-$k" ]; then cp -r "$out/rounds/$name-$k" "$out/$name"; fi
  echo "$k" > "$out/rounds/$name.median"
}
in_rounds() { # in_rounds NAME [FRAUD_STATE]
  local name=$1 fraud=${2:-} k median tag=p
  if [ -n "$fraud" ]; then tag=q; fi
  for k in $(seq 1 "$rounds"); do
    configure "b$(date -u +%H%M%S)$tag$k" "$fraud"
    scripts/daemon.sh start 2> /dev/null
    CAFE_LOADGEN_RESTART_COMMAND="$repo/scripts/daemon.sh restart" \
      measure "rounds/$name-$k" "$loadgen" run cold-start --scale "$scale" --report-dir "$out/rounds/$name-$k"
  done
  median=$(python3 scripts/bench_goals.py --median-round $(for k in $(seq 1 "$rounds"); do echo "$out/rounds/$name-$k/summary.json"; done))
  adopt_round "$name" "$median"
}
echo "== 2a. payments: cold-start with the daemon restarted just before the burst, then a bare consumer drains the same as it is sent; $rounds rounds"
in_rounds payments
echo "== 2a'. payments again, the fraud history in the process ([fraud] state = \"process\"): what the shared state costs; $rounds rounds"
in_rounds payments-process process

echo "== 2b. orders: backlog drained by a bare reader, written by a bare writer, then by the daemon; $rounds rounds"
# In rounds too (the same daemon code measured 0.94 and 0.75 of the bare
# writer in runs about three hours apart on 2026-12-07), each on fresh
# resources into
# rounds/orders-K; the round whose daemon / bare writer is the median
# (bench_goals.py --median-orders-round) is the path's, copied to orders.*.
# A round that fails stops the run, as the path did.
orders=$(python3 -c "print(max(100, round(10000 * $scale)))")
for k in $(seq 1 "$rounds"); do
  configure "b$(date -u +%H%M%S)o$k"
  # Where the daemon's own clock is read (its last-write stamp).
  CAFE_LOADGEN_DAEMON_ADMIN=${CAFE_ADMIN__LISTEN:-127.0.0.1:9464} \
    measure "rounds/orders-$k" "$loadgen" orders-throughput --orders "$orders" --start-command "$repo/scripts/daemon.sh start"
done
median=$(python3 scripts/bench_goals.py --median-orders-round $(for k in $(seq 1 "$rounds"); do echo "$out/rounds/orders-$k.txt"; done))
adopt_round orders "$median"

echo "== 2c. menu: menu-sync, then its bare client; $rounds rounds"
# In rounds too (the same code's menu-sync measured 604 and 346 items/s,
# and its bare client 959 and 618, in runs two hours apart on 2026-12-07:
# the path is CPU-bound, and the host's CPU moves), each on fresh
# resources into rounds/menu-K and rounds/menu-bare-K.txt; the round whose
# daemon / bare client is the median (bench_goals.py --median-menu-round)
# is the path's, copied to menu/, menu.* and menu-bare.txt. A slow round
# fails the path when it is the median; anything wrong in any round fails
# it whichever it is (bench_table.py).
cp scenarios/menu-sync.toml "$out/scenarios/"
for k in $(seq 1 "$rounds"); do
  configure "b$(date -u +%H%M%S)m$k"
  scripts/daemon.sh start 2> /dev/null
  measure "rounds/menu-$k" "$loadgen" run menu-sync --scale "$scale" --report-dir "$out/rounds/menu-$k"
  # The menu path's bare client, on the same stack right after, the daemon
  # stopped: the same catalogue sent by the same pods, drained as it is
  # sent with the daemon's reads and writes and no work (loadgen's
  # menuthroughput.rs), timed over the same span as menu-sync's drain.
  "$loadgen" menu-throughput --scale "$scale" > "$out/rounds/menu-bare-$k.txt" 2>&1 || {
    tail -n 30 "$out/rounds/menu-bare-$k.txt" >&2
    echo "bench: the menu path's bare client failed; its output: $out/rounds/menu-bare-$k.txt" >&2; exit 1
  }
done
median=$(python3 scripts/bench_goals.py --median-menu-round \
  $(for k in $(seq 1 "$rounds"); do echo "$out/rounds/menu-$k/summary.json" "$out/rounds/menu-bare-$k.txt"; done))
adopt_round menu "$median"
cp "$out/rounds/menu-bare-$median.txt" "$out/menu-bare.txt"

echo "== 2d. memory: a backlog of 1,000,000 records on the stream, the daemon's RSS over 120 s of it"
configure "b$(date -u +%H%M%S)k"
records=$(python3 -c "print(max(10000, round(1000000 * $scale)))")
"$loadgen" orders-backlog --records "$records" --watch-secs 120 --start-command "$repo/scripts/daemon.sh start" \
  > "$out/backlog.txt" 2>&1 || { tail -n 30 "$out/backlog.txt" >&2; echo "bench: the backlog run failed; its output: $out/backlog.txt" >&2; exit 1; }
scripts/daemon.sh stop > /dev/null 2>&1 || true

python3 "$repo/scripts/bench_table.py" "$out" "$(nproc)" "$(( $(date +%s) - started ))" --keep-criterion
verdicts=$(python3 -c 'import json, sys; print(" ".join(json.load(open(sys.argv[1]))["run"]["verdicts_failed"]))' "$out/figures.json")
if [ -n "$verdicts" ]; then echo "bench: verdict FAIL for: $verdicts (see the table)" >&2; exit 1; fi
