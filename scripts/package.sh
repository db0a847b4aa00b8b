#!/usr/bin/env bash
# Builds the packages EC2 hosts install: a .deb (Debian, Ubuntu) with
# cargo-deb and an .rpm (Amazon Linux, RHEL) with cargo-generate-rpm, each
# holding cafe-streamd, cafe-loadgen, the systemd unit, an example config,
# the dashboards and rules, the scenarios, the IAM policies and the README.
# The lists are in daemon/Cargo.toml ([package.metadata.deb] and
# [package.metadata.generate-rpm]).
#
# Usage: scripts/package.sh [PROFILE]     (default release)
#   The tools are installed, pinned, into .tools/ on first use. Packages go
#   to target/packages/. test.sh packages the dev build (same contents,
#   unoptimised binaries) to inspect them without a second full build.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
profile=${1:-release}
tools="$repo/.tools"
export PATH="$tools/bin:$PATH"

if ! command -v cargo-deb > /dev/null || ! command -v cargo-generate-rpm > /dev/null; then
  echo "package: installing cargo-deb 3.8.0 and cargo-generate-rpm 0.21.1 into .tools/" >&2
  cargo install --quiet --locked --root "$tools" cargo-deb@3.8.0 cargo-generate-rpm@0.21.1
fi

# rpm inspects the .rpm in the packaging test (Debian's package).
if ! command -v rpm > /dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends rpm > /dev/null 2>&1 \
    || echo "package: could not install rpm (the .rpm is built anyway)" >&2
fi

cargo build --locked --profile "$profile" -p daemon -p loadgen
out="$repo/target/packages"
rm -rf "$out" && mkdir -p "$out"
cargo deb --quiet -p daemon --no-build --profile "$profile" -o "$out/" 2> >(grep -v 'dev profile is not supported\|To enable debug symbols' >&2)
cargo generate-rpm -p daemon --profile "$profile" -o "$out/"
ls "$out"/*.deb "$out"/*.rpm
