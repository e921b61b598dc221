#!/usr/bin/env bash
# Runs cargo-fuzz targets for SECONDS each (default 15) on their corpus (fuzz/corpus/TARGET,
# kept between runs, not committed) plus the committed seeds (fuzz/seeds/TARGET). A crash fails
# the run and leaves the input in fuzz/artifacts/TARGET/. With no TARGET named, every target
# runs (docs/testing.md, "Fuzzing", says what each asserts).
#
#   tests/fuzz.sh                      15 s per target (what tests/run.sh does: ~2.5 min)
#   tests/fuzz.sh 3600                 the long run, an hour per target
#   tests/fuzz.sh 60 telemetry sdk_request
#
# cargo-fuzz asks for nightly flags (-Zsanitizer=address); RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them. The instrumented build lives in $CARGO_TARGET_DIR/fuzz (its flags differ
# from the workspace's, so it must not share their directory).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-15}"
shift || true
all=(local_request lane_head config sigv4_header sdk_request ssm_body telemetry extensions_event runtime_route)
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}/fuzz"
mkdir -p "$CARGO_TARGET_DIR"
# One build of every target first, so each run's SECONDS are spent fuzzing.
echo "==> cargo fuzz build -O"
cargo fuzz build -O >"$CARGO_TARGET_DIR/build.log" 2>&1 || {
  tail -n 60 "$CARGO_TARGET_DIR/build.log" >&2
  exit 1
}
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "seeds/$target"
  echo "==> cargo fuzz run $target for ${seconds}s"
  log="$CARGO_TARGET_DIR/$target.log"
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
