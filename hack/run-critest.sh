#!/bin/bash
# `make critest`: upstream critest (kubernetes-sigs/cri-tools) against the private
# containerd with runtime handler heteropod, when critest is installed. The project's
# own suite (hack/run-conformance.sh) never depends on it.
# Skipped: image-pull specs (no registry here) and the two Idempotence specs that
# containerd 1.6 fails for any runtime (NotFound when stopping unknown IDs).
# Env: CRITEST_HANDLER (default heteropod), CRITEST_ARGS (extra arguments).
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

if ! command -v critest >/dev/null 2>&1; then
    echo "critest is not installed (not on PATH): skipping upstream CRI validation."
    echo "Our own CRI suite runs with \`make test-conformance\`."
    exit 0
fi
need_root

HANDLER="${CRITEST_HANDLER:-heteropod}"
LOG_DIR="${CRITEST_LOG_DIR:-$REPO/target/critest}"
SKIP='Image Manager|(StopPodSandbox|StopContainer) should not return an error if not found'
mkdir -p "$LOG_DIR"

started=0
if ! containerd_healthy; then
    "$REPO/hack/up.sh" || die "hack/up.sh failed"
    started=1
fi
# shellcheck disable=SC2317 # called by the EXIT trap
teardown() {
    if ((started)); then
        "$REPO/hack/down.sh" || warn "hack/down.sh failed"
    fi
}
trap teardown EXIT

# critest's default images are replaced by offline ones (CRITEST_IMAGES_FILE to
# bring your own, e.g. with a web-server stand-in).
images_file="${CRITEST_IMAGES_FILE:-$LOG_DIR/test-images.yaml}"
if [[ -z ${CRITEST_IMAGES_FILE:-} ]]; then
    cat >"$images_file" <<IMAGES
defaultTestContainerImage: $BUSYBOX_IMAGE
webServerTestImage: $BUSYBOX_IMAGE
IMAGES
fi

logfile="$LOG_DIR/critest-$HANDLER.log"
log "critest with runtime handler $HANDLER (log: $logfile)"
# shellcheck disable=SC2086 # CRITEST_ARGS is a list of words on purpose.
critest --runtime-endpoint "unix://$CONTAINERD_ADDRESS" \
    --image-endpoint "unix://$CONTAINERD_ADDRESS" \
    --runtime-handler "$HANDLER" \
    --test-images-file "$images_file" \
    --ginkgo.skip "$SKIP" \
    ${CRITEST_ARGS:-} 2>&1 | tee "$logfile"
rc=${PIPESTATUS[0]}

echo
echo "==> critest summary (handler $HANDLER)"
grep -E '^(Ran [0-9]+ of [0-9]+ Specs|SUCCESS!|FAIL!)' "$logfile" || echo "no ginkgo summary found in $logfile"
exit "$rc"
