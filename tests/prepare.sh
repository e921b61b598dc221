# Sourced by tests/run.sh and tests/demo.sh: installs what the local stack needs (idempotent)
# and builds the release binaries the end-to-end tests and the demo run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINISTACK_VERSION="1.5.33"
VENV="$ROOT/target/ministack-venv"

if ! "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('ministack') == '$MINISTACK_VERSION'" 2>/dev/null; then
  echo "==> installing MiniStack $MINISTACK_VERSION into $VENV"
  mkdir -p "$ROOT/target"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "ministack==$MINISTACK_VERSION"
fi
export SCOPED_SECRETS_MINISTACK_BIN="$VENV/bin/ministack"

echo "==> building the release extension and example function"
cargo build --release --locked -p scoped-secrets -p example-rust-reader -p example-rust-sdk-reader
