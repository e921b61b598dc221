#!/usr/bin/env bash
# The whole test suite: lints, the docs check, unit tests, and the end-to-end tests (the real
# release extension and example function in the local Lambda environment against MiniStack).
# CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
source tests/prepare.sh

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> docs against the code (tests/check-docs.sh)"
tests/check-docs.sh
echo "==> cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
# Licenses, bans and sources of the dependency graph (deny.toml). Not advisories: their database
# is fetched from GitHub, which CI cannot reach (deny.toml, docs/release.md).
echo "==> cargo deny check licenses bans sources"
cargo deny --locked check licenses bans sources
echo "==> cargo test"
cargo test --locked --workspace -- --test-threads=2
echo "==> fuzzing (tests/fuzz.sh: ${SCOPED_SECRETS_FUZZ_SECONDS:-15} s per target)"
tests/fuzz.sh "${SCOPED_SECRETS_FUZZ_SECONDS:-15}"
