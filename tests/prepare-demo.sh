# Sourced by tests/demo.sh and by tests/prepare.sh: what the demo needs from outside cargo,
# which is MiniStack only (idempotent: skipped when the pinned version is already there), and
# the helpers tests/prepare.sh uses for the rest. The demo builds its own binaries
# (tests/demo.sh); the test suite's installs and builds are in tests/prepare.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MINISTACK_VERSION="1.5.33"
VENV="$ROOT/target/ministack-venv"

mkdir -p "$ROOT/target"

apt_updated=""
apt_install() {
  [[ -n "$apt_updated" ]] || { apt-get update -qq; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Debian's python3 ships venv separately.
python3 -c "import ensurepip, venv" 2>/dev/null || apt_install python3-venv

# pinned_venv DIR PACKAGE==VERSION...: a venv holding exactly those versions.
pinned_venv() {
  local dir="$1"
  shift
  if ! "$dir/bin/python" - "$@" 2>/dev/null <<'PY'; then
import importlib.metadata as m, sys
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    assert m.version(name) == version, pin
PY
    echo "==> installing $* into $dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
  fi
}

pinned_venv "$VENV" "ministack==$MINISTACK_VERSION"
export SCOPED_SECRETS_MINISTACK_BIN="$VENV/bin/ministack"
