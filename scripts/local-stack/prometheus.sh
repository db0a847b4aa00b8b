#!/usr/bin/env bash
# A real Prometheus (Debian's package) scraping a local cafe-streamd every
# second and evaluating dashboards/cafe-stream.rules.yml, for the tests that
# prove the dashboards and alerts. Installs the package on first use.
#
# Usage: prometheus.sh start|stop|url
#   CAFE_PROM_PORT    Prometheus port (default 19090; below 32768, outside the range
#                     Linux hands out to outgoing connections, so a busy test run
#                     cannot be holding it)
#   CAFE_PROM_TARGET  daemon admin endpoint to scrape (default 127.0.0.1:9464)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${CAFE_STACK_DIR:-$repo/.stack}/prometheus
port=${CAFE_PROM_PORT:-19090}
target=${CAFE_PROM_TARGET:-127.0.0.1:9464}
pidfile=$state/prometheus.pid

install() {
  command -v prometheus > /dev/null && command -v promtool > /dev/null && return 0
  echo "prometheus: installing Debian's package" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  # The package's own service is not wanted here: keep dpkg from starting it.
  $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y --no-install-recommends prometheus > "$state/apt.log" 2>&1 \
    || { $sudo apt-get update > /dev/null 2>&1 && $sudo env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y --no-install-recommends prometheus > "$state/apt.log" 2>&1; } \
    || { echo "prometheus: apt-get install failed; see $state/apt.log" >&2; exit 1; }
}

start() {
  mkdir -p "$state"
  install
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then return 0; fi
  rm -rf "$state/data"
  cat > "$state/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $repo/dashboards/cafe-stream.rules.yml
scrape_configs:
  - job_name: cafe-streamd
    static_configs:
      - targets: ['$target']
YAML
  promtool check config "$state/prometheus.yml" > /dev/null
  nohup prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/data" \
    --web.listen-address="127.0.0.1:$port" > "$state/prometheus.log" 2>&1 &
  echo $! > "$pidfile"
  for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/-/ready" > /dev/null 2>&1; then
      echo "prometheus: ready on 127.0.0.1:$port, scraping $target" >&2
      return 0
    fi
    sleep 0.2
  done
  echo "prometheus: not ready after 20 s; see $state/prometheus.log" >&2
  exit 1
}

stop() {
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "http://127.0.0.1:$port" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
