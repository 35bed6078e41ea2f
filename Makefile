# edgevoice — the two commands a new machine needs are `make run` and `make test`; both install
# what is missing first (Debian packages via apt-get, cargo tools via cargo install).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
# The offline model bundle (site mirror) beside the checkout, when present.
SHARED ?= $(abspath ../shared)
MODELS_MIRROR ?= $(if $(wildcard $(SHARED)/models/README.md),$(SHARED)/models,)
DEV_CONFIG := config/dev.toml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: to build, and additionally to test (real peers, packaging checks).
# libsonic-dev: espeak-ng (compiled into the binary for Piper) links libsonic; libssl-dev: ort-sys's
# build script is compiled with its TLS client (piper-rs enables ort's default features; nothing is
# downloaded); espeak-ng-data: espeak-ng's phoneme data, read at run time (also by the tests).
APT_BUILD := build-essential pkg-config cmake clang libclang-dev libgomp1 libsonic-dev libssl-dev espeak-ng-data
APT_TEST := python3 lintian systemd dpkg-dev adduser passwd util-linux gzip baresip kamailio sip-tester tshark sox espeak-ng openssl mosquitto mosquitto-clients
# To build and run the reference engines `make bench` compares ours with (bench/reference/).
APT_BENCH := python3-venv curl ca-certificates
CARGO_TOOLS := cargo-deb

.PHONY: all deps ggml test-deps build run models test test-fast lint deb bench bench-ref clean

all: build

# Installs the Debian packages named in $(1) that are missing.
define apt_install
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call apt_install,$(APT_BUILD))
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install Rust (rustup) first"; exit 1; }

# The ONE ggml whisper.cpp and llama.cpp share: llama-cpp-sys-2's vendored ggml, static,
# GGML_NATIVE=OFF, in target/ggml-prefix (.cargo/config.toml points the builds at it). Skips
# when up to date; every cargo build below needs it first.
ggml: deps
	CARGO="$(CARGO)" bash packaging/build-ggml.sh

test-deps: deps
	$(call apt_install,$(APT_TEST))
	@for t in $(CARGO_TOOLS); do \
	  $(CARGO) $${t#cargo-} --version >/dev/null 2>&1 || $(CARGO) install --locked $$t; \
	done
	@rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

build: ggml
	$(CARGO) build --release --locked

# Install the models the manifest lists into the dev models dir: from the site bundle beside
# the checkout when there is one, else from the upstream URLs.
models: build
	@if [ -n "$(MODELS_MIRROR)" ]; then \
	  ./target/release/edgevoice --config $(DEV_CONFIG) models install --from "$(MODELS_MIRROR)"; \
	else \
	  ./target/release/edgevoice --config $(DEV_CONFIG) models install; \
	fi

# The daemon in the foreground with the development config: state in ./var, logs here.
run: build models
	@mkdir -p var
	exec ./target/release/edgevoiced --config $(DEV_CONFIG)

lint: test-deps ggml
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# Everything: lint, unit and end-to-end tests, and the .deb install/purge test.
test: test-deps lint deb
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  EDGEVOICE_DEB="$$(cat target/debian/LATEST)" $(CARGO) nextest run --locked --workspace --no-fail-fast; \
	else \
	  EDGEVOICE_DEB="$$(cat target/debian/LATEST)" $(CARGO) test --locked --workspace --no-fail-fast; \
	fi

# Unit tests only: seconds, no peers.
test-fast: ggml
	$(CARGO) test --locked --workspace --lib --bins

# The package, checked by lintian (no errors or warnings: packaging/LINTIAN.md).
deb: test-deps ggml
	@deb="$$(bash packaging/build-deb.sh | tail -n1)"; \
	lintian --fail-on error,warning "$$deb"; \
	echo "$$deb" > target/debian/LATEST; \
	echo "built $$deb"

# whisper.cpp's whisper-cli, llama.cpp's llama-bench and Piper itself, built once into
# target/bench-ref from pinned PyPI archives; a part that cannot be built is reported and its
# bench rows fall back to ../shared/REFERENCE-FIGURES.md.
bench-ref: deps
	$(call apt_install,$(APT_BENCH))
	bash bench/reference/build.sh

bench: test-deps ggml bench-ref
	$(CARGO) bench --locked --bench store
	$(CARGO) bench --locked --bench media
	$(CARGO) bench --locked --bench sip
	$(CARGO) bench --locked --bench media_calls
	$(CARGO) bench --locked --bench outbox
	$(CARGO) bench --locked --bench speech
	$(CARGO) bench --locked --bench turn_detect
	$(CARGO) bench --locked --bench agent_turns
	@if [ -f target/bench-ref/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ]; then \
	  BENCH_AGENT_LLM=$(abspath target/bench-ref/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf) \
	  BENCH_AGENT_MAX_CALLERS=2 BENCH_AGENT_OUT=agent_turns_larger_llm.md \
	  $(CARGO) bench --locked --bench agent_turns; \
	else echo "larger model not fetched (target/bench-ref/larger_llm.error): its agent bench is skipped"; fi
	$(CARGO) bench --locked --bench uplink
	$(CARGO) bench --locked --bench embed
	@echo "tables written under target/bench/"

clean:
	$(CARGO) clean
	rm -rf var
