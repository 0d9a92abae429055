# HeteroPod: the two commands are `make demo` and `make test` (see README.md).
# Every target installs what it needs first and is safe to repeat.

SHELL        := /bin/bash
CARGO        ?= cargo
export HETEROPOD_STATE ?= /run/heteropod
export HETEROPOD_ROOT  ?= /var/lib/heteropod
export CONTAINERD_ADDRESS ?= $(HETEROPOD_STATE)/containerd.sock
# Where `make up`/`make demo` put the DPU: emulated (an agent on this host) or qemu (a guest).
export DPU ?= emulated
HOST_TRIPLE  := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')

.PHONY: all deps build demo test test-unit test-conformance test-critest up down bench-shim bench-net lint critest clean

all: build

deps:
	@hack/install-deps.sh

build: deps
	@echo "==> cargo build --release"
	@$(CARGO) build --release --workspace --bins
	@echo "==> cargo build --release -p heterosocket (libheterosocket.so, the fast-path LD_PRELOAD library)"
	@$(CARGO) build --release -p heterosocket --lib
	@echo "==> cargo build --profile shim (small static shim for containerd)"
	@RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --profile shim \
		-p heteropod-shim --target $(HOST_TRIPLE)

up: build
	@hack/up.sh

down:
	@hack/down.sh

demo: build
	@hack/demo.sh

# Unit and namespace tests for every crate, then the CRI suite against the private
# containerd for both handlers, then upstream critest (runc, heteropod, heteropod
# force-offloaded; CRITEST=0 leaves it out and says so); the suites' containerd is
# always torn down.
CRITEST ?= 1
test: build
	@$(MAKE) --no-print-directory test-unit
	@$(MAKE) --no-print-directory test-conformance
	@$(MAKE) --no-print-directory test-critest

# The QEMU guest tests boot hack/qemu's cached kernel and busybox: build them
# first (cached; needs root). If that fails, those tests skip and say why.
test-unit:
	@echo "==> hack/qemu/guest.sh build (guest kernel for the QEMU tests, cached)"
	@hack/qemu/guest.sh build || echo "==> guest.sh build failed (see above): the QEMU guest tests use an earlier cached build, or skip and say why"
	@echo "==> cargo test (workspace, without the CRI suite)"
	@$(CARGO) test --release --workspace --exclude heteropod-conformance
	@$(MAKE) --no-print-directory fuzz
	@$(MAKE) --no-print-directory valgrind

# What a peer writes into shared memory, fuzzed under AddressSanitizer: the region
# opener, the ring reader and the frame decoder, 60 s each (HETEROPOD_FUZZ_SECONDS).
.PHONY: fuzz
fuzz: deps
	@echo "==> hack/fuzz.sh (cargo fuzz, ASan: region_open ring_frames frame_decode, $${HETEROPOD_FUZZ_SECONDS:-60} s each)"
	@hack/fuzz.sh

# The region and ring tests (a named subset of heteronet's) under valgrind's memcheck.
.PHONY: valgrind
valgrind: deps
	@echo "==> hack/valgrind.sh (memcheck on the region, window, ring and slot-link tests; ring_stress left out, too slow)"
	@hack/valgrind.sh

test-conformance:
	@hack/run-conformance.sh

test-critest:
	@if [ "$(CRITEST)" = 0 ]; then \
		echo "==> critest: SKIPPED (CRITEST=0): upstream critest did not run"; \
	else \
		hack/run-critest.sh; \
	fi

bench-shim: build
	@hack/bench-shim.sh

bench-net: build
	@hack/bench-net.sh

# Upstream critest (cri-tools' specs, built from conformance/critest/ with Go, cached):
# its three passes and the gate; fails when it cannot build or run.
critest: build
	@hack/run-critest.sh

lint:
	@$(CARGO) fmt --all -- --check
	@$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: down
	@$(CARGO) clean
