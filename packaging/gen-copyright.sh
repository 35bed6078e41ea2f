#!/bin/bash
# Regenerates packaging/copyright (Debian machine-readable format 1.0) from `cargo metadata`:
# edgevoice itself is GPL-3.0-or-later, followed by one stanza per Rust crate linked into the
# binaries (the normal-dependency closure of the edgevoice package on the build host's platform;
# dev- and build-dependencies are not in the binaries and are left out), with the license
# expression each crate declares, translated to Debian's short names.
#
#   packaging/gen-copyright.sh           rewrite packaging/copyright
#   packaging/gen-copyright.sh --check   exit 1 if packaging/copyright is out of date
#
# Needs cargo and python3. License texts come from packaging/licenses/<SPDX id>; a crate whose
# license has no text there (or no common-licenses file) stops the script: check that the new
# license is GPL-3.0 compatible, then add its text.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
out="$here/copyright"

check=0
case "${1:-}" in
    --check) check=1 ;;
    "") ;;
    *) echo "usage: $0 [--check]" >&2; exit 64 ;;
esac

host=$(rustc -vV | sed -n 's/^host: //p')
meta=$(mktemp)
new=$(mktemp)
trap 'rm -f "$meta" "$new"' EXIT

(cd "$root" && cargo metadata --format-version 1 --locked --filter-platform "$host") >"$meta"

python3 - "$meta" "$here/licenses" >"$new" <<'PY'
import json, os, re, sys

meta_path, licenses_dir = sys.argv[1], sys.argv[2]
meta = json.load(open(meta_path))

ROOT_PACKAGE = "edgevoice"
UPSTREAM_CONTACT = "edgevoice developers <edgevoice@example.invalid>"
SOURCE = "https://example.invalid/edgevoice"
FIRST_YEAR = "2026"

packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root_ids = [p["id"] for p in meta["packages"] if p["name"] == ROOT_PACKAGE and p["source"] is None]
if len(root_ids) != 1:
    sys.exit(f"gen-copyright: expected one workspace package named {ROOT_PACKAGE}")
root_id = root_ids[0]

# The normal-dependency closure: what is compiled into the binaries (proc-macro crates
# included, which is harmless); build scripts' and tests' own dependencies are not.
linked, stack = set(), [root_id]
while stack:
    pid = stack.pop()
    if pid in linked:
        continue
    linked.add(pid)
    for dep in nodes[pid]["deps"]:
        if any(k["kind"] is None for k in dep["dep_kinds"]):
            stack.append(dep["pkg"])
linked.discard(root_id)

# SPDX identifier -> Debian copyright-format short name.
DEB_NAME = {
    "MIT": "Expat",
    "BSD-2-Clause": "BSD-2-clause",
    "BSD-3-Clause": "BSD-3-clause",
    "GPL-2.0-only": "GPL-2", "GPL-2.0-or-later": "GPL-2+",
    "GPL-3.0-only": "GPL-3", "GPL-3.0-or-later": "GPL-3+",
    "LGPL-2.1-only": "LGPL-2.1", "LGPL-2.1-or-later": "LGPL-2.1+",
    "LGPL-3.0-only": "LGPL-3", "LGPL-3.0-or-later": "LGPL-3+",
}
# Licenses whose full text Debian ships in /usr/share/common-licenses.
COMMON = {
    "Apache-2.0": "Apache-2.0", "MPL-2.0": "MPL-2.0", "CC0-1.0": "CC0-1.0",
    "GPL-2.0-only": "GPL-2", "GPL-2.0-or-later": "GPL-2",
    "GPL-3.0-only": "GPL-3", "GPL-3.0-or-later": "GPL-3",
    "LGPL-2.1-only": "LGPL-2.1", "LGPL-2.1-or-later": "LGPL-2.1",
    "LGPL-3.0-only": "LGPL-3", "LGPL-3.0-or-later": "LGPL-3",
}
EXCEPTION_NAME = {"LLVM-exception": "LLVM"}


def tokenize(expr):
    expr = expr.replace("/", " OR ")  # old crates write "MIT/Apache-2.0"
    return re.findall(r"\(|\)|[A-Za-z0-9.+-]+", expr)


def parse(expr):
    """SPDX expression -> tree: ('id', x) | ('with', id, exc) | ('and'|'or', [children])."""
    toks, pos = tokenize(expr), 0

    def peek():
        return toks[pos] if pos < len(toks) else None

    def take():
        nonlocal pos
        pos += 1
        return toks[pos - 1]

    def primary():
        if peek() == "(":
            take()
            node = disjunction()
            if take() != ")":
                raise ValueError(expr)
            return node
        ident = take()
        if peek() == "WITH":
            take()
            return ("with", ident, take())
        return ("id", ident)

    def binary(op, sub):
        items = [sub()]
        while peek() == op.upper():
            take()
            items.append(sub())
        return items[0] if len(items) == 1 else (op, items)

    def conjunction():
        return binary("and", primary)

    def disjunction():
        return binary("or", conjunction)

    node = disjunction()
    if peek() is not None:
        raise ValueError(expr)
    return node


def leaf_name(node):
    if node[0] == "id":
        return DEB_NAME.get(node[1], node[1])
    base = DEB_NAME.get(node[1], node[1])
    return f"{base} with {EXCEPTION_NAME.get(node[2], node[2])} exception"


def render(node, expr):
    """Debian syntax: 'and' binds tighter than 'or'; 'A or B, and C' groups the 'or' first."""
    if node[0] in ("id", "with"):
        return leaf_name(node)
    op, children = node
    if op == "or":
        parts = []
        for c in children:
            if c[0] == "and" and any(g[0] == "or" for g in c[1]):
                raise ValueError(f"cannot express {expr!r} in Debian syntax")
            parts.append(render(c, expr))
        return " or ".join(parts)
    ors = [c for c in children if c[0] == "or"]
    rest = [render(c, expr) for c in children if c[0] != "or"]
    if len(ors) > 1:
        raise ValueError(f"cannot express {expr!r} in Debian syntax")
    if ors:
        return f"{render(ors[0], expr)}, and " + " and ".join(rest)
    return " and ".join(rest)


def leaves(node):
    if node[0] in ("id", "with"):
        yield node
    else:
        for c in node[1]:
            yield from leaves(c)


def as_field_text(text):
    out = []
    for line in text.rstrip("\n").split("\n"):
        line = line.rstrip()
        out.append(" ." if not line else " " + line)
    return "\n".join(out)


def license_text(spdx):
    if spdx in COMMON:
        return (f"On Debian systems, the complete text of this license can be found in\n"
                f"/usr/share/common-licenses/{COMMON[spdx]}.")
    path = os.path.join(licenses_dir, spdx)
    if not os.path.exists(path):
        sys.exit(f"gen-copyright: no text for license {spdx}: check it is compatible with "
                 f"GPL-3.0-or-later, then add its text as packaging/licenses/{spdx}")
    return open(path, encoding="utf-8").read()


used = {}  # Debian short name -> leaf node
crates = []
for pid in linked:
    p = packages[pid]
    expr = p.get("license")
    if not expr:
        sys.exit(f"gen-copyright: crate {p['name']} {p['version']} declares no SPDX license "
                 f"(license-file {p.get('license_file')}); add it to this script by hand")
    tree = parse(expr)
    for leaf in leaves(tree):
        used[leaf_name(leaf)] = leaf
    authors = ", ".join(a.strip() for a in p.get("authors") or [] if a.strip())
    crates.append((p["name"], p["version"], authors or f"the {p['name']} developers",
                   render(tree, expr), expr))
crates.sort(key=lambda c: (c[0], [int(x) if x.isdigit() else x for x in re.split(r"[.+-]", c[1])]))

print("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
print("Upstream-Name: edgevoice")
print(f"Upstream-Contact: {UPSTREAM_CONTACT}")
print(f"Source: {SOURCE}")
print(as_field_text(
    "Comment: Generated by packaging/gen-copyright.sh from `cargo metadata`; do not edit.\n"
    "\n"
    "The edgevoiced and edgevoice binaries link statically the Rust crates listed below, one\n"
    "stanza each. Files: names a crate as `cargo vendor --versioned-dirs` lays it out; the\n"
    "Copyright: field gives the authors the crate declares (its own license files carry the\n"
    "exact notices); Comment: keeps the license expression the crate declares (SPDX), which\n"
    "License: spells in this format's syntax.\n"
    "\n"
    "espeak-ng (GPL-3.0-or-later) is linked statically for speech synthesis: its C sources\n"
    "come with the espeak-rs-sys crate (through piper-rs), whose own license field covers only\n"
    "the crate's Rust code. It and every other dependency must stay compatible with\n"
    "GPL-3.0-or-later, which is why edgevoice as a whole is distributed under it."
).replace(" Comment:", "Comment:", 1))
print()
print("Files: *")
print(f"Copyright: {FIRST_YEAR} edgevoice developers")
print("License: GPL-3+")
print()
for name, version, authors, lic, expr in crates:
    print(f"Files: vendor/{name}-{version}/*")
    print(f"Copyright: {authors}")
    print(f"License: {lic}")
    print(f"Comment: {name} {version} from crates.io, declared license: {expr}")
    print()
# Not a crate: the ONNX Runtime library the package installs for Piper (the MIT text is
# printed with the crates' licenses below; many of them are MIT too).
print("Files: usr/lib/edgevoice/libonnxruntime.so.*")
print("Copyright: Microsoft Corporation")
print("License: Expat")
print("Comment: ONNX Runtime 1.24.4, the shared library of the PyPI onnxruntime wheel, loaded by")
print(" edgevoiced at run time for speech synthesis; declared license: MIT")
print()

gpl_header = (
    "This program is free software: you can redistribute it and/or modify it under the terms\n"
    "of the GNU General Public License as published by the Free Software Foundation, either\n"
    "version 3 of the License, or (at your option) any later version.\n"
    "\n"
    "This program is distributed in the hope that it will be useful, but WITHOUT ANY\n"
    "WARRANTY; without even the implied warranty of MERCHANTABILITY or FITNESS FOR A\n"
    "PARTICULAR PURPOSE. See the GNU General Public License for more details.\n"
    "\n"
    "On Debian systems, the complete text of the GNU General Public License version 3 can be\n"
    "found in /usr/share/common-licenses/GPL-3."
)
paragraphs = {"GPL-3+": gpl_header}
for short, leaf in used.items():
    if short == "GPL-3+":
        continue
    if leaf[0] == "with":
        paragraphs[short] = license_text(leaf[1]).rstrip("\n") + "\n\n" + license_text(leaf[2])
    else:
        paragraphs[short] = license_text(leaf[1])
for i, short in enumerate(sorted(paragraphs, key=lambda s: (s != "GPL-3+", s.lower()))):
    if i:
        print()
    print(f"License: {short}")
    print(as_field_text(paragraphs[short]))
PY

if [ "$check" = 1 ]; then
    if ! cmp -s "$new" "$out"; then
        diff -u "$out" "$new" | head -40 >&2 || true
        echo "packaging/copyright is out of date (dependencies changed): run packaging/gen-copyright.sh and commit the result" >&2
        exit 1
    fi
    echo "packaging/copyright is up to date"
else
    cp "$new" "$out"
    chmod 0644 "$out"
    echo "wrote $out ($(grep -c '^Files: vendor/' "$out") crates)"
fi
