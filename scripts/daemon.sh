#!/usr/bin/env bash
# Starts, stops or restarts a cafe-streamd on this machine, against whatever
# the environment points the AWS SDK at (see scripts/local-stack/stack.sh env).
#
# Usage: daemon.sh start|stop|restart|status
#   CAFE_STREAMD_BIN     binary (default: <repo>/target/release/cafe-streamd)
#   CAFE_STREAMD_CONFIG  config file (default: none: /etc/cafe-stream/cafe-streamd.toml
#                        when it exists, else the contract's defaults)
#   CAFE_STACK_DIR       where the pid file and log go (default: <repo>/.stack)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
state=${CAFE_STACK_DIR:-$repo/.stack}
bin=${CAFE_STREAMD_BIN:-$repo/target/release/cafe-streamd}
pidfile=$state/cafe-streamd.pid
log=$state/logs/cafe-streamd.log
mkdir -p "$state/logs"

# Alive and not a zombie: a daemon started with nohup is reaped by whatever
# adopted it, which may take seconds, and `kill -0` succeeds on a zombie (it
# made every restart look up to 2 s slower than the daemon's exit).
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2> /dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}
running() { [ -f "$pidfile" ] && alive "$(cat "$pidfile")"; }

start() {
  if running; then echo "daemon: already running (pid $(cat "$pidfile"))" >&2; return 0; fi
  [ -x "$bin" ] || { echo "daemon: $bin not built" >&2; exit 1; }
  args=(run)
  [ -n "${CAFE_STREAMD_CONFIG:-}" ] && args+=(--config "$CAFE_STREAMD_CONFIG")
  # As the systemd unit does (packaging/systemd/cafe-streamd.service).
  MIMALLOC_ARENA_EAGER_COMMIT=${MIMALLOC_ARENA_EAGER_COMMIT:-0} MIMALLOC_PURGE_DELAY=${MIMALLOC_PURGE_DELAY:-0} \
    nohup "$bin" "${args[@]}" >> "$log" 2>&1 &
  echo $! > "$pidfile"
  echo "daemon: started pid $! (log $log)" >&2
}

stop() {
  if ! running; then rm -f "$pidfile"; return 0; fi
  local pid; pid=$(cat "$pidfile")
  kill -TERM "$pid"
  for _ in $(seq 1 600); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then echo "daemon: pid $pid ignored SIGTERM for 60 s; killing" >&2; kill -9 "$pid"; fi
  rm -f "$pidfile"
  echo "daemon: stopped pid $pid" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) if running; then echo "running (pid $(cat "$pidfile"))"; else echo "stopped"; exit 1; fi ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
