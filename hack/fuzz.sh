#!/bin/bash
# Fuzzes what a peer can feed a relay through shared memory, under
# AddressSanitizer, for a bounded time (issue 13, item 3): the region opener
# (region_open: sizes, seals, slot windows, header bytes, then ring indices),
# the ring reader (ring_frames) and the mux frame decoder (frame_decode).
#
# `cargo fuzz` needs nightly flags (-Zsanitizer=address); only the stable
# toolchain exists here, so RUSTC_BOOTSTRAP=1 lets stable accept them.
# Each target runs for HETEROPOD_FUZZ_SECONDS (60; 0 skips, saying so) from its seeds
# (netstack/fuzz/seeds/<target>, committed) plus the corpus earlier runs grew
# (netstack/fuzz/corpus/<target>, not committed). Any crash, leak, hang
# (a unit over 10 s) or ASan report fails the script; the input that did it is
# kept in netstack/fuzz/artifacts/<target>/ to replay with
# `<binary> <artifact>`.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$REPO/netstack/fuzz"
SECONDS_PER_TARGET="${HETEROPOD_FUZZ_SECONDS:-60}"
read -r -a TARGETS <<<"${HETEROPOD_FUZZ_TARGETS:-region_open ring_frames frame_decode}"
CARGO="${CARGO:-cargo}"
CARGO_FUZZ_VERSION=0.13.2
HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTC_BOOTSTRAP=1

if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]]; then
    echo "error: HETEROPOD_FUZZ_SECONDS must be a whole number of seconds" >&2
    exit 1
fi
# libFuzzer reads -max_total_time=0 as "no limit": 0 skips instead, and says so.
if ((SECONDS_PER_TARGET == 0)); then
    echo "==> fuzz: SKIPPED (HETEROPOD_FUZZ_SECONDS=0): no target ran"
    exit 0
fi

# cargo-fuzz from crates.io, once (it lands in ~/.cargo/bin).
if ! "$CARGO" fuzz --version >/dev/null 2>&1; then
    echo "==> cargo install --locked cargo-fuzz@$CARGO_FUZZ_VERSION"
    "$CARGO" install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

echo "==> cargo fuzz build -O -a --sanitizer address (all targets; cached in netstack/fuzz/target)"
# -O: optimised like the relays; -a: debug assertions on, so the ring's own
# range asserts check every copy as well.
(cd "$FUZZ_DIR/.." && "$CARGO" fuzz build -O -a --sanitizer address --target-dir "$FUZZ_DIR/target")

failed=()
for t in "${TARGETS[@]}"; do
    bin="$FUZZ_DIR/target/$HOST_TRIPLE/release/$t"
    corpus="$FUZZ_DIR/corpus/$t"
    seeds="$FUZZ_DIR/seeds/$t"
    artifacts="$FUZZ_DIR/artifacts/$t"
    log="$FUZZ_DIR/artifacts/$t.log"
    mkdir -p "$corpus" "$seeds" "$artifacts"
    rc=0
    # The first directory receives new inputs; the seeds are only read.
    "$bin" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=4096 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" \
        "$corpus" "$seeds" >"$log" 2>&1 || rc=$?
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    execs="$(stat number_of_executed_units)"
    rate="$(stat average_exec_per_sec)"
    units="$(find "$corpus" -type f | wc -l)"
    # A sanitizer report or a panic fails the target even if the exit code
    # were 0 (it is not, with libFuzzer's defaults; this only guards them).
    if ((rc == 0)) && ! grep -qE '^==[0-9]+== ?ERROR|panicked at|deadly signal' "$log"; then
        echo "==> fuzz $t: ok, ${execs:-?} execs in ${SECONDS_PER_TARGET} s (${rate:-?}/s), corpus $units"
    else
        echo "==> fuzz $t: FAILED (exit $rc) after ${execs:-?} execs; log $log, input in $artifacts/" >&2
        { grep -m1 -A2 'panicked at' "$log"
          grep -E '^==[0-9]+== ?ERROR|^SUMMARY|Test unit written' "$log"; } >&2 || tail -40 "$log" >&2
        failed+=("$t")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "==> fuzz: ${#failed[@]} of ${#TARGETS[@]} targets failed: ${failed[*]}" >&2
    exit 1
fi
echo "==> fuzz: all ${#TARGETS[@]} targets passed"
