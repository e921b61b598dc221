# Sourced by layer/build.sh and tests/prepare.sh: exports SCOPED_SECRETS_GIT_COMMIT, the commit
# the binary names in its logs, metrics and user agent (extension/src/version.rs reads it with
# option_env!), unless the caller set it (empty: build without one).
# `-dirty`: tracked files differ from that commit. Outside a git checkout (a source archive) the
# binary names none.
if [[ -z "${SCOPED_SECRETS_GIT_COMMIT+set}" ]] && commit="$(git -C "$ROOT" rev-parse --short=12 HEAD 2>/dev/null)"; then
  git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || commit+="-dirty"
  export SCOPED_SECRETS_GIT_COMMIT="$commit"
fi
