#!/bin/bash
# Builds the edgevoice .deb and prints its path on the last line of stdout.
#
#   bash packaging/build-deb.sh
#
# Needs: cargo-deb (`cargo install cargo-deb --locked`), python3 (copyright, JSON), gzip,
# dpkg-dev (dpkg-shlibdeps, for the computed Depends). Run lintian on the result with
#   lintian "$(bash packaging/build-deb.sh | tail -n1)"   (packaging/LINTIAN.md: what it reports)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

die() { echo "build-deb: $*" >&2; exit 1; }

command -v cargo-deb >/dev/null 2>&1 || die "cargo-deb is missing: cargo install cargo-deb --locked"

# The package's copyright file must list the crates that are really linked: regenerate it (a
# crate under a license without a text in packaging/licenses/ stops the build here). When the
# dependencies changed, packaging/copyright shows up modified: commit it with them.
# (`packaging/gen-copyright.sh --check` only checks, for a lint step.)
if ! bash packaging/gen-copyright.sh --check >/dev/null 2>&1; then
    bash packaging/gen-copyright.sh >&2
    echo "build-deb: packaging/copyright was out of date and has been regenerated: commit it" >&2
fi

# The Debian changelog's newest entry must be this version, or the package lies about itself.
version=$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "edgevoice"))')
changelog_version=$(sed -n '1s/^edgevoice (\([^)]*\)).*/\1/p' packaging/changelog)
case "$changelog_version" in
    "$version"-*) ;;
    *) die "packaging/changelog's newest entry is $changelog_version but the crate is $version: add an entry for $version-1 at the top" ;;
esac

cargo build --release --locked -p edgevoice --bins >&2

target_dir=$(cargo metadata --format-version 1 --no-deps --locked \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

# Man pages from the same clap definitions as the binaries, compressed reproducibly (-n: no
# name or time stamp in the gzip header). They go to <target dir>/release/man, which Cargo.toml
# names as target/release/man: cargo-deb maps that prefix to the real target dir.
man_dir="$target_dir/release/man"
rm -rf "$man_dir"
"$target_dir/release/edgevoice" man "$man_dir" >&2
for page in "$man_dir/edgevoiced.8" "$man_dir/edgevoice.1"; do
    [ -s "$page" ] || die "edgevoice man did not write $page"
    gzip -9nf "$page"
done

# ONNX Runtime ships in the package (/usr/lib/edgevoice), from the model bundle it is also in:
# ../shared/models (the site bundle beside the checkout), the dev models dir, or $ORT_LIB.
# Its sha256 must be the manifest's, or the package would carry an unverified library.
ort_name=libonnxruntime.so.1.24.4
ort_src=""
for candidate in "${ORT_LIB:-}" "$root/../shared/models/onnxruntime/$ort_name" "$root/var/models/onnxruntime/$ort_name"; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then ort_src=$candidate; break; fi
done
[ -n "$ort_src" ] || die "the ONNX Runtime library ($ort_name) is not in ../shared/models/onnxruntime or var/models/onnxruntime: run \`make models\` or set ORT_LIB"
ort_want=$(python3 - "$root/models/manifest.toml" <<'PY'
import sys, tomllib
m = tomllib.load(open(sys.argv[1], "rb"))
print(next(e["sha256"] for e in m["model"] if e["file"].endswith("libonnxruntime.so.1.24.4")))
PY
)
ort_have=$(sha256sum "$ort_src" | cut -d' ' -f1)
[ "$ort_have" = "$ort_want" ] || die "$ort_src has sha256 $ort_have, the manifest says $ort_want"
mkdir -p "$target_dir/release/onnxruntime"
install -m 0644 "$ort_src" "$target_dir/release/onnxruntime/$ort_name"

# --no-build: the binaries were just built above with the same profile.
deb=$(cargo deb -p edgevoice --no-build --locked | grep '\.deb$' | tail -n1)
[ -f "$deb" ] || die "cargo deb did not report a package file (got: $deb)"
echo "$deb"
