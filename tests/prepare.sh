# Sourced by tests/run.sh (and bench/run.sh): installs what the local stack and the packaging
# checks need (idempotent; each step is skipped when its pinned version is already there) and
# builds the release binaries the tests run. MiniStack and the shared helpers come from
# tests/prepare-demo.sh, which the demo sources on its own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/prepare-demo.sh"

# The SAM template's checkers (tests/tests/e2e/template.rs).
AWS_SAM_CLI_VERSION="1.170.0"
CFN_LINT_VERSION="1.58.0"
SAM_VENV="$ROOT/target/sam-venv"
# Runtime interface clients of the Python and Node.js examples, and the SDKs that Lambda's
# Python and Node.js runtimes bundle (boto3; the JavaScript v3 client, pinned in tests/node-sdk).
AWSLAMBDARIC_VERSION="4.2.2"
BOTO3_VERSION="1.44.8"
EXAMPLES_VENV="$ROOT/target/examples-venv"
NODE_RIC_DIR="$ROOT/target/node-ric"
NODE_SDK_DIR="$ROOT/target/node-sdk"

# The fuzz targets' runner (tests/fuzz.sh); RUSTC_BOOTSTRAP=1 lets it use the stable toolchain.
CARGO_FUZZ_VERSION="0.13.1"
# The supply-chain checks (deny.toml; tests/run.sh runs `cargo deny check licenses bans sources`).
CARGO_DENY_VERSION="0.20.2"

pinned_venv "$SAM_VENV" "aws-sam-cli==$AWS_SAM_CLI_VERSION" "cfn-lint==$CFN_LINT_VERSION"
pinned_venv "$EXAMPLES_VENV" "awslambdaric==$AWSLAMBDARIC_VERSION" "boto3==$BOTO3_VERSION"

# qemu-user runs the arm64 layer binary; Node.js runs the Node example.
missing=()
command -v qemu-aarch64 >/dev/null || missing+=(qemu-user)
command -v node >/dev/null || missing+=(nodejs npm)
# aws-lambda-ric compiles its native client (curl and aws-lambda-cpp) at install time.
if ! cmp -s "$ROOT/tests/node-ric/package-lock.json" "$NODE_RIC_DIR/installed.lock" ||
  [[ ! -f "$NODE_RIC_DIR/node_modules/aws-lambda-ric/dist/rapid-client.node" ]]; then
  install_node_ric=1
  for tool in cmake autoconf automake make g++; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  command -v libtoolize >/dev/null || missing+=(libtool)
fi
((${#missing[@]} == 0)) || { echo "==> apt-get install ${missing[*]}"; apt_install "${missing[@]}"; }

# The Node client builds in the background while cargo builds; waited for below.
node_ric_pid=""
if [[ -n "${install_node_ric:-}" ]]; then
  echo "==> installing aws-lambda-ric (npm, native build) into $NODE_RIC_DIR, in the background"
  rm -rf "$NODE_RIC_DIR"
  mkdir -p "$NODE_RIC_DIR"
  cp "$ROOT/tests/node-ric/package.json" "$ROOT/tests/node-ric/package-lock.json" "$NODE_RIC_DIR/"
  (cd "$NODE_RIC_DIR" && npm ci --no-audit --no-fund >install.log 2>&1 &&
    cp package-lock.json installed.lock) &
  node_ric_pid=$!
fi

# The JavaScript SDK is plain JavaScript: seconds to install.
if ! cmp -s "$ROOT/tests/node-sdk/package-lock.json" "$NODE_SDK_DIR/installed.lock"; then
  echo "==> installing @aws-sdk/client-secrets-manager (npm) into $NODE_SDK_DIR"
  rm -rf "$NODE_SDK_DIR"
  mkdir -p "$NODE_SDK_DIR"
  cp "$ROOT/tests/node-sdk/package.json" "$ROOT/tests/node-sdk/package-lock.json" "$NODE_SDK_DIR/"
  (cd "$NODE_SDK_DIR" && npm ci --no-audit --no-fund --silent && cp package-lock.json installed.lock)
fi

if [[ "$(cargo fuzz --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

if ! cargo install --list | grep -qx "cargo-deny v$CARGO_DENY_VERSION:"; then
  echo "==> installing cargo-deny $CARGO_DENY_VERSION"
  # Once per machine: about 10 CPU-minutes on two cores. It has no cargo features to turn off,
  # and its release profile (fat LTO) is not the cost: without LTO it took 97% of the CPU time
  # (docs/release.md, "What it costs").
  env -u CARGO_TARGET_DIR cargo install --locked cargo-deny --version "$CARGO_DENY_VERSION"
fi

# One commit name for the whole run: the layer built here, the version test's expectation and
# the layer `sam build` makes in the template test agree even if a tracked file changes while
# the suite runs (else the tree turns -dirty, and that test rebuilds the extension and times out).
source "$ROOT/layer/commit.sh"
echo "==> building the layer (x86_64 and arm64; the tests run the x86_64 extension from it)"
"$ROOT/layer/build.sh"
echo "==> building the release example functions"
cargo build --release --locked -p example-rust-reader -p example-rust-sdk-reader

if [[ -n "$node_ric_pid" ]]; then
  if ! wait "$node_ric_pid"; then
    cat "$NODE_RIC_DIR/install.log" >&2
    echo "installing aws-lambda-ric failed" >&2
    exit 1
  fi
  echo "==> aws-lambda-ric installed"
fi
