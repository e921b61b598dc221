#!/usr/bin/env bash
# The local demo: MiniStack + the local Lambda environment + the example function invoked a few
# times, printing the answers and the extension's audit log.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prepare.sh
cargo run --locked --quiet --release -p scoped-secrets-tests --bin demo
