#!/usr/bin/env bash
# Builds the ONE ggml that whisper-rs and llama-cpp-2 both link (FACTS.md, "One ggml").
#
# whisper-rs and llama-cpp-2 each vendor ggml; linked into one binary they clash (1,439
# duplicate symbols). So llama-cpp-sys-2's own vendored ggml is built once here, as static
# libraries with GGML_NATIVE=OFF (portable .deb: AVX2, no build host's AVX-512), into
# target/ggml-prefix. .cargo/config.toml points both crates at it:
#   llama-cpp-2 feature `system-ggml-static`, WHISPER_USE_SYSTEM_GGML=ON,
#   CMAKE_PREFIX_PATH=target/ggml-prefix, rustflags -L native=target/ggml-prefix/lib.
#
# Idempotent: does nothing when the prefix was built from the same llama-cpp-sys-2 version
# (recorded in target/ggml-prefix/LLAMA_CPP_SYS_2_VERSION). Run from anywhere; the Makefile runs
# it before every cargo build. Needs cmake and a C/C++ compiler (Makefile APT_BUILD).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
CARGO="${CARGO:-cargo}"
# Must match .cargo/config.toml's CMAKE_PREFIX_PATH and -L native= path.
prefix="$root/target/ggml-prefix"
jobs="${GGML_BUILD_JOBS:-2}"

# The llama-cpp-sys-2 version Cargo.lock resolved (daemon/Cargo.toml pins it with `=`).
ver="$(awk '/^name = "llama-cpp-sys-2"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
if [ -z "$ver" ]; then
    echo "build-ggml.sh: llama-cpp-sys-2 is not in Cargo.lock; is it a dependency of daemon/Cargo.toml?" >&2
    exit 1
fi

stamp="$prefix/LLAMA_CPP_SYS_2_VERSION"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$ver" ] \
    && [ -f "$prefix/lib/libggml.a" ] && [ -f "$prefix/lib/libggml-base.a" ] \
    && [ -f "$prefix/lib/libggml-cpu.a" ]; then
    echo "ggml prefix up to date (llama-cpp-sys-2 $ver): $prefix"
    exit 0
fi

# The crate's sources (with the vendored llama.cpp/ggml) land in the registry on fetch.
"$CARGO" fetch --locked >/dev/null
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
src=""
for d in "$cargo_home"/registry/src/*/llama-cpp-sys-2-"$ver"; do
    if [ -f "$d/llama.cpp/ggml/CMakeLists.txt" ]; then src="$d/llama.cpp/ggml"; break; fi
done
if [ -z "$src" ]; then
    echo "build-ggml.sh: no llama-cpp-sys-2-$ver/llama.cpp/ggml under $cargo_home/registry/src after cargo fetch" >&2
    exit 1
fi

echo "building ggml from $src (llama-cpp-sys-2 $ver) into $prefix"
build="$root/target/ggml-build"
# The crate ships ggml without ggml.pc.in, which ggml's standalone CMake configures: build from
# a copy with that file added (the pkg-config file is not used by our build).
srccopy="$root/target/ggml-src"
rm -rf "$build" "$prefix" "$srccopy"
mkdir -p "$root/target"
cp -a "$src" "$srccopy"
if [ ! -f "$srccopy/ggml.pc.in" ]; then
    cat >"$srccopy/ggml.pc.in" <<'PC'
prefix=@CMAKE_INSTALL_PREFIX@
exec_prefix=${prefix}
includedir=${prefix}/include
libdir=${prefix}/lib

Name: ggml
Description: The GGML Tensor Library for Machine Learning
Version: @GGML_VERSION@
Cflags: -I${includedir}
Libs: -L${libdir} -lggml
PC
fi
cmake -S "$srccopy" -B "$build" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_INSTALL_PREFIX="$prefix" \
    -DCMAKE_INSTALL_LIBDIR=lib \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_STATIC=OFF \
    -DGGML_NATIVE=OFF \
    -DGGML_OPENMP=ON \
    -DGGML_BACKEND_DL=OFF \
    -DGGML_METAL=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF \
    -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF \
    >"$build.log" 2>&1 || { tail -n 40 "$build.log" >&2; exit 1; }
cmake --build "$build" --config Release -j "$jobs" >>"$build.log" 2>&1 \
    || { tail -n 40 "$build.log" >&2; exit 1; }
cmake --install "$build" --config Release >>"$build.log" 2>&1 \
    || { tail -n 40 "$build.log" >&2; exit 1; }
echo "$ver" >"$stamp"
rm -rf "$build" "$srccopy"
echo "ggml prefix built: $prefix"
