# Sourced by layer/build.sh: installs the cross toolchain the layer build needs, idempotently,
# and puts it on PATH. Nothing is downloaded outside crates.io/PyPI/Debian/rustup.
#
# - Rust's musl targets for x86_64 and aarch64 (`rustup target add`): static binaries, no
#   glibc version to match on Amazon Linux.
# - cargo-zigbuild and zig, both from PyPI, into target/zig-venv: zig is the C cross compiler
#   for ring's C and assembly and the linker for both targets, with musl's headers built in,
#   so one x86_64 machine builds both architectures without a sysroot or a Docker image.
# - cargo-auditable from crates.io (`cargo install --locked`, into cargo's bin directory): it
#   embeds the binary's dependency tree as its SBOM (docs/release.md).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ZIGLANG_VERSION="0.17.0"
CARGO_ZIGBUILD_VERSION="0.24.0"
CARGO_AUDITABLE_VERSION="0.7.7"
ZIG_VENV="$ROOT/target/zig-venv"
LAYER_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

missing_targets=()
installed_targets="$(rustup target list --installed)"
for target in "${LAYER_TARGETS[@]}"; do
  grep -qx "$target" <<<"$installed_targets" || missing_targets+=("$target")
done
if ((${#missing_targets[@]})); then
  echo "==> rustup target add ${missing_targets[*]}"
  rustup target add "${missing_targets[@]}"
fi

if ! "$ZIG_VENV/bin/python" - "$ZIGLANG_VERSION" "$CARGO_ZIGBUILD_VERSION" 2>/dev/null <<'PY'; then
import importlib.metadata as m, sys
assert m.version("ziglang") == sys.argv[1] and m.version("cargo-zigbuild") == sys.argv[2]
PY
  echo "==> installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION into $ZIG_VENV"
  mkdir -p "$ROOT/target"
  if ! python3 -m venv "$ZIG_VENV" 2>/dev/null; then
    # Debian's python3 ships venv separately.
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$ZIG_VENV"
  fi
  "$ZIG_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
fi
# cargo-zigbuild finds zig as `python3 -m ziglang` with the venv's python first on PATH.
export PATH="$ZIG_VENV/bin:$PATH"

# `cargo auditable` prints cargo's own version, so the install list is what tells.
if ! cargo install --list | grep -qx "cargo-auditable v$CARGO_AUDITABLE_VERSION:"; then
  echo "==> cargo install --locked cargo-auditable $CARGO_AUDITABLE_VERSION"
  # Not into the workspace's target directory, when the caller set one.
  env -u CARGO_TARGET_DIR cargo install --locked cargo-auditable --version "$CARGO_AUDITABLE_VERSION"
fi
