#!/usr/bin/env bash
# felix-rs main job: the one-command lab (docs/lab.md). Builds `felix` and
# `felix-cni`, runs `felix lab up` (3 nodes in network namespaces, full BGP
# mesh, one SQLite datastore, 2 pods per node created through felix-cni),
# prints each node's `felix status` and the ping matrix, then removes the
# lab with `felix lab down`. Set KEEP_LAB=1 to leave it up (remove it later
# with `./target/release/felix lab down`). Needs root and iproute2.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (rustup) first" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "the lab makes network namespaces: run as root" >&2
    exit 2
fi
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v ping >/dev/null || missing+=(iputils-ping)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# Both binaries: `felix lab up` runs the agents and calls felix-cni next to it.
cargo build --release --locked -p felix-rs -p felix-cni --bin felix --bin felix-cni
felix=./target/release/felix

# A lab left by an earlier run (or a crash) is removed first.
$felix lab down >/dev/null 2>&1 || true
status=0
$felix lab up "$@" || status=$?
for sock in /run/felix-lab/fxl/node-*.sock; do
    [[ -S $sock ]] || continue
    [[ $sock == *-pod-api.sock ]] && continue # the CNI plugin's socket
    printf '\n== felix status --control-socket %s\n' "$sock"
    $felix status --control-socket "$sock" || true
done
if [[ ${KEEP_LAB:-0} == 1 ]]; then
    echo "lab left up: $felix lab status; remove it with: $felix lab down"
else
    $felix lab down
fi
exit "$status"
