#!/usr/bin/env bash
# The local AWS-compatible stack cafe-stream runs and tests against:
#   moto 5.2.5 (SQS) through moto_launcher.py, on 127.0.0.1:$CAFE_MOTO_PORT
#   cafe-emulators (emulators/, a cargo workspace of its own, pinned by its
#   Cargo.lock, built once per machine into $CAFE_CACHE_DIR):
#     DynamoDB (dynoxide 3.2.0) on 127.0.0.1:$CAFE_DYNAMODB_PORT and
#     Kinesis (ferrokinesis 0.7.0) on 127.0.0.1:$CAFE_KINESIS_PORT
#   PostgreSQL 15 (Redshift's SQL), on 127.0.0.1:$CAFE_PG_PORT (default 15432: every
#   default port is below 32768, outside the range Linux hands out to outgoing
#   connections, so a busy machine cannot be holding it when the stack starts)
#
# Usage: stack.sh start|status|stop|env|where|emulators-bin|selftest
#   start   install or build what is missing (venv, cafe-emulators, cluster),
#           start what is not running, wait until each answers; idempotent
#           while the checkout's files stay as they are (below). One at a
#           time per checkout (a lock in the state folder).
#           A port held by anything but this checkout's stack (another
#           checkout's, say) is refused with the process that holds it;
#           a server of this checkout's started from other files than it
#           holds now (moto's launcher or pins; the emulators' sources,
#           compiler or options: after a pull, say) is restarted, and what
#           it held in memory (queues, tables, streams) is gone.
#   status  say what runs, whose it is and whether it was started from the
#           checkout's files; exit 1 unless all of it is ours
#   stop    stop this checkout's servers
#   env     print the environment that points the AWS SDK (and the AWS CLI) here
#   where   print where this checkout's stack keeps its state and its cluster
#   emulators-bin
#           build cafe-emulators if this machine has not yet, print its path
#   selftest
#           run test_moto_launcher.py: the launcher's fixes, checked step by
#           step where a race between requests cannot be timed (installs
#           the venv if needed; needs no server)
#
# State and logs live in $CAFE_STACK_DIR (default: <repo>/.stack; logs in logs/).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
state=${CAFE_STACK_DIR:-$repo/.stack}
logs=$state/logs
moto_port=${CAFE_MOTO_PORT:-4566}
kinesis_port=${CAFE_KINESIS_PORT:-4567}
dynamodb_port=${CAFE_DYNAMODB_PORT:-4568}
# The emulators are built outside the checkout, once per machine and per
# version of their sources: a fresh clone on a machine that built them
# before rebuilds nothing.
cache=${CAFE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cafe-stream}
emulators_key() {
  { rustc --version; cat "$repo/emulators/Cargo.toml" "$repo/emulators/Cargo.lock" "$repo"/emulators/src/*.rs; } \
    | sha256sum | cut -c1-16
}
# What moto serves is its launcher's and the pinned packages' doing.
moto_key() {
  local f
  for f in "$here/moto_launcher.py" "$here/requirements.txt"; do [ -r "$f" ] || die "cannot read $f"; done
  cat "$here/moto_launcher.py" "$here/requirements.txt" | sha256sum | cut -c1-16
}
# The emulators' options; with their build's key, what a start records.
emulators_opts=(--kinesis-shard-limit 256)
emulators_started_key() { echo "$(emulators_key) ${emulators_opts[*]}"; }
# One start at a time per checkout: two at once would each stop a server
# started from other files and start their own, and the one that lost the
# port would leave its pid (the winner's server then belongs to no one).
# The lock is on file descriptor 8, which every server started under it
# closes (a server holding it would hold every later start).
start_lock() {
  mkdir -p "$state"
  exec 8> "$state/start.lock"
  flock 8
}
# Whether the server whose start recorded key file $1 was started from the
# files the checkout holds now ($2, their key). One started from others (a
# pull changed the launcher, say, or a stack.sh before the keys started
# it) is this checkout's but not what it says: `start` restarts it.
current() { # keyfile key
  [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}
pg_port=${CAFE_PG_PORT:-15432}
pg_bin=${CAFE_PG_BIN:-/usr/lib/postgresql/15/bin}
region=${AWS_REGION:-us-east-1}

# The PostgreSQL cluster normally lives in $state/pg. As root the server runs
# as the postgres user, who may not be able to reach a checkout under, say,
# /root (mode 700); then the cluster goes to a folder of its own in /var/tmp,
# one per state folder, and its log is linked into $logs.
pg_root=$state/pg
# The answer must not change once the state folder exists: before the first
# start it (and maybe folders above it) does not, so the nearest folder that
# does is asked (the ones this script creates are open to all, as root's
# umask makes them).
reach=$state
while [ ! -e "$reach" ] && [ "$reach" != / ]; do reach=$(dirname "$reach"); done
if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$reach" 2>/dev/null; then
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

# The pid listening on 127.0.0.1:$1 (empty when none, or when it cannot be seen).
listener_pid() {
  ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2
}

# Is the server on port $1 this checkout's, started with pid file $2 (or, for
# PostgreSQL, the postmaster of this checkout's cluster)? A port held by
# another checkout's stack, or anything else, must not be trusted: its
# launcher, its versions and its files are not this checkout's.
ours() { # port pidfile
  local pid want
  pid=$(listener_pid "$1")
  [ -f "$2" ] || return 1
  want=$(head -n 1 "$2")
  [ -n "$pid" ] && [ "$pid" = "$want" ]
}

refuse_foreign() { # name port pidfile env-var
  local pid cmd
  pid=$(listener_pid "$2")
  cmd=$( [ -n "$pid" ] && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null || true)
  local who="a process this user cannot see"
  [ -z "$pid" ] || who="pid $pid${cmd:+ ($cmd)}"
  die "127.0.0.1:$2 ($1) is held by $who, not by this checkout's stack ($state).
  Stop that stack (its scripts/local-stack/stack.sh stop), or run this one on other ports ($4=...)."
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

# The AWS CLI (v1, pinned by cli-requirements.txt) for the walkthrough and
# for poking at the stack by hand, in a venv of its own (its botocore pin
# must not meet moto's), reached through $state/bin/aws, which `env` puts
# first on the PATH.
install_cli() {
  local want
  want=$(sed -n 's/^awscli==//p' "$here/cli-requirements.txt")
  if [ ! -x "$state/cli/bin/aws" ] || [ "$("$state/cli/bin/python" -c 'import awscli; print(awscli.__version__)' 2>/dev/null)" != "$want" ]; then
    say "installing the AWS CLI $want into $state/cli"
    python3 -m venv "$state/cli" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$state/cli/bin/pip" install --quiet --disable-pip-version-check -r "$here/cli-requirements.txt" \
      > "$logs/pip-cli.log" 2>&1 || { tail -n 20 "$logs/pip-cli.log" >&2; die "pip install failed; log: $logs/pip-cli.log"; }
  fi
  # Through aws-cli.sh: the CLI v1 sends SQS calls to AWS's legacy names
  # unless given --endpoint-url (see that file).
  mkdir -p "$state/bin"
  cp "$here/aws-cli.sh" "$state/bin/aws"
}

# Prints the path of this checkout's cafe-emulators, building it first if
# this machine has no build of these sources yet.
build_emulators() {
  command -v cargo >/dev/null || die "cargo not found (the emulators are built with it)"
  local key bin
  key=$(emulators_key)
  bin=$cache/emulators/$key/cafe-emulators
  if [ ! -x "$bin" ]; then
    mkdir -p "$cache/emulators" "$logs"
    # One build at a time on this machine (two checkouts starting at once).
    exec 9> "$cache/emulators/lock"
    flock 9
    if [ ! -x "$bin" ]; then
      say "building cafe-emulators (dynoxide, ferrokinesis) into $cache/emulators: once per machine, about 5 minutes"
      (cd "$repo/emulators" && env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
        cargo build --release --locked --target-dir "$cache/emulators/target") \
        > "$logs/emulators-build.log" 2>&1 \
        || { tail -n 20 "$logs/emulators-build.log" >&2; die "building cafe-emulators failed; log: $logs/emulators-build.log"; }
      mkdir -p "$cache/emulators/$key"
      cp "$cache/emulators/target/release/cafe-emulators" "$bin.tmp" && mv "$bin.tmp" "$bin"
    fi
    exec 9>&-
  fi
  echo "$bin"
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

# TLS for the local PostgreSQL, as Redshift offers it: a CA of its own and
# a server certificate for DNS name localhost only (not 127.0.0.1), so that
# the tests can tell verify-ca (chain only) from verify-full (chain and
# host name). Made once per cluster; the CA is exported as CAFE_PG_CA.
init_pg_tls() {
  local d=$pg_root/tls
  [ -f "$d/server.crt" ] && [ -f "$d/ca.crt" ] && return 0
  command -v openssl > /dev/null || die "openssl not found (Debian: apt-get install openssl)"
  mkdir -p "$d"
  {
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 3650 -subj "/CN=cafe-stream local CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout "$d/ca.key" -out "$d/ca.crt"
    openssl req -new -nodes -newkey rsa:2048 -sha256 -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr"
    printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
      > "$d/server.ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial -sha256 -days 3650 \
      -extfile "$d/server.ext" -out "$d/server.crt"
  } > "$logs/pg-tls.log" 2>&1 || { tail -n 20 "$logs/pg-tls.log" >&2; die "making the PostgreSQL TLS certificates failed"; }
  chmod 600 "$d/server.key" "$d/ca.key"
  chmod 644 "$d/ca.crt" "$d/server.crt"
  if [ "$(id -u)" = 0 ]; then chown -R postgres: "$d"; fi
}

start_moto() {
  local key stale=
  key=$(moto_key)
  if port_open "$moto_port"; then
    ours "$moto_port" "$state/moto.pid" || refuse_foreign moto "$moto_port" "$state/moto.pid" CAFE_MOTO_PORT
    current "$state/moto.key" "$key" && return 0
    stale=1
  fi
  # Before a stale moto is stopped: a failed pip leaves it running.
  install_moto
  if [ -n "$stale" ]; then
    say "restarting moto: it was started from another launcher or other pins than this checkout's (what it held is dropped)"
    stop_pid moto "$state/moto.pid"
  fi
  say "starting moto on 127.0.0.1:$moto_port"
  nohup "$state/venv/bin/python" "$here/moto_launcher.py" -H 127.0.0.1 -p "$moto_port" \
    > "$logs/moto.log" 2>&1 8>&- &
  echo $! > "$state/moto.pid"
  echo "$key" > "$state/moto.key"
  wait_port moto "$moto_port" "$state/moto.pid" "$logs/moto.log"
}

start_emulators() {
  local up=0
  for port in "$dynamodb_port" "$kinesis_port"; do
    if port_open "$port"; then
      ours "$port" "$state/emulators.pid" \
        || refuse_foreign cafe-emulators "$port" "$state/emulators.pid" "CAFE_DYNAMODB_PORT / CAFE_KINESIS_PORT"
      up=$((up + 1))
    fi
  done
  local key bin
  key=$(emulators_started_key)
  if [ "$up" = 2 ]; then
    current "$state/emulators.key" "$key" && return 0
    say "restarting cafe-emulators: they were built from other sources, by another compiler or with other options than this checkout's (what they held is dropped)"
  fi
  bin=$(build_emulators)
  stop_pid cafe-emulators "$state/emulators.pid"
  say "starting cafe-emulators: DynamoDB on 127.0.0.1:$dynamodb_port, Kinesis on 127.0.0.1:$kinesis_port"
  nohup "$bin" --dynamodb-port "$dynamodb_port" --kinesis-port "$kinesis_port" "${emulators_opts[@]}" \
    > "$logs/emulators.log" 2>&1 8>&- &
  echo $! > "$state/emulators.pid"
  echo "$key" > "$state/emulators.key"
  wait_port "cafe-emulators (DynamoDB)" "$dynamodb_port" "$state/emulators.pid" "$logs/emulators.log"
  wait_port "cafe-emulators (Kinesis)" "$kinesis_port" "$state/emulators.pid" "$logs/emulators.log"
}

start_pg() {
  if port_open "$pg_port"; then
    ours "$pg_port" "$pg_root/data/postmaster.pid" || refuse_foreign postgres "$pg_port" "$pg_root/data/postmaster.pid" CAFE_PG_PORT
    # A cluster this script started before it offered TLS: the TLS tests
    # would fail for that reason alone.
    if [ "$(as_pg "$pg_bin/psql" -h 127.0.0.1 -p "$pg_port" -U postgres -tAc 'SHOW ssl' 2>/dev/null)" != on ]; then
      die "the running PostgreSQL (port $pg_port) offers no TLS: it was started by an older stack.sh; run '$0 stop' then '$0 start'"
    fi
    return 0
  fi
  init_pg
  init_pg_tls
  say "starting PostgreSQL on 127.0.0.1:$pg_port (TLS offered)"
  local pg_log=$pg_root/postgres.log
  touch "$pg_log"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$pg_log"; fi
  [ "$pg_log" = "$logs/postgres.log" ] || ln -sfn "$pg_log" "$logs/postgres.log"
  as_pg "$pg_bin/pg_ctl" -D "$pg_root/data" -l "$pg_log" -w -t 30 \
    -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $pg_root/run -c ssl=on -c ssl_cert_file=$pg_root/tls/server.crt -c ssl_key_file=$pg_root/tls/server.key" start > /dev/null 8>&- \
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

# Sourced (test_stack_script.py): the functions only.
if [ "${BASH_SOURCE[0]}" != "$0" ]; then return 0; fi

cmd=${1:-}
mkdir -p "$logs"
case "$cmd" in
  start)
    start_lock
    # A first build of the emulators (minutes of CPU) runs while pip, which
    # mostly waits on the network, installs moto.
    prebuild=
    if [ ! -x "$cache/emulators/$(emulators_key)/cafe-emulators" ]; then
      build_emulators > /dev/null &
      prebuild=$!
    fi
    start_moto
    install_cli
    if [ -n "$prebuild" ]; then wait "$prebuild" || die "building cafe-emulators failed; log: $logs/emulators-build.log"; fi
    start_emulators
    start_pg
    say "up: moto (SQS) :$moto_port, dynoxide (DynamoDB) :$dynamodb_port, ferrokinesis (Kinesis) :$kinesis_port, postgres :$pg_port (logs in $logs)"
    ;;
  status)
    rc=0
    for entry in "moto:$moto_port:$state/moto.pid" "dynamodb:$dynamodb_port:$state/emulators.pid" \
                 "kinesis:$kinesis_port:$state/emulators.pid" "postgres:$pg_port:$pg_root/data/postmaster.pid"; do
      IFS=: read -r name port pidfile <<< "$entry"
      if ! port_open "$port"; then echo "$name DOWN (127.0.0.1:$port)"; rc=1
      elif ours "$port" "$pidfile"; then
        case $name in
          moto) current "$state/moto.key" "$(moto_key)" ;;
          dynamodb|kinesis) current "$state/emulators.key" "$(emulators_started_key)" ;;
        esac && echo "$name up on 127.0.0.1:$port" \
          || echo "$name up on 127.0.0.1:$port, started from other files than this checkout's: '$0 start' restarts it"
      else echo "$name: 127.0.0.1:$port is held by pid $(listener_pid "$port"), not by this checkout's stack"; rc=1; fi
    done
    exit $rc
    ;;
  stop)
    stop_pid moto "$state/moto.pid"
    stop_pid cafe-emulators "$state/emulators.pid"
    stop_pid kinesalite "$state/kinesalite.pid"  # a stack started before the move to ferrokinesis
    if [ -f "$pg_root/data/postmaster.pid" ]; then
      as_pg "$pg_bin/pg_ctl" -D "$pg_root/data" -m fast stop > /dev/null || true
    fi
    ;;
  env)
    cat <<EOF
export PATH="$state/bin:\$PATH"
export AWS_REGION=$region
export AWS_DEFAULT_REGION=$region
export AWS_ACCESS_KEY_ID=\${AWS_ACCESS_KEY_ID:-testing}
export AWS_SECRET_ACCESS_KEY=\${AWS_SECRET_ACCESS_KEY:-testing}
export AWS_ENDPOINT_URL_SQS=http://127.0.0.1:$moto_port
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$dynamodb_port
export AWS_ENDPOINT_URL_KINESIS=http://127.0.0.1:$kinesis_port
export CAFE_PG_URL=postgres://postgres@127.0.0.1:$pg_port/cafe
export CAFE_PG_CA=$pg_root/tls/ca.crt
export CAFE_EMULATORS_BIN=$cache/emulators/$(emulators_key)/cafe-emulators
EOF
    ;;
  where)
    printf 'state=%s\npg_root=%s\n' "$state" "$pg_root"
    ;;
  emulators-bin)
    build_emulators
    ;;
  selftest)
    install_moto
    cd "$here" && exec "$state/venv/bin/python" -m unittest -v test_moto_launcher
    ;;
  *)
    echo "usage: $0 start|status|stop|env|where|emulators-bin|selftest" >&2
    exit 2
    ;;
esac
