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

# run_pass NAME HANDLER DPU FAULTS CARGO_TEST_ARGS...: one cargo test run of
# the suite, logged to $LOG_DIR/NAME.log and summed up under NAME.
run_pass() {
    local name=$1 handler=$2 dpu=$3 faults=$4
    shift 4
    local logfile="$LOG_DIR/$name.log" start rc secs passed failed
    log "conformance: $name (handler $handler; log: $logfile)"
    start=$(date +%s)
    HETEROPOD_DPU="$dpu" HETEROPOD_FAULTS="$faults" DPU_CGROUP_PARENT="$DPU_CGROUP_PARENT" \
        HETEROPOD_FORCE_OFFLOAD="${HETEROPOD_FORCE_OFFLOAD:-}" \
        HETEROPOD_HANDLER="$handler" CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" \
        timeout "$SUITE_TIMEOUT" "$CARGO" test --release --no-fail-fast -p heteropod-conformance \
        "$@" 2>&1 | tee "$logfile"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - start))
    read -r passed failed < <(count_results "$logfile")
    # Pods a failed test could not remove would disturb the next run.
    "$CARGO" run --release -q -p heteropod-conformance --bin heteropod-conformance-sweep ||
        warn "sweep failed"
    if ((rc != 0)); then
        status=1
        [[ $rc -eq 124 ]] && warn "$name: timed out after ${SUITE_TIMEOUT}s"
        ((failed == 0)) && failed=1
        DETAIL+=("$name: FAILED after ${secs}s (log $logfile)")
    else
        DETAIL+=("$name: ok in ${secs}s")
    fi
    SUMMARY+=("$name: $passed passed, $failed failed")
}

for handler in $HANDLERS; do
    # The DPU placement tests (tests/placement.rs) run for our handler only,
    # and only while the emulated DPU agent runs; otherwise they skip.
    dpu=""
    [[ $handler == heteropod ]] && dpu_running && dpu=1
    run_pass "$handler" "$handler" "$dpu" "" -- --test-threads="$TEST_THREADS" "${FILTER[@]}"
    # Force-offload: the whole suite again with every container but the
    # sandbox on the DPU; specs that need a PID namespace across the PUs must
    # fail with the documented error (HETEROPOD_FORCE_OFFLOAD tells them).
    if [[ -n $dpu ]]; then
        DPU_PLACEMENT_DEFAULT=dpu write_dpu_node_config
        HETEROPOD_FORCE_OFFLOAD=1 run_pass "$handler-force-offload" "$handler" "$dpu" "" \
            -- --test-threads="$TEST_THREADS" "${FILTER[@]}"
        write_dpu_node_config
    fi
    # Faults (killing the agent or a relay) disturb every other DPU test:
    # they run alone, after the suite, one at a time.
    if [[ -n $dpu && ${#FILTER[@]} -eq 0 ]]; then
        run_pass "$handler-faults" "$handler" 1 1 --test faults -- --test-threads=1
    fi
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
