#!/usr/bin/env bash
# Builds the packages EC2 hosts install, each as a .deb (Debian, Ubuntu)
# with cargo-deb and an .rpm (Amazon Linux, RHEL) with cargo-generate-rpm:
# cafe-stream (cafe-streamd, the systemd unit and its maintainer scripts,
# an example config, the dashboards and rules, the IAM policies and the
# README and docs/) and cafe-stream-loadgen (cafe-loadgen and the scenarios). The
# lists are in daemon/Cargo.toml and loadgen/Cargo.toml
# ([package.metadata.deb] and [package.metadata.generate-rpm]). x86_64
# only: the toolchain here has no other target's standard library.
#
# Usage: scripts/package.sh [PROFILE]     (default release)
#   The tools are installed, pinned, once per machine into
#   ${CAFE_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/cafe-stream}/tools/<versions>/ (as the
#   emulators are): a fresh clone on a machine that installed them before
#   compiles nothing for them (the install is about 8 minutes on 2 cores).
#   Packages go to target/packages/. test.sh packages the dev build (same
#   contents, unoptimised binaries) to inspect them without a second full
#   build.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
profile=${1:-release}
deb_version=3.8.0
rpm_version=0.21.1
cache=${CAFE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cafe-stream}
tools="$cache/tools/cargo-deb-$deb_version+cargo-generate-rpm-$rpm_version-$(uname -m)"
export PATH="$tools/bin:$PATH"

if [ ! -x "$tools/bin/cargo-deb" ] || [ ! -x "$tools/bin/cargo-generate-rpm" ]; then
  mkdir -p "$cache/tools"
  # One install at a time on this machine (two checkouts packaging at once);
  # installed aside, then moved into place whole.
  exec 9> "$cache/tools/lock"
  flock 9
  if [ ! -x "$tools/bin/cargo-deb" ] || [ ! -x "$tools/bin/cargo-generate-rpm" ]; then
    echo "package: installing cargo-deb $deb_version and cargo-generate-rpm $rpm_version into $tools (once per machine)" >&2
    rm -rf "$tools.tmp"
    # 9>&-: nothing cargo leaves running may hold the lock.
    # (Without scripts/test.sh's lint-while-building: these are not ours.)
    env -u RUSTC_WORKSPACE_WRAPPER -u CLIPPY_ARGS \
      cargo install --quiet --locked --root "$tools.tmp" "cargo-deb@$deb_version" "cargo-generate-rpm@$rpm_version" 9>&-
    rm -rf "$tools"
    mv "$tools.tmp" "$tools"
  fi
  exec 9>&-
fi

# rpm inspects the .rpm in the packaging test (Debian's package).
if ! command -v rpm > /dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rpm > /dev/null 2>&1 \
    || echo "package: could not install rpm (the .rpm is built anyway)" >&2
fi

# The same selection as the builds before it, so this one reuses theirs:
# features unify per selection, and a different one rebuilds every
# dependency (2 minutes for the dev build after test.sh's). test.sh builds
# the dev profile with --workspace --all-targets; bench.sh and run-local.sh
# build release with -p daemon -p loadgen.
if [ "$profile" = dev ]; then
  cargo build --locked --workspace --all-targets
else
  cargo build --locked --profile "$profile" -p daemon -p loadgen
fi
out="$repo/target/packages"
rm -rf "$out" && mkdir -p "$out"
# The dev packages (test.sh's, to inspect) are compressed fast: their
# 60 MB unoptimised binaries took xz 24 s and zstd 91 s; release packages
# keep the tools' defaults.
deb_fast=(); rpm_compress=()
if [ "$profile" = dev ]; then
  deb_fast=(--fast); rpm_compress=(--payload-compress gzip)
fi
# ${a[@]+"${a[@]}"}: an empty array under `set -u` is an error before bash 4.4.
# Two packages of each kind: cafe-stream (the daemon, for production hosts)
# and cafe-stream-loadgen (the harness and its scenarios).
for crate in daemon loadgen; do
  cargo deb --quiet ${deb_fast[@]+"${deb_fast[@]}"} -p "$crate" --no-build --profile "$profile" -o "$out/" 2> >(grep -v 'dev profile is not supported\|To enable debug symbols' >&2)
  cargo generate-rpm ${rpm_compress[@]+"${rpm_compress[@]}"} -p "$crate" --profile "$profile" -o "$out/"
done
ls "$out"/*.deb "$out"/*.rpm
