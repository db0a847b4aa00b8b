#!/usr/bin/env bash
# Runs docs/walkthrough.md as written: its `sh` blocks after the first (the
# first starts the stack and the daemon: `scripts/run-local.sh --keep`,
# which the caller has done, or scripts/test.sh's own daemon), in order,
# in one shell, from the checkout; then checks what they printed: the
# payment's decision, the store's minute counting it, the order confirmed.
#
# Usage: scripts/walkthrough.sh      (a daemon running on the default resources)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
page=docs/walkthrough.md
script=$(awk '
  /^```sh$/ { inside = 1; n++; next }
  /^```$/   { inside = 0; next }
  inside && n > 1 { print }
' "$page")
[ -n "$script" ] || { echo "walkthrough: no sh blocks in $page" >&2; exit 1; }
out=$(timeout 180 bash -euo pipefail -c "$script" 2>&1) || {
  echo "$out" >&2; echo "walkthrough: $page failed as written" >&2; exit 1; }
for want in '"decision"' '"payment_amount_cents"' '"confirmed"' '"leaseOwner"'; do
  if ! grep -q "$want" <<< "$out"; then
    echo "$out" >&2; echo "walkthrough: $page printed no $want" >&2; exit 1
  fi
done
echo "walkthrough: $page ran as written (a payment decided and counted, an order confirmed)"
