#!/usr/bin/env bash
# Convergence in the lab (issue 6), release binaries.
#
#   bench/lab-convergence.sh [NODES] [PODS_PER_NODE] [JOINS]   (root; 10 20 5)
#
# 1. Pod to route: `felix lab up --nodes NODES --pods 0`, the lab pool
#    replaced by one with /29 blocks (8 addresses: every 8th pod of a node
#    needs a new block, so many pods do), then PODS_PER_NODE pods per node,
#    round-robin over the nodes, through the real felix-cni binary.
#    `ip -ts monitor route` runs in every node's namespace. For each pod
#    that got a new block: from felix-cni ADD returning (`date` right after
#    it) to the block's route appearing in each other node's kernel
#    (monitor timestamp). A pod in an existing block needs no BGP change:
#    its block route is there before its ADD; those are counted, not timed.
# 2. Node join: JOINS times, a new node namespace on the underlay and its
#    agent started; from the start to `felix status` saying ready (every
#    mesh session Established, first reconcile done) with a route
#    programmed for every block of the cluster (polled every ~20 ms). Then
#    the node is stopped and removed (`felix node remove`).
# Prints markdown tables and `uptime` before/after. Results:
# docs/benchmarks.md.
set -euo pipefail

NODES=${1:-10}
PODS=${2:-20}
JOINS=${3:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/target/release}
P=${LAB_PREFIX:-fxbench}
DIR=/run/felix-lab/$P
DB=sqlite:$DIR/felix.db
WORK=$(mktemp -d /tmp/lab-conv.XXXXXX)
MONITORS=()

cleanup() {
    for p in "${MONITORS[@]}"; do kill "$p" 2>/dev/null || true; done
    "$BIN/felix" lab down --prefix "$P" >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
if [ -z "${BIN_PREBUILT:-}" ]; then
    (cd "$ROOT" && cargo build --release --locked -q -p felix-rs -p felix-cni --bin felix --bin felix-cni)
fi
"$BIN/felix" lab down --prefix "$P" >/dev/null 2>&1 || true

echo "uptime before: $(uptime)"
"$BIN/felix" lab up --nodes "$NODES" --pods 0 --prefix "$P" > "$WORK/up.log"
"$BIN/felix" ipam --datastore "$DB" pools delete lab-pool > /dev/null
"$BIN/felix" ipam --datastore "$DB" pools create --name lab-pool --cidr 10.244.0.0/16 \
    --block-size 29 > /dev/null

for k in $(seq 1 "$NODES"); do
    ip -n "$P-n$k" -ts monitor route > "$WORK/mon-$k.txt" &
    MONITORS+=("$!")
done
sleep 0.5

: > "$WORK/adds.txt"
for r in $(seq 1 "$PODS"); do
    for k in $(seq 1 "$NODES"); do
        ns="$P-n$k-b$r"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        conf="{\"cniVersion\":\"1.0.0\",\"name\":\"felix-lab\",\"type\":\"felix-cni\",\"mtu\":1450,\"agent_socket\":\"$DIR/node-$k-pod-api.sock\"}"
        out=$(CNI_COMMAND=ADD CNI_CONTAINERID="bench-$k-$r" CNI_NETNS="/var/run/netns/$ns" \
            CNI_IFNAME=eth0 CNI_PATH="$BIN" CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=bench-$k-$r" \
            ip netns exec "$P-n$k" "$BIN/felix-cni" <<< "$conf")
        t=$(date +%s.%N)
        addr=$(grep -o '"address": *"[^"]*"' <<< "$out" | head -1 | sed 's/.*"\([0-9.]*\)\/.*/\1/')
        echo "$k $addr $t" >> "$WORK/adds.txt"
    done
done
sleep 3
for p in "${MONITORS[@]}"; do kill "$p" 2>/dev/null || true; done
MONITORS=()

# Node join.
BLOCKS=$(python3 - "$WORK/adds.txt" <<'PY'
import ipaddress, sys
print(len({ipaddress.ip_network(l.split()[1] + "/29", strict=False) for l in open(sys.argv[1])}))
PY
)
: > "$WORK/joins.txt"
J=99
for j in $(seq 1 "$JOINS"); do
    ns="$P-n$J"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "$P-j$j" netns "$P-lab" type veth peer name eth0 netns "$ns"
    ip -n "$P-lab" link set "$P-j$j" master br0 up
    ip -n "$ns" link set eth0 up
    ip -n "$ns" addr add "10.0.0.$J/24" dev eth0
    ip -n "$ns" route add default via 10.0.0.254
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    sed -e "s/node-1\b/node-$J/g" -e "s#10\.0\.0\.1/#10.0.0.$J/#" -e "s/10\.0\.0\.1:/10.0.0.$J:/" \
        "$DIR/node-1.toml" > "$WORK/node-$J.toml"
    sock=$(sed -n 's/^control_socket = "\(.*\)"/\1/p' "$WORK/node-$J.toml")
    t0=$(date +%s.%N)
    ip netns exec "$ns" "$BIN/felix" node run --config "$WORK/node-$J.toml" > "$WORK/join-$j.log" 2>&1 &
    agent=$!
    until "$BIN/felix" status --json --control-socket "$sock" 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
up = sum(p["state"] == "Established" for p in s["peers"])
ok = s["ready"] and up == int(sys.argv[1]) and s.get("routes_programmed") == int(sys.argv[2])
sys.exit(0 if ok else 1)' "$NODES" "$BLOCKS" 2>/dev/null; do
        sleep 0.02
    done
    t1=$(date +%s.%N)
    echo "$t0 $t1" >> "$WORK/joins.txt"
    kill "$agent"
    wait "$agent" 2>/dev/null || true
    "$BIN/felix" node remove "node-$J" --datastore "$DB" > /dev/null
    ip netns del "$ns"
    sleep 1
done
echo "uptime after:  $(uptime)"

python3 - "$WORK" "$NODES" <<'PY'
import ipaddress, sys, datetime, re
work, nodes = sys.argv[1], int(sys.argv[2])
adds = [l.split() for l in open(f"{work}/adds.txt")]
# First appearance of each /29 route per node (adds only).
first = {}
pat = re.compile(r"^\[([^\]]+)\] (\S+)")
for k in range(1, nodes + 1):
    for line in open(f"{work}/mon-{k}.txt"):
        m = pat.match(line)
        if not m or m.group(2) == "Deleted":
            continue
        dst = m.group(2)
        if not dst.endswith("/29"):
            continue
        ts = datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()
        first.setdefault((k, dst), ts)
seen_blocks = set()
per_node, per_block, existing, missing = [], [], 0, 0
for k, addr, t in adds:
    k, t = int(k), float(t)
    block = str(ipaddress.ip_network(addr + "/29", strict=False))
    if block in seen_blocks:
        existing += 1
        continue
    seen_blocks.add(block)
    worst = None
    for j in range(1, nodes + 1):
        if j == k:
            continue
        ts = first.get((j, block))
        if ts is None:
            missing += 1
            continue
        d = (ts - t) * 1000
        per_node.append(d)
        worst = d if worst is None else max(worst, d)
    if worst is not None:
        per_block.append(worst)

def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]

print()
print(f"pods: {len(adds)} ({len(seen_blocks)} needed a new block, {existing} went into an existing block: no BGP change)")
print(f"block routes never seen on a node: {missing}")
print()
print("| CNI ADD returned -> block route in the kernel of | samples | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | below 0 (route before ADD returned) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for name, v in (("each other node", per_node), ("all other nodes (per block)", per_block)):
    neg = sum(x < 0 for x in v)
    print(f"| {name} | {len(v)} | {pct(v,50):.1f} | {pct(v,90):.1f} | {pct(v,99):.1f} | {max(v):.1f} | {neg} |")
joins = [(float(b) - float(a)) * 1000 for a, b in (l.split() for l in open(f"{work}/joins.txt"))]
if joins:
    print()
    print(f"| new node: agent start -> mesh of {nodes} Established, every block routed | samples | p50 (ms) | max (ms) |")
    print("| --- | --- | --- | --- |")
    print(f"| felix node run | {len(joins)} | {pct(joins,50):.0f} | {max(joins):.0f} |")
PY
