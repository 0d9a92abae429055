#!/bin/bash
# Run the CRI conformance suite (conformance/) against the private containerd,
# once per runtime handler (runc = the control, heteropod = ours). Both must pass.
# The private containerd is always torn down at the end (hack/down.sh).
# Env: HANDLERS="runc heteropod", TEST_THREADS=2, SUITE_TIMEOUT=900 (s per handler),
#      QEMU_PASS=1 (0 skips the split-Pod pass with the DPU in a QEMU guest),
#      DEMO_PASS_REQUESTS=2000 (make demo's three runs, smaller; 0 skips them),
#      extra cargo test filter args after `--` on the command line.
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"
# shellcheck source=dpu-qemu.sh
source "$(dirname "$0")/dpu-qemu.sh"

need_root
cd "$REPO" || die "cannot cd to $REPO"

CARGO="${CARGO:-cargo}"
HANDLERS="${HANDLERS:-runc heteropod}"
TEST_THREADS="${TEST_THREADS:-2}"
SUITE_TIMEOUT="${SUITE_TIMEOUT:-900}"
QEMU_PASS="${QEMU_PASS:-1}"
DEMO_PASS_REQUESTS="${DEMO_PASS_REQUESTS:-2000}"
# The split-Pod tests the DPU=qemu pass runs (the DPU in a guest).
QEMU_PASS_TESTS=(--test split_pod --test split_network --test placement --test mesh)
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
# The mesh tests (tests/mesh.rs) run the demo's proxy image as their sidecar.
"$REPO/hack/demo-images.sh" || die "hack/demo-images.sh failed"

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
# Extra VAR=value settings for the next run_pass.
declare -a PASS_ENV=()
status=0

# run_pass NAME HANDLER DPU FAULTS CARGO_TEST_ARGS...: one cargo test run of
# the suite, logged to $LOG_DIR/NAME.log and summed up under NAME.
run_pass() {
    local name=$1 handler=$2 dpu=$3 faults=$4
    shift 4
    local logfile="$LOG_DIR/$name.log" start rc secs passed failed
    log "conformance: $name (handler $handler; log: $logfile)"
    start=$(date +%s)
    # The host's cores (tests/dpu_cores.rs); a pass in PASS_ENV may clear it.
    env HETEROPOD_HOST_CPUS="$(dpu_host_cpus)" "${PASS_ENV[@]}" \
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

# `make demo`'s three runs (all_cpu, split_relay, split_fastpath) with fewer
# requests: the demo's own checks must hold (every answer right, the proxy on
# the DPU, the fast-path run made fast connections). Its figures are not judged.
run_demo_pass() {
    local name=heteropod-demo logfile="$LOG_DIR/heteropod-demo.log" start rc secs
    log "conformance: $name (make demo's runs, $DEMO_PASS_REQUESTS requests each; log: $logfile)"
    start=$(date +%s)
    {
        "$REPO/hack/demo-images.sh" &&
            env CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" HETEROPOD_HANDLER=heteropod \
                HETEROPOD_STATE="$HETEROPOD_STATE" DPU_STATE_DIR="$DPU_STATE_DIR" \
                DPU_CGROUP_PARENT="$DPU_CGROUP_PARENT" HETEROPOD_HOST_CPUS="$(dpu_host_cpus)" \
                DEMO_REQUESTS="$DEMO_PASS_REQUESTS" DEMO_JSON="$LOG_DIR/demo.json" \
                timeout "$SUITE_TIMEOUT" "$CARGO" run --release -q -p heteropod-conformance \
                --bin heteropod-demo
    } 2>&1 | tee "$logfile"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - start))
    "$CARGO" run --release -q -p heteropod-conformance --bin heteropod-conformance-sweep ||
        warn "sweep failed"
    if ((rc != 0)); then
        status=1
        DETAIL+=("$name: FAILED after ${secs}s (log $logfile)")
        SUMMARY+=("$name: 0 passed, 1 failed")
    else
        DETAIL+=("$name: ok in ${secs}s ($LOG_DIR/demo.json)")
        SUMMARY+=("$name: 1 passed, 0 failed")
    fi
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
        ((DEMO_PASS_REQUESTS > 0)) && run_demo_pass
    fi
done

# The split-Pod tests again with the DPU in a QEMU guest (its own kernel,
# the relays joined through a slot of its ivshmem BAR): the tests check the
# DPU side through the agent (HETEROPOD_DPU_REMOTE). Skipped, saying why,
# where QEMU cannot run.
run_qemu_pass() {
    local why
    [[ " $HANDLERS " == *" heteropod "* ]] || return 0
    if [[ $QEMU_PASS != 1 ]]; then
        log "conformance: heteropod-qemu skipped (QEMU_PASS=$QEMU_PASS)"
        return 0
    fi
    if ! why="$("$QEMU_GUEST" check 2>&1)"; then
        warn "conformance: heteropod-qemu SKIPPED: QEMU cannot run here: $why"
        DETAIL+=("heteropod-qemu: skipped (QEMU cannot run here: $why)")
        return 0
    fi
    if ! (start_qemu_dpu); then
        status=1
        DETAIL+=("heteropod-qemu: FAILED: the DPU guest did not start (hack/qemu/guest.sh start)")
        SUMMARY+=("heteropod-qemu: 0 passed, 1 failed")
        return 0
    fi
    write_qemu_node_config
    PASS_ENV=(HETEROPOD_DPU_REMOTE=1 HETEROPOD_HOST_CPUS= "HETEROPOD_DPU_ENDPOINT=$QEMU_DPU_ENDPOINT"
        "HETEROPOD_DPU_KEY_FILE=$QEMU_AGENT_KEY"
        "HETEROPOD_IVSHMEM_SLOTS_DIR=$QEMU_STATE/ivshmem-slots"
        "HETEROPOD_CLI=$CARGO_RELEASE_DIR/heteropod")
    run_pass "heteropod-qemu" heteropod 1 "" "${QEMU_PASS_TESTS[@]}" \
        -- --test-threads="$TEST_THREADS" "${FILTER[@]}"
    # Faults with the DPU in the guest: QEMU killed (hack/dpu-agent.sh kills
    # and restarts the guest), the CPU relay killed.
    if ((${#FILTER[@]} == 0)); then
        run_pass "heteropod-qemu-faults" heteropod 1 1 --test faults -- --test-threads=1
    fi
    PASS_ENV=()
    stop_qemu_dpu
    [[ $DPU == qemu ]] || write_dpu_node_config
}

run_qemu_pass

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
