#!/bin/bash
# Upstream critest (kubernetes-sigs/cri-tools' conformance specs, built from
# conformance/critest/ by hack/build-critest.sh) against the private containerd,
# one pass per runtime handler:
#   runc                     the control
#   heteropod                our shim, containers on the CPU
#   heteropod-force-offload  our shim with [placement] default = "dpu": every
#                            container but the sandbox on the (emulated) DPU
# Skipped in every pass: the specs conformance/critest/skips.txt names, with why.
# The gate: each heteropod pass passes every spec runc passes, except the specs
# conformance/critest/exceptions.txt names for that pass (printed, with why);
# runc itself must pass every spec it runs. Counts come from critest's JUnit
# reports ($CRITEST_LOG_DIR/<pass>.xml), logs beside them.
# Starts the private containerd when it is not running, and then stops it again.
# Env: CRITEST_PASSES (default "runc heteropod heteropod-force-offload"),
#      CRITEST_TIMEOUT=900 (s per pass), CRITEST_ARGS (extra critest arguments),
#      HETEROPOD_DPU=0 or DPU=qemu (the force-offload pass is SKIPPED, said so;
#      with the emulated DPU meant to run and not running, it FAILS).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
# shellcheck source=dpu.sh
source "$(dirname "$0")/dpu.sh"
# shellcheck source=build-critest.sh
source "$(dirname "$0")/build-critest.sh"

need_root

PASSES="${CRITEST_PASSES:-runc heteropod heteropod-force-offload}"
CRITEST_TIMEOUT="${CRITEST_TIMEOUT:-900}"
LOG_DIR="${CRITEST_LOG_DIR:-$CARGO_TARGET_ROOT/critest}"
SKIPS="$CRITEST_DIR/skips.txt"
EXCEPTIONS="$CRITEST_DIR/exceptions.txt"
GATE=(python3 "$CRITEST_DIR/gate.py")
CONTROL=runc

# The counting and the gate are code too: their tests first (a second).
if ! gate_tests="$(python3 "$CRITEST_DIR/test_gate.py" 2>&1)"; then
    printf '%s\n' "$gate_tests" >&2
    die "conformance/critest/test_gate.py failed"
fi
log "conformance/critest/test_gate.py: $(grep -E '^Ran [0-9]+ tests' <<<"$gate_tests"), $(tail -n 1 <<<"$gate_tests")"
"$REPO/hack/build-critest.sh" || die "building critest or its images failed"
mkdir -p "$LOG_DIR"
skip_regex="$("${GATE[@]}" skip-regex "$SKIPS")" || die "cannot read $SKIPS"

started=0
# The node config as the passes found it, put back after each pass that changes it.
node_config_saved=$LOG_DIR/node-config.toml.orig
rm -f "$node_config_saved"
# set_placement cpu|dpu: [placement] default for the next pass (the shim reads
# the node config when a Pod starts: no restart needed).
set_placement() {
    [[ -f $node_config_saved ]] || cp -p "$HETEROPOD_CONFIG" "$node_config_saved"
    DPU_PLACEMENT_DEFAULT=$1 write_dpu_node_config
    grep -q "^default = \"$1\"\$" "$HETEROPOD_CONFIG" ||
        die "the node config $HETEROPOD_CONFIG did not take [placement] default = \"$1\""
}
restore_node_config() {
    if [[ -f $node_config_saved ]]; then
        cp -p "$node_config_saved" "$HETEROPOD_CONFIG"
        rm -f "$node_config_saved"
    fi
}
# shellcheck disable=SC2317 # called by the EXIT trap
teardown() {
    restore_node_config
    if ((started)); then
        "$REPO/hack/down.sh" || warn "hack/down.sh failed"
    fi
}
trap teardown EXIT
if ! containerd_healthy; then
    started=1
    "$REPO/hack/up.sh" || die "hack/up.sh failed"
fi

# Import unless containerd already has this exact manifest under that name.
import_image() {
    local archive=$1 ref want have
    ref="$(tar -xOf "$archive" ./index.json |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["manifests"][0]["annotations"]["io.containerd.image.name"])')"
    want="$(<"$archive.digest")"
    have="$(hp_ctr images ls "name==$ref" 2>/dev/null | awk -v r="$ref" '$1 == r { print $3 }')"
    [[ $have == "$want" ]] && return 0
    log "importing $ref (critest stand-in)"
    hp_ctr images import --snapshotter "$CONTAINERD_SNAPSHOTTER" "$archive" >/dev/null
    have="$(hp_ctr images ls "name==$ref" | awk -v r="$ref" '$1 == r { print $3 }')"
    [[ $have == "$want" ]] || die "import of $archive did not produce $ref ($want), got '${have:-nothing}'"
}
for image in "${CRITEST_IMAGES[@]}"; do
    import_image "$IMAGE_CACHE/$image.tar"
done

# critest's two configurable images; the nginx ones it names itself.
images_file="$LOG_DIR/test-images.yaml"
cat >"$images_file" <<IMAGES
defaultTestContainerImage: $CRITEST_BUSYBOX_IMAGE
webServerTestImage: $CRITEST_NGINX_IMAGE
IMAGES

declare -a DETAIL=() REPORTS=()
status=0

# run_pass NAME HANDLER: one critest run, its JUnit report in $LOG_DIR/NAME.xml.
run_pass() {
    local name=$1 handler=$2 logfile=$LOG_DIR/$1.log report=$LOG_DIR/$1.xml start rc secs
    rm -f "$report"
    log "critest $name (handler $handler; log: $logfile)"
    start=$(date +%s)
    rc=0
    # shellcheck disable=SC2086 # CRITEST_ARGS is a list of words on purpose.
    timeout -k 60 "$CRITEST_TIMEOUT" "$CRITEST_BIN" \
        --runtime-endpoint "unix://$CONTAINERD_ADDRESS" \
        --image-endpoint "unix://$CONTAINERD_ADDRESS" \
        --runtime-handler "$handler" \
        --test-images-file "$images_file" \
        --ginkgo.skip "$skip_regex" \
        --ginkgo.no-color --ginkgo.v \
        --ginkgo.junit-report "$report" \
        ${CRITEST_ARGS:-} >"$logfile" 2>&1 || rc=$?
    secs=$(($(date +%s) - start))
    # Pods a failed spec left behind would disturb the next pass.
    if [[ -x $CARGO_RELEASE_DIR/heteropod-conformance-sweep ]]; then
        CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" "$CARGO_RELEASE_DIR/heteropod-conformance-sweep" ||
            warn "sweep failed"
    fi
    if [[ ! -s $report ]]; then
        status=1
        [[ $rc -eq 124 ]] && warn "critest $name: timed out after ${CRITEST_TIMEOUT}s"
        tail -n 20 "$logfile" >&2 || true
        DETAIL+=("critest $name: FAILED after ${secs}s: no JUnit report (exit $rc; log $logfile)")
        return 0
    fi
    REPORTS+=("$name=$report")
    if "${GATE[@]}" summary "$name" "$report" "$SKIPS" "$EXCEPTIONS" | tee "$LOG_DIR/$name.summary"; then
        # critest exits non-zero for what the summary must have counted.
        if ((rc != 0)); then
            status=1
            DETAIL+=("critest $name: FAILED: exit $rc though its report shows no failure (log $logfile)")
            return 0
        fi
        DETAIL+=("$(head -n 1 "$LOG_DIR/$name.summary") in ${secs}s")
    else
        # The control must pass all it runs; the heteropod passes are judged by the gate.
        [[ $name == "$CONTROL" ]] && status=1
        DETAIL+=("$(head -n 1 "$LOG_DIR/$name.summary") in ${secs}s (log $logfile)")
    fi
}

for pass in $PASSES; do
    case $pass in
        runc) run_pass runc runc ;;
        heteropod)
            # Containers where no annotation places them: on the CPU, whatever
            # an earlier `make up` (DPU_PLACEMENT_DEFAULT) left in the node config.
            [[ -z ${HETEROPOD_NODE_CONFIG:-} ]] && dpu_running && set_placement cpu
            if grep -q '^default = "dpu"$' "$HETEROPOD_CONFIG" 2>/dev/null; then
                warn "the node config $HETEROPOD_CONFIG places containers on the DPU: the heteropod pass is force-offloaded"
            fi
            run_pass heteropod heteropod
            restore_node_config
            ;;
        heteropod-force-offload)
            if [[ $HETEROPOD_DPU != 1 ]]; then
                warn "critest heteropod-force-offload SKIPPED: HETEROPOD_DPU=$HETEROPOD_DPU (no DPU)"
                DETAIL+=("critest heteropod-force-offload: SKIPPED (HETEROPOD_DPU=$HETEROPOD_DPU: no DPU)")
                continue
            fi
            if [[ ${DPU:-emulated} != emulated ]]; then
                warn "critest heteropod-force-offload SKIPPED: DPU=$DPU (this pass runs with the emulated DPU)"
                DETAIL+=("critest heteropod-force-offload: SKIPPED (DPU=$DPU: this pass runs with the emulated DPU only)")
                continue
            fi
            if [[ -n ${HETEROPOD_NODE_CONFIG:-} ]]; then
                warn "critest heteropod-force-offload SKIPPED: the node config is HETEROPOD_NODE_CONFIG's"
                DETAIL+=("critest heteropod-force-offload: SKIPPED (HETEROPOD_NODE_CONFIG=$HETEROPOD_NODE_CONFIG is not ours to change)")
                continue
            fi
            if ! dpu_running; then
                status=1
                DETAIL+=("critest heteropod-force-offload: FAILED: the DPU agent is not running (HETEROPOD_DPU=0 opts out)")
                continue
            fi
            set_placement dpu
            run_pass heteropod-force-offload heteropod
            restore_node_config
            ;;
        *) die "unknown critest pass '$pass' (CRITEST_PASSES: runc heteropod heteropod-force-offload)" ;;
    esac
done

echo
echo "==> critest (cri-tools $(awk '$1 == "sigs.k8s.io/cri-tools" { print $2 }' "$CRITEST_DIR/go.mod"), containerd $(containerd --version | awk '{ print $3 }'))"
for line in "${DETAIL[@]}"; do
    echo "$line"
done
control_report=""
declare -a gated=()
for entry in "${REPORTS[@]}"; do
    if [[ ${entry%%=*} == "$CONTROL" ]]; then
        control_report=$entry
    else
        gated+=("$entry")
    fi
done
if ((${#gated[@]} > 0)); then
    if [[ -z $control_report ]]; then
        status=1
        echo "gate: FAILED: no $CONTROL report to compare with (the control pass did not run or crashed)"
    elif ! "${GATE[@]}" gate "$SKIPS" "$EXCEPTIONS" "$control_report" "${gated[@]}"; then
        status=1
    fi
fi
# One closing line per pass, in the plain "N passed, N failed" form (the raw
# counts: a force-offload failure that exceptions.txt expects is still a failure).
for entry in "${REPORTS[@]}"; do
    "${GATE[@]}" plain "${entry%%=*}" "${entry#*=}"
done
if ((status == 0)); then
    echo "==> critest: ok (runc passed all it ran; the gate held)"
else
    echo "==> critest: FAILED (see above)"
fi
exit "$status"
