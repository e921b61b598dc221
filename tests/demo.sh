#!/usr/bin/env bash
# The local demo: MiniStack + the local Lambda environment + the example function invoked a few
# times, printing the answers and the extension's audit log.
#
# It installs MiniStack only (tests/prepare-demo.sh) and builds, in one cargo run for this
# machine, the three programs it runs: the extension, the Rust example function and the demo
# driver, in the `demo` profile (Cargo.toml: unoptimised, no LTO, release's panic and checks),
# so their shared dependencies compile once. The test suite (./tests/run.sh) runs the layer's
# static, optimised build instead; to watch that one in the demo, build it
# (`layer/build.sh x86_64`) and set
# SCOPED_SECRETS_EXTENSION_BIN=target/x86_64-unknown-linux-musl/release/scoped-secrets.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prepare-demo.sh
echo "==> building the extension, the Rust example function and the demo (cargo profile demo)"
cargo build --locked --profile demo \
  -p scoped-secrets --bin scoped-secrets \
  -p example-rust-reader --bin rust-reader \
  -p scoped-secrets-tests --bin demo
TARGET_DIR="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"
export SCOPED_SECRETS_EXTENSION_BIN="${SCOPED_SECRETS_EXTENSION_BIN:-$TARGET_DIR/demo/scoped-secrets}"
export SCOPED_SECRETS_RUST_READER_BIN="${SCOPED_SECRETS_RUST_READER_BIN:-$TARGET_DIR/demo/rust-reader}"
echo "==> extension: $SCOPED_SECRETS_EXTENSION_BIN"
exec "$TARGET_DIR/demo/demo"
