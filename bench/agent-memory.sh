#!/usr/bin/env bash
# Node agent memory (issue 6): `felix node run` at idle and with N learned
# routes, against BIRD 2 (what Calico runs for BGP) holding the same routes
# and exporting them to the same kernel.
#
#   bench/agent-memory.sh [N]       (root; N defaults to 100000)
#
# Topology: namespace agm-node (10.98.1.1/24, the agent or BIRD) with a veth
# to agm-inj (10.98.1.2), where bgp-inject (tests/src/bin/bgp-inject.rs)
# announces N distinct IPv4 prefixes (the codec bench's length mix, median
# 3 prefixes per UPDATE) over iBGP, next hop 10.98.1.2. The agent peers
# with it through a `[[bgp_peers]]` entry of its config file (SQLite
# datastore, no pool, no pods), and programs every learned route into the
# namespace's kernel (protocol 102); BIRD imports them and exports them to
# the kernel (protocol bird).
# Measured per implementation:
#   idle RSS     VmRSS after 2 s up, its neighbour configured, no session yet
#   RSS / peak   VmRSS and VmHWM once the kernel holds the N routes
#   B/route      (VmRSS with routes - idle VmRSS) / N
#   to kernel    from bgp-inject's first UPDATE byte to the kernel holding
#                N routes of the daemon (polled every 0.2 s: +-0.2 s)
# Prints a markdown table; also `uptime` before and after (the machine is
# shared). Results: docs/benchmarks.md.
set -euo pipefail

N=${1:-100000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
WORK=$(mktemp -d /tmp/agent-mem.XXXXXX)
NS=(agm-node agm-inj)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
if [ -z "${BIN_PREBUILT:-}" ]; then
    (cd "$ROOT" && cargo build --release --locked -q -p felix-rs -p felix-tests --bin felix --bin bgp-inject)
fi

setup_net() {
    for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    sleep 0.3
    for ns in "${NS[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
    ip link add agm0 netns agm-node type veth peer name eth0 netns agm-inj
    ip -n agm-node link set agm0 name eth0
    ip -n agm-node addr add 10.98.1.1/24 dev eth0
    ip -n agm-node link set eth0 up
    ip -n agm-inj addr add 10.98.1.2/24 dev eth0
    ip -n agm-inj link set eth0 up
}

kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

kernel_routes() { ip -n agm-node route show proto "$1" | wc -l; }

# Waits until `$1` (a command) prints a number >= $2; fails after 600 s.
wait_count() {
    local end=$((SECONDS + 600))
    while [ "$($1)" -lt "$2" ]; do
        [ $SECONDS -lt $end ] || { echo "timed out waiting for $1 >= $2" >&2; return 1; }
        sleep 0.2
    done
}

RESULTS=()

run_one() {
    local impl=$1 pid
    setup_net
    case $impl in
    felix)
        cat > "$WORK/agent.toml" <<CONF
node_name = "bench-node"
node_address = "10.98.1.1/24"
datastore = "sqlite:$WORK/felix.db"
control_socket = "$WORK/agent.sock"
pod_api_socket = "$WORK/pod-api.sock"
http_listen = "10.98.1.1:9099"
log_level = "warn"
graceful_restart_recovery = false

[bgp]
asNumber = 64512

[[bgp_peers]]
name = "inject"
peerIP = "10.98.1.2"
asNumber = 64512
CONF
        rm -f "$WORK/felix.db"
        ip netns exec agm-node "$BIN/felix" node run --config "$WORK/agent.toml" \
            > "$WORK/felix.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        local proto=102
        ;;
    bird)
        cat > "$WORK/bird.conf" <<CONF
log "$WORK/bird.log" { warning, error, fatal };
router id 10.98.1.1;
protocol device {}
protocol kernel { ipv4 { export all; }; }
protocol bgp inj {
  local 10.98.1.1 as 64512; neighbor 10.98.1.2 as 64512;
  direct; hold time 90;
  ipv4 { import all; export none; gateway direct; };
}
CONF
        ip netns exec agm-node bird -f -c "$WORK/bird.conf" -s "$WORK/bird.ctl" &
        pid=$!
        PIDS+=("$pid")
        local proto=bird
        ;;
    esac
    # Idle: up for 2 s, its neighbour configured but not connected yet.
    sleep 2
    local idle
    idle=$(kib "$pid" VmRSS)
    # bgp-inject connects (generating and encoding the table first, ~1 s).
    ip netns exec agm-inj "$BIN/bgp-inject" --peer 10.98.1.1 --local 10.98.1.2 \
        --prefixes "$N" > "$WORK/inject-$impl.json" 2> "$WORK/inject-$impl.err" &
    local inj=$!
    PIDS+=("$inj")
    wait_count "kernel_routes $proto" "$N"
    local done_ns
    done_ns=$(date +%s%N)
    sleep 2
    local rss hwm
    rss=$(kib "$pid" VmRSS)
    hwm=$(kib "$pid" VmHWM)
    local first
    first=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["start_ns"])' "$WORK/inject-$impl.json")
    RESULTS+=("$impl $N $idle $rss $hwm $first $done_ns")
    kill "$inj" "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    wait "$inj" 2>/dev/null || true
}

echo "uptime before: $(uptime)"
for impl in felix bird; do
    run_one "$impl"
done
echo "uptime after:  $(uptime)"

python3 - "${RESULTS[@]}" <<'PY'
import sys
rows = [r.split() for r in sys.argv[1:]]
print("| implementation | routes | idle RSS (MiB) | RSS with routes (MiB) | peak RSS (MiB) | bytes/route | to kernel (s) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for impl, n, idle, rss, hwm, first, done in rows:
    n, idle, rss, hwm = int(n), int(idle), int(rss), int(hwm)
    print(f"| {impl} | {n:,} | {idle/1024:.1f} | {rss/1024:.1f} | {hwm/1024:.1f} | "
          f"{(rss-idle)*1024/n:.0f} | {(int(done)-int(first))/1e9:.1f} |")
PY
