#!/usr/bin/env bash
# Runs each cargo-fuzz target for SECONDS (default 20) on its corpus (fuzz/corpus/TARGET, kept
# between runs, not committed) plus the committed seeds (fuzz/seeds/TARGET). A crash fails the
# run and leaves the input in fuzz/artifacts/TARGET/.
#
#   tests/fuzz.sh            20 s per target (what tests/run.sh does)
#   tests/fuzz.sh 3600       the longer run
#
# cargo-fuzz asks for nightly flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. The instrumented build lives in $CARGO_TARGET_DIR/fuzz (its flags differ
# from the workspace's, so it must not share their directory).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}/fuzz"
for target in local_request config; do
  mkdir -p "corpus/$target"
  echo "==> cargo fuzz run $target for ${seconds}s"
  log="$CARGO_TARGET_DIR/$target.log"
  mkdir -p "$CARGO_TARGET_DIR"
  status=0
  cargo fuzz run -O "$target" "corpus/$target" "seeds/$target" -- -max_total_time="$seconds" >"$log" 2>&1 ||
    status=$?
  grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|^Done ' "$log" || true
  if ((status != 0)); then
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed (status $status); the input is in fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
