#!/bin/bash
# Run the CRI conformance suite (conformance/) against the private containerd,
# once per runtime handler (runc = the control, heteropod = ours). Both must pass.
# The private containerd is always torn down at the end (hack/down.sh).
# Env: HANDLERS="runc heteropod", TEST_THREADS=2, SUITE_TIMEOUT=900 (s per handler),
#      extra cargo test filter args after `--` on the command line.
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"

need_root
cd "$REPO" || die "cannot cd to $REPO"

CARGO="${CARGO:-cargo}"
HANDLERS="${HANDLERS:-runc heteropod}"
TEST_THREADS="${TEST_THREADS:-2}"
SUITE_TIMEOUT="${SUITE_TIMEOUT:-900}"
LOG_DIR="${CONFORMANCE_LOG_DIR:-$REPO/target/conformance}"
FILTER=("$@")

# shellcheck disable=SC2317 # called by the EXIT trap
teardown() {
    log "tearing down the private containerd"
    "$REPO/hack/down.sh" || warn "hack/down.sh failed"
}
trap teardown EXIT

mkdir -p "$LOG_DIR"
"$REPO/hack/up.sh" || die "hack/up.sh failed"

log "building the conformance suite"
"$CARGO" test --release -p heteropod-conformance --no-run ||
    die "the conformance suite does not build"

# Sums the "test result:" lines of a cargo test log: prints "passed failed".
count_results() {
    awk '/^test result:/ {
            for (i = 1; i <= NF; i++) {
                if ($(i) ~ /^passed;?$/) p += $(i - 1)
                if ($(i) ~ /^failed;?$/) f += $(i - 1)
            }
         }
         END { printf "%d %d\n", p, f }' "$1"
}

declare -a SUMMARY=() DETAIL=()
status=0
for handler in $HANDLERS; do
    logfile="$LOG_DIR/$handler.log"
    log "conformance suite, handler $handler (log: $logfile)"
    start=$(date +%s)
    # The DPU placement tests (tests/placement.rs) run for our handler only,
    # and only while the emulated DPU agent runs; otherwise they skip.
    dpu=""
    [[ $handler == heteropod ]] && dpu_running && dpu=1
    HETEROPOD_DPU="$dpu" DPU_CGROUP_PARENT="$DPU_CGROUP_PARENT" \
        HETEROPOD_HANDLER="$handler" CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" \
        timeout "$SUITE_TIMEOUT" "$CARGO" test --release --no-fail-fast -p heteropod-conformance -- \
        --test-threads="$TEST_THREADS" "${FILTER[@]}" 2>&1 | tee "$logfile"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - start))
    read -r passed failed < <(count_results "$logfile")
    # Pods a failed test could not remove would disturb the next handler's run.
    "$CARGO" run --release -q -p heteropod-conformance --bin heteropod-conformance-sweep ||
        warn "sweep failed"
    if ((rc != 0)); then
        status=1
        [[ $rc -eq 124 ]] && warn "handler $handler: suite timed out after ${SUITE_TIMEOUT}s"
        ((failed == 0)) && failed=1
        DETAIL+=("handler $handler: FAILED after ${secs}s (log $logfile)")
    else
        DETAIL+=("handler $handler: ok in ${secs}s")
    fi
    SUMMARY+=("$handler: $passed passed, $failed failed")
done

echo
echo "==> conformance summary"
for line in "${DETAIL[@]}"; do
    echo "$line"
done
# One closing line per handler, in the plain "N passed, N failed" form.
for line in "${SUMMARY[@]}"; do
    echo "$line"
done
exit "$status"
