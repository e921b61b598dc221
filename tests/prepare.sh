# Sourced by tests/run.sh and tests/demo.sh: installs what the local stack and the packaging
# checks need (idempotent; each step is skipped when its pinned version is already there) and
# builds the release binaries the tests and the demo run.
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

# qemu-user runs the arm64 layer binary.
missing=()
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
((${#missing[@]} == 0)) || { echo "==> apt-get install ${missing[*]}"; apt_install "${missing[@]}"; }

echo "==> building the layer (x86_64 and arm64; the tests run the x86_64 extension from it)"
"$ROOT/layer/build.sh"
echo "==> building the release example function"
cargo build --release --locked -p example-rust-reader
