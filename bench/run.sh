#!/usr/bin/env bash
# The benchmark (issue 5): builds the release binaries, then prints one table with the median,
# p99 and spread over repeated runs of start → serving, cached GET latency and throughput at 1,
# 8 and 64 connections against a bare hyper server, per-invocation overhead, memory, SHUTDOWN →
# exit, and sizes. Not part of the test suite: it fails only if something does not work.
#
#   bench/run.sh [--runs N] [--starts N] [--invocations N] [--seconds S] [--only SECTIONS] [--connections 1,8,64]
#                [--pin LOAD_CPU,SERVER_CPU]
#
# Defaults: 5 load runs of 3 s per server and connection count, 20 fresh starts, 30 invocations
# of each kind. Needs what tests/prepare.sh installs (it is sourced), and wrk (Debian's, installed
# here when missing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

if ! command -v wrk >/dev/null; then
  echo "==> apt-get install wrk"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

# MiniStack, the layer (both architectures) and the example functions.
source tests/prepare.sh
# The physical limit, built like the extension: release profile, static musl, cargo-zigbuild.
echo "==> building the bare hyper server (x86_64 musl, release)"
source layer/toolchain.sh
cargo zigbuild --release --locked -p scoped-secrets --example bare_hyper --target x86_64-unknown-linux-musl
echo "==> building the bench driver"
cargo build --release --locked -p scoped-secrets-tests --bin bench

echo "==> machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(uname -r)"
"$TARGET_DIR/release/bench" --bare "$TARGET_DIR/x86_64-unknown-linux-musl/release/examples/bare_hyper" "$@"
