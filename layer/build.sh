#!/usr/bin/env bash
# Builds the scoped-secrets layer for Lambda's two architectures: one static (musl) binary at
# extensions/scoped-secrets in the zip, executable, and the runtime wrapper at the zip's root
# (scoped-secrets-wrapper, so /opt/scoped-secrets-wrapper), nothing else.
#
#   layer/build.sh                          x86_64 and arm64 -> TARGET/layer/scoped-secrets-ARCH.zip
#   layer/build.sh arm64                    one architecture (x86_64 or arm64)
#   layer/build.sh --artifacts-dir DIR ARCH the binary to DIR/extensions/scoped-secrets and the
#                                           wrapper to DIR/scoped-secrets-wrapper, no zip
#                                           (what `sam build` asks of layer/Makefile)
#
# Beside the zips: SHA256SUMS (`sha256sum -c SHA256SUMS` checks them). Each binary carries its
# SBOM: cargo-auditable embeds the dependency tree it was built from (crates, versions, sources)
# in a `.dep-v0` section (docs/release.md says how to read it).
#
# TARGET is $CARGO_TARGET_DIR, else target/. The toolchain (rustup musl targets, zig and
# cargo-zigbuild from PyPI, cargo-auditable from crates.io) is installed by layer/toolchain.sh
# on first use.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

artifacts_dir=""
arches=()
while (($#)); do
  case "$1" in
    --artifacts-dir) artifacts_dir="$2"; shift 2 ;;
    x86_64 | arm64) arches+=("$1"); shift ;;
    *) echo "usage: $0 [--artifacts-dir DIR] [x86_64] [arm64]" >&2; exit 2 ;;
  esac
done
((${#arches[@]})) || arches=(x86_64 arm64)
if [[ -n "$artifacts_dir" && ${#arches[@]} -ne 1 ]]; then
  echo "--artifacts-dir takes exactly one architecture" >&2
  exit 2
fi

triple() {
  case "$1" in
    x86_64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
  esac
}

source "$ROOT/layer/toolchain.sh"

# The commit the binary names (layer/commit.sh). Set here rather than by a build.rs, which would
# run git on every build of every crate depending on the extension; rustc tracks the variable,
# so a new commit rebuilds the binary. Set SCOPED_SECRETS_GIT_COMMIT to override; set it empty
# to build without one (and skip the rebuild each commit costs while iterating).
source "$ROOT/layer/commit.sh"

target_args=()
for arch in "${arches[@]}"; do target_args+=(--target "$(triple "$arch")"); done
echo "==> cargo auditable zigbuild --release -p scoped-secrets ${target_args[*]} (commit ${SCOPED_SECRETS_GIT_COMMIT:-none})"
(cd "$ROOT" && cargo auditable zigbuild --release --locked -p scoped-secrets "${target_args[@]}")

if [[ -n "$artifacts_dir" ]]; then
  install -D -m 0755 "$TARGET_DIR/$(triple "${arches[0]}")/release/scoped-secrets" \
    "$artifacts_dir/extensions/scoped-secrets"
  install -D -m 0755 "$ROOT/layer/scoped-secrets-wrapper" "$artifacts_dir/scoped-secrets-wrapper"
  exit 0
fi

mkdir -p "$TARGET_DIR/layer"
for arch in "${arches[@]}"; do
  binary="$TARGET_DIR/$(triple "$arch")/release/scoped-secrets"
  zip="$TARGET_DIR/layer/scoped-secrets-$arch.zip"
  # A reproducible zip: fixed timestamps, Unix mode 0755 (Lambda keeps the run bit from the
  # entries' Unix attributes), deflated.
  python3 - "$binary" "$ROOT/layer/scoped-secrets-wrapper" "$zip" <<'PY'
import os, sys, zipfile
binary, wrapper, path = sys.argv[1], sys.argv[2], sys.argv[3]
tmp = path + ".tmp"
with zipfile.ZipFile(tmp, "w") as z:
    for name, source in (("extensions/scoped-secrets", binary), ("scoped-secrets-wrapper", wrapper)):
        entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        entry.create_system = 3  # Unix, so external_attr carries the mode
        entry.external_attr = 0o100755 << 16
        entry.compress_type = zipfile.ZIP_DEFLATED
        with open(source, "rb") as f:
            z.writestr(entry, f.read(), compresslevel=9)
os.replace(tmp, path)
PY
  printf '==> %s: %s bytes (binary %s bytes)\n' "$zip" "$(stat -c %s "$zip")" "$(stat -c %s "$binary")"
done
# Every zip in the directory (an architecture built earlier keeps its line), in sha256sum's own
# format, names sorted bytewise.
(
  cd "$TARGET_DIR/layer"
  LC_ALL=C sha256sum scoped-secrets-*.zip >SHA256SUMS.tmp
  mv SHA256SUMS.tmp SHA256SUMS
)
echo "==> $TARGET_DIR/layer/SHA256SUMS"
cat "$TARGET_DIR/layer/SHA256SUMS"
