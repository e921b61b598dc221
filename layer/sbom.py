#!/usr/bin/env python3
"""Prints the SBOM embedded in a scoped-secrets binary: the JSON dependency tree cargo-auditable
wrote into its `.dep-v0` ELF section (zlib-compressed), with nothing but Python's standard library.

    python3 layer/sbom.py scoped-secrets-arm64.zip             # the binary inside a layer zip
    python3 layer/sbom.py /opt/extensions/scoped-secrets       # a binary
    python3 layer/sbom.py --list scoped-secrets-x86_64.zip     # "name version source", one a line

Tools that read the same section: rust-audit-info, `cargo audit bin`, Trivy, Syft, Grype.
"""
import json
import struct
import sys
import zipfile
import zlib

ENTRY = "extensions/scoped-secrets"


def binary_bytes(path):
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return archive.read(ENTRY)
    with open(path, "rb") as f:
        return f.read()


def section(elf, wanted):
    """The bytes of the section named `wanted` in a 64-bit little-endian ELF file."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise SystemExit("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(index):
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", elf, shoff + index * shentsize)
        return name, offset, size

    _, names_offset, _ = header(shstrndx)
    for index in range(shnum):
        name, offset, size = header(index)
        end = elf.index(b"\0", names_offset + name)
        if elf[names_offset + name:end] == wanted:
            return elf[offset:offset + size]
    raise SystemExit(f"no {wanted.decode()} section: not built with cargo auditable")


def main(argv):
    listing = "--list" in argv
    paths = [a for a in argv if a != "--list"]
    if len(paths) != 1:
        raise SystemExit(__doc__)
    tree = json.loads(zlib.decompress(section(binary_bytes(paths[0]), b".dep-v0")))
    if listing:
        for package in tree["packages"]:
            print(package["name"], package["version"], package.get("source", ""))
    else:
        print(json.dumps(tree, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
