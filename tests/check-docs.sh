#!/usr/bin/env bash
# The documentation against the code, so the two cannot drift apart unnoticed:
#
#  (a) every SCOPED_SECRETS_* name in a string literal of extension/src/**/*.rs is a row of the
#      README's configuration table, and every row of that table is a name the code reads;
#  (b) every stable error code the extension can answer or audit appears, in backticks, in
#      docs/api.md.
#
# Run by tests/run.sh right after cargo fmt; on its own: bash tests/check-docs.sh.
# Python 3's standard library only (the test suite needs python3 anyway).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import pathlib
import re
import sys

SRC = pathlib.Path("extension/src")
README = pathlib.Path("README.md")
API = pathlib.Path("docs/api.md")
# Where the stable codes live: one list in domain/code.rs.
CODE_FILE = SRC / "domain" / "code.rs"


def literals(text):
    """The string literals of Rust source (comments skipped), each as (offset, value)."""
    found, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif (m := re.compile(r'b?r(#*)"').match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.index('"' + m.group(1), m.end())
            found.append((i, text[m.end():end]))
            i = end + 1 + len(m.group(1))
        elif c == '"':
            j, value = i + 1, []
            while text[j] != '"':
                if text[j] == "\\":
                    value.append(text[j:j + 2])
                    j += 2
                else:
                    value.append(text[j])
                    j += 1
            found.append((i, "".join(value)))
            i = j + 1
        elif c == "'" and (m := re.compile(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'").match(text, i)):
            i = m.end()  # a char literal such as '"'
        else:
            i += 1
    return found


def without_tests(text):
    """The source before its #[cfg(test)] module: tests hold strings that are not codes."""
    cut = text.find("#[cfg(test)]")
    return text if cut < 0 else text[:cut]


failures = []

# (a) SCOPED_SECRETS_* variables: the code against the README's configuration table.
#     (Build-time ones against docs/release.md.)
# A name read at build time (`option_env!("…")`) configures the build, not the function: it
# belongs in docs/release.md, not in the table.
in_code, build_time = set(), set()
for path in sorted(SRC.rglob("*.rs")):
    text = path.read_text()
    build_time.update(re.findall(r'option_env!\(\s*"(SCOPED_SECRETS_[A-Z0-9_]+)"', text))
    for _, value in literals(text):
        in_code.update(re.findall(r"SCOPED_SECRETS_[A-Z0-9_]+", value))
in_code -= build_time
release_doc = pathlib.Path("docs/release.md").read_text() if pathlib.Path("docs/release.md").exists() else ""
for name in sorted(build_time):
    if f"`{name}`" not in release_doc:
        failures.append(f"{name} is read at build time but docs/release.md does not name it")
readme = README.read_text()
section = re.search(r"^## Configuration\n(.*?)(?=^## )", readme, re.S | re.M)
if not section:
    failures.append("README.md has no '## Configuration' section")
    in_table = set()
else:
    in_table = set(re.findall(r"^\| `(SCOPED_SECRETS_[A-Z0-9_]+)` \|", section.group(1), re.M))
for name in sorted(in_code - in_table):
    failures.append(f"{name} is read by extension/src but has no row in the README's configuration table")
for name in sorted(in_table - in_code):
    failures.append(f"{name} has a row in the README's configuration table but extension/src never reads it")

# (b) stable error codes: the code against docs/api.md.
CODE = r"[a-z][a-z0-9_]+"
# Every stable code is a string literal of the one list in domain/code.rs (`Variant => "x_code",`
# in the `codes!` macro's call): take every such literal of the file before its tests.
source = "extension/src/domain/code.rs"
codes = {value for _, value in literals(without_tests(CODE_FILE.read_text())) if re.fullmatch(CODE, value)}
if not codes:
    failures.append(f"no stable error code found in {source}: the check itself is out of date")
api = API.read_text() if API.exists() else ""
for code in sorted(codes):
    if f"`{code}`" not in api:
        failures.append(f"error code {code} (from {source}) is missing from docs/api.md")

if failures:
    print("tests/check-docs.sh: the docs disagree with the code:", file=sys.stderr)
    for failure in failures:
        print(f"  - {failure}", file=sys.stderr)
    sys.exit(1)
print(f"docs: {len(in_table)} configuration variables and {len(codes)} error codes (from {source}) documented")
PY
