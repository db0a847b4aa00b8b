#!/usr/bin/env bash
# Measures the orders path on the local stack, in one run:
#   1. the orders/s one cafe-streamd sustains draining a backlog, next to
#      what a bare GetRecords reader drains from the same stream;
#   2. end-to-end p99 with orders arriving at half that rate.
# Every run gets fresh resources (own stream, lease table and tables).
#
# Usage: scripts/measure-orders.sh [ORDERS] [HALF_RATE_SECS]
#   ORDERS          backlog size (default 3000)
#   HALF_RATE_SECS  length of the half-rate run (default 60)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
orders=${1:-3000}
secs=${2:-60}

scripts/local-stack/stack.sh start
eval "$(scripts/local-stack/stack.sh env)"
cargo build --release --locked -p daemon -p loadgen
export CAFE_STREAMD_BIN="$repo/target/release/cafe-streamd"

id=m$(date -u +%H%M%S)
work=$repo/.stack/measure-$id
mkdir -p "$work/scenarios"
cat > "$work/cafe-streamd.toml" <<TOML
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
[rejected]
queue = "$id-rejected"
TOML
export CAFE_STREAMD_CONFIG=$work/cafe-streamd.toml
export CAFE_LOADGEN_ORDERS_STREAM=$id-orders CAFE_LOADGEN_ORDERS_TABLE=$id-orders CAFE_LOADGEN_AGGREGATES_TABLE=$id-aggregates
"$CAFE_STREAMD_BIN" provision --config "$CAFE_STREAMD_CONFIG" > /dev/null
trap 'scripts/daemon.sh stop' EXIT

echo "== 1. backlog of $orders orders: bare reader, then the daemon"
target/release/cafe-loadgen orders-throughput --orders "$orders" --start-command "$repo/scripts/daemon.sh start" \
  | tee "$work/throughput.txt"
rate=$(tail -1 "$work/throughput.txt" | python3 -c 'import json,sys; print(json.load(sys.stdin)["daemon_orders_per_sec"])')
half=$(python3 -c "print(round($rate / 2, 1))")

echo "== 2. steady $half orders/s (half of $rate) for $secs s"
cat > "$work/scenarios/half-rate.toml" <<TOML
name = "half-rate"
description = "steady orders at half the measured sustained rate"
[orders]
producers = 16
stores = 20
customers = 5000
cancel_ratio = 0.08
status_gap_ms = 500
items = [1, 6]
bulk_items = [24, 300]
[[stages]]
name = "steady"
secs = $secs
rate_start = $half
rate_end = $half
bulk_ratio = 0.1
[thresholds]
goose = ["error-rate<=0%"]
TOML
CAFE_SCENARIOS_DIR=$work/scenarios target/release/cafe-loadgen run half-rate --report-dir "$work/half-rate"
echo "reports: $work"
