#!/bin/bash
# `make demo`: brings up the private containerd, runs one two-container Pod with
# runtime handler heteropod through CRI, shows what ran where and what crossed,
# then removes the Pod and tears everything down again.
set -uo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

need_root
cd "$REPO" || die "cannot cd to $REPO"

trap '"$REPO/hack/down.sh" >/dev/null || warn "hack/down.sh failed"' EXIT
"$REPO/hack/up.sh" || die "hack/up.sh failed"

log "running the demo Pod"
CONTAINERD_ADDRESS="$CONTAINERD_ADDRESS" HETEROPOD_HANDLER=heteropod \
    "${CARGO:-cargo}" run --release -q -p heteropod-conformance --bin heteropod-demo
