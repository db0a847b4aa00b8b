#!/usr/bin/env bash
# The local AWS-compatible stack cafe-stream runs and tests against:
#   moto 5.2.5 (SQS, DynamoDB) through moto_launcher.py, on 127.0.0.1:$CAFE_MOTO_PORT
#   kinesalite 3.3.3 (Kinesis) through kinesalite.js, on 127.0.0.1:$CAFE_KINESALITE_PORT
#   PostgreSQL 15 (Redshift's SQL), on 127.0.0.1:$CAFE_PG_PORT (default 15432: every
#   default port is below 32768, outside the range Linux hands out to outgoing
#   connections, so a busy machine cannot be holding it when the stack starts)
#
# Usage: stack.sh start|status|stop|env
#   start   install what is missing (venv, npm packages, cluster), start what is
#           not running, wait until each answers; idempotent
#   status  say what runs; exit 1 if anything does not
#   stop    stop all three
#   env     print the environment that points the AWS SDK (and the AWS CLI) here
#
# State and logs live in $CAFE_STACK_DIR (default: <repo>/.stack; logs in logs/).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${CAFE_STACK_DIR:-$repo/.stack}
logs=$state/logs
moto_port=${CAFE_MOTO_PORT:-4566}
kinesis_port=${CAFE_KINESALITE_PORT:-4567}
pg_port=${CAFE_PG_PORT:-15432}
pg_bin=${CAFE_PG_BIN:-/usr/lib/postgresql/15/bin}
region=${AWS_REGION:-us-east-1}

# The PostgreSQL cluster normally lives in $state/pg. As root the server runs
# as the postgres user, who may not be able to reach a checkout under, say,
# /root (mode 700); then the cluster goes to a folder of its own in /var/tmp,
# one per state folder, and its log is linked into $logs.
pg_root=$state/pg
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$state/.." 2>/dev/null; then
  pg_root=/var/tmp/cafe-stream-pg-$(printf '%s' "$state" | md5sum | cut -c1-12)
fi

die() { echo "stack: $*" >&2; exit 1; }
say() { echo "stack: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port pidfile log
  local i
  for i in $(seq 1 100); do
    port_open "$2" && return 0
    if [ -f "$3" ] && ! kill -0 "$(cat "$3")" 2>/dev/null; then
      tail -n 20 "$4" >&2 || true
      die "$1 exited while starting; log: $4"
    fi
    sleep 0.2
  done
  tail -n 20 "$4" >&2 || true
  die "$1 did not open 127.0.0.1:$2 within 20 s; log: $4"
}

# Commands for the PostgreSQL server must not run as root: as root, run them
# as the postgres system user, who owns the cluster's folders.
as_pg() {
  if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

install_moto() {
  if [ ! -x "$state/venv/bin/python" ] || ! "$state/venv/bin/python" -c 'import moto, sys; sys.exit(moto.__version__ != "5.2.5")' 2>/dev/null; then
    say "installing moto 5.2.5 into $state/venv"
    python3 -m venv "$state/venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$state/venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" \
      > "$logs/pip.log" 2>&1 || { tail -n 20 "$logs/pip.log" >&2; die "pip install failed; log: $logs/pip.log"; }
  fi
}

install_kinesalite() {
  if [ ! -f "$state/node/node_modules/kinesalite/package.json" ] \
     || ! cmp -s "$here/package-lock.json" "$state/node/package-lock.json"; then
    command -v npm >/dev/null || die "npm not found (Node.js 20 is needed for kinesalite)"
    say "installing kinesalite 3.3.3 into $state/node"
    mkdir -p "$state/node"
    cp "$here/package.json" "$here/package-lock.json" "$state/node/"
    (cd "$state/node" && npm ci --no-audit --no-fund > "$logs/npm.log" 2>&1) \
      || { tail -n 20 "$logs/npm.log" >&2; die "npm ci failed; log: $logs/npm.log"; }
  fi
}

init_pg() {
  [ -x "$pg_bin/initdb" ] || die "PostgreSQL 15 not found at $pg_bin (Debian: apt-get install postgresql-15)"
  if [ ! -f "$pg_root/data/PG_VERSION" ]; then
    say "creating a PostgreSQL cluster in $pg_root"
    mkdir -p "$pg_root/data" "$pg_root/run"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$pg_root"; fi
    as_pg "$pg_bin/initdb" -D "$pg_root/data" -U postgres --auth=trust -E UTF8 \
      > "$logs/initdb.log" 2>&1 || { tail -n 20 "$logs/initdb.log" >&2; die "initdb failed; log: $logs/initdb.log"; }
  fi
}

start_moto() {
  if port_open "$moto_port"; then return 0; fi
  install_moto
  say "starting moto on 127.0.0.1:$moto_port"
  nohup "$state/venv/bin/python" "$here/moto_launcher.py" -H 127.0.0.1 -p "$moto_port" \
    > "$logs/moto.log" 2>&1 &
  echo $! > "$state/moto.pid"
  wait_port moto "$moto_port" "$state/moto.pid" "$logs/moto.log"
}

start_kinesalite() {
  if port_open "$kinesis_port"; then return 0; fi
  install_kinesalite
  say "starting kinesalite on 127.0.0.1:$kinesis_port"
  NODE_PATH="$state/node/node_modules" nohup node "$here/kinesalite.js" "$kinesis_port" 256 \
    > "$logs/kinesalite.log" 2>&1 &
  echo $! > "$state/kinesalite.pid"
  wait_port kinesalite "$kinesis_port" "$state/kinesalite.pid" "$logs/kinesalite.log"
}

start_pg() {
  if port_open "$pg_port"; then return 0; fi
  init_pg
  say "starting PostgreSQL on 127.0.0.1:$pg_port"
  local pg_log=$pg_root/postgres.log
  touch "$pg_log"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$pg_log"; fi
  [ "$pg_log" = "$logs/postgres.log" ] || ln -sfn "$pg_log" "$logs/postgres.log"
  as_pg "$pg_bin/pg_ctl" -D "$pg_root/data" -l "$pg_log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_root/run" start > /dev/null \
    || { tail -n 20 "$pg_log" >&2; die "PostgreSQL did not start; log: $pg_log"; }
  as_pg "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = 'cafe'" | grep -q 1 \
    || as_pg "$pg_bin/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres cafe
}

stop_pid() { # name pidfile
  if [ -f "$2" ]; then
    local pid; pid=$(cat "$2")
    if kill -0 "$pid" 2>/dev/null; then
      say "stopping $1 (pid $pid)"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$2"
  fi
}

cmd=${1:-}
mkdir -p "$logs"
case "$cmd" in
  start)
    start_moto
    start_kinesalite
    start_pg
    say "up: moto :$moto_port, kinesalite :$kinesis_port, postgres :$pg_port (logs in $logs)"
    ;;
  status)
    rc=0
    for pair in "moto:$moto_port" "kinesalite:$kinesis_port" "postgres:$pg_port"; do
      if port_open "${pair#*:}"; then echo "${pair%%:*} up on 127.0.0.1:${pair#*:}"
      else echo "${pair%%:*} DOWN (127.0.0.1:${pair#*:})"; rc=1; fi
    done
    exit $rc
    ;;
  stop)
    stop_pid moto "$state/moto.pid"
    stop_pid kinesalite "$state/kinesalite.pid"
    if [ -f "$pg_root/data/postmaster.pid" ]; then
      as_pg "$pg_bin/pg_ctl" -D "$pg_root/data" -m fast stop > /dev/null || true
    fi
    ;;
  env)
    cat <<EOF
export AWS_REGION=$region
export AWS_DEFAULT_REGION=$region
export AWS_ACCESS_KEY_ID=\${AWS_ACCESS_KEY_ID:-testing}
export AWS_SECRET_ACCESS_KEY=\${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$moto_port
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$moto_port
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$kinesis_port
export CAFE_PG_URL=postgres://postgres@127.0.0.1:$pg_port/cafe
export CAFE_KINESALITE_JS=$here/kinesalite.js
export CAFE_KINESALITE_NODE_PATH=$state/node/node_modules
EOF
    ;;
  *)
    echo "usage: $0 start|status|stop|env" >&2
    exit 2
    ;;
esac
