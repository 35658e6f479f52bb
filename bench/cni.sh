#!/usr/bin/env bash
# CNI ADD/DEL latency benchmark (issue 5).
#
#   bench/cni.sh [PODS] [PARALLEL]     (root; PODS defaults to 200, PARALLEL to 8)
#
# For felix-cni (with `felix node pod-api` on SQLite as its agent) and, in
# the same run, the reference bridge + host-local plugins from Debian's
# containernetworking-plugins: PODS pods added one after another then
# deleted, then PODS pods added and deleted PARALLEL at a time. Latency is
# one plugin process, spawn to exit, measured by cni-bench
# (tests/src/bin/cni-bench.rs) from inside the node's namespace (no
# `ip netns exec` per call). Each plugin gets a fresh node namespace.
# felix-cni is the shipped build (release, statically linked:
# scripts/build-cni.sh). The agent (`felix`) and the harness are
# built in CNI_BENCH_AGENT_PROFILE (default `debug`: a release build of the
# whole agent needs several GB of disk; `release` for the real figure; a
# debug agent only makes felix look slower).
# Prints a markdown table, then each mode's CPU time per call (plugin
# processes; for felix also the agent); with CNI_BENCH_TIMINGS=1 also
# felix-cni's own step timings (p50/p90/p99 per step, felix_cni::timings).
# Results in docs/benchmarks.md.
set -euo pipefail

PODS=${1:-200}
PARALLEL=${2:-8}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
AGENT_PROFILE=${CNI_BENCH_AGENT_PROFILE:-debug}
ABIN=$ROOT/target/$AGENT_PROFILE
WORK=$(mktemp -d /tmp/cni-bench.XXXXXX)
NODE=fxbench-node
AGENT_PID=

cleanup() {
    [ -z "$AGENT_PID" ] || kill "$AGENT_PID" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$NODE" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
[ -x /usr/lib/cni/bridge ] || { echo "apt-get install containernetworking-plugins" >&2; exit 1; }
BIN=$(bash "$ROOT/scripts/build-cni.sh")
if [ "$AGENT_PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --release --locked -q -p felix-rs -p felix-tests --bins)
else
    (cd "$ROOT" && cargo build --locked -q -p felix-rs -p felix-tests --bins)
fi

# A node: forwarding on, an uplink with a default route (felix's proxy
# ARP needs a route covering 169.254.1.1, as every real node has).
new_node() {
    ip netns del "$NODE" 2>/dev/null || true
    sleep 1
    ip netns add "$NODE"
    ip -n "$NODE" link set lo up
    ip -n "$NODE" link add up0 type veth peer name up1
    ip -n "$NODE" link set up0 up
    ip -n "$NODE" link set up1 up
    ip -n "$NODE" addr add 192.0.2.1/24 dev up0
    ip -n "$NODE" route add default via 192.0.2.254 dev up0
    ip netns exec "$NODE" sysctl -qw net.ipv4.ip_forward=1
}

bench() {
    "$ABIN/cni-bench" --node-netns "$NODE" --pods "$PODS" --parallel "$PARALLEL" \
        --details "$WORK/details.md" "$@"
}

cat >"$WORK/felix.json" <<EOF
{"cniVersion":"1.0.0","name":"bench-felix","type":"felix-cni","mtu":1500,"agent_socket":"$WORK/pod-api.sock"}
EOF
cat >"$WORK/bridge.json" <<EOF
{"cniVersion":"1.0.0","name":"bench-bridge","type":"bridge","bridge":"fxbr0","isGateway":true,"ipMasq":false,
 "ipam":{"type":"host-local","subnet":"10.211.0.0/16","dataDir":"$WORK/host-local"}}
EOF

echo "| plugin | mode | pods | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms |"
echo "| --- | --- | --- | --- | --- | --- | --- |"

new_node
"$ABIN/felix" node pod-api --socket "$WORK/pod-api.sock" --datastore "sqlite:$WORK/ipam.db" \
    --node bench-node --pool 10.210.0.0/16 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 100); do [ -S "$WORK/pod-api.sock" ] && break; sleep 0.05; done
[ -S "$WORK/pod-api.sock" ] || { cat "$WORK/agent.log" >&2; exit 1; }
TIMINGS=()
[ "${CNI_BENCH_TIMINGS:-0}" = 1 ] && TIMINGS=(--timings)
bench --plugin "$BIN/felix-cni" --conf "$WORK/felix.json" --label "felix-cni + agent ($AGENT_PROFILE, SQLite)" \
    --agent-pid "$AGENT_PID" "${TIMINGS[@]}"
kill "$AGENT_PID"; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=

new_node
bench --plugin /usr/lib/cni/bridge --conf "$WORK/bridge.json" --label "reference bridge + host-local"
cat "$WORK/details.md"
