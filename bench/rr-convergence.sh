#!/usr/bin/env bash
# Route-reflector convergence benchmark (issue 3).
#
#   bench/rr-convergence.sh [N] [IMPL...]     (root; N defaults to 1000000)
#
# One injecting peer (bgp-inject) announces N distinct IPv4 prefixes in
# realistic attribute groups (median 3 prefixes per UPDATE) to a route
# reflector; two RR clients (bgp-sink) count what the reflector sends them.
# Measured per implementation (felix, bird, gobgp; IMPL defaults to
# "felix bird"; gobgp is optional):
#   time     from the injector's first UPDATE byte to the moment the later
#            of the two sinks has N prefixes (wall clock, one machine)
#   ingest   from the first UPDATE byte until the injector's End-of-RIB was
#            written (the reflector has read the table off the socket)
#   peak RSS VmHWM of the reflector process after the run
#   B/route  (VmHWM - VmRSS before injection) / N
#   cpu      user+sys seconds of the reflector process during the run
# Topology: namespace rrb-rr (the reflector) with one veth to each of
# rrb-inj (10.99.1.2), rrb-s1 (10.99.2.2) and rrb-s2 (10.99.3.2); the
# reflector is 10.99.{1,2,3}.1, all iBGP AS 64512, the peers connect.
# RR_BENCH_FELIX=PATH runs that felix binary instead of the one built here
# (e.g. a copy of an older build, for before/after figures in one session).
# RR_BENCH_PERF=1 (or =dwarf: DWARF call graphs) records `perf record` of the reflector during the run
# into the work dir (perf-IMPL.data); the figures then include perf's cost.
# A run of N = 1,000,000 takes a few minutes (table generation ~0.5 s, each
# reflector well under a minute on 2 cores). Results: docs/benchmarks.md.
set -euo pipefail

N=${1:-1000000}
shift || true
IMPLS=${*:-felix bird}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release
FELIX=${RR_BENCH_FELIX:-$BIN/felix}
WORK=$(mktemp -d /tmp/rr-bench.XXXXXX)
TIMEOUT=${RR_BENCH_TIMEOUT:-600}
NS=(rrb-rr rrb-inj rrb-s1 rrb-s2)
PIDS=()
RR=

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --locked -q -p felix-rs -p felix-tests --bins)

setup_net() {
    for ns in "${NS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    sleep 0.5
    for ns in "${NS[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
    local i=1
    for ns in rrb-inj rrb-s1 rrb-s2; do
        ip link add "rrb$i" netns rrb-rr type veth peer name eth0 netns "$ns"
        ip -n rrb-rr addr add "10.99.$i.1/24" dev "rrb$i"
        ip -n rrb-rr link set "rrb$i" up
        ip -n "$ns" addr add "10.99.$i.2/24" dev eth0
        ip -n "$ns" link set eth0 up
        i=$((i + 1))
    done
}

felix_conf() {
    cat > "$WORK/felix.toml" <<CONF
asn = 64512
router_id = "10.99.1.1"
listen = "0.0.0.0"
cluster_id = "10.99.1.1"
hold_time = 90
families = ["ipv4-unicast"]
control_socket = "$WORK/felix.sock"
[[neighbor]]
address = "10.99.1.2"
asn = 64512
rr_client = true
passive = true
[[neighbor]]
address = "10.99.2.2"
asn = 64512
rr_client = true
passive = true
[[neighbor]]
address = "10.99.3.2"
asn = 64512
rr_client = true
passive = true
CONF
}

bird_conf() {
    cat > "$WORK/bird.conf" <<CONF
log "$WORK/bird.log" { warning, error, fatal };
router id 10.99.1.1;
protocol device {}
template bgp rrclient {
  local as 64512;
  rr client;
  rr cluster id 10.99.1.1;
  passive on;
  direct;
  hold time 90;
  ipv4 { import all; export all; gateway direct; };
}
protocol bgp inj from rrclient { neighbor 10.99.1.2 as 64512; }
protocol bgp sinka from rrclient { neighbor 10.99.2.2 as 64512; }
protocol bgp sinkb from rrclient { neighbor 10.99.3.2 as 64512; }
CONF
}

gobgp_conf() {
    {
        printf '[global.config]\n  as = 64512\n  router-id = "10.99.1.1"\n  port = 179\n'
        for i in 1 2 3; do
            cat <<CONF
[[neighbors]]
  [neighbors.config]
    neighbor-address = "10.99.$i.2"
    peer-as = 64512
  [neighbors.transport.config]
    passive-mode = true
  [neighbors.route-reflector.config]
    route-reflector-client = true
    route-reflector-cluster-id = "10.99.1.1"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
CONF
        done
    } > "$WORK/gobgp.toml"
}

status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
established() { ip netns exec rrb-rr ss -Htn state established '( sport = :179 )' | wc -l; }

wait_for() { # CMD... ; polls for up to $TIMEOUT s
    local t=0
    until "$@"; do
        sleep 0.05; t=$((t + 1))
        kill -0 "$RR" 2>/dev/null || { echo "the reflector exited; see $WORK" >&2; return 1; }
        [ $t -lt $((TIMEOUT * 20)) ] || { echo "timed out: $*" >&2; return 1; }
    done
}

has_done() { grep -q '"done_ns":[0-9]' "$1" 2>/dev/null; }
two_sessions() { [ "$(established)" -ge 2 ]; }
three_sessions() { [ "$(established)" -ge 3 ]; }
has_line() { [ -s "$1" ]; }

run_one() {
    local impl=$1 rr
    setup_net
    rm -f "$WORK"/*.out "$WORK"/*.err
    case $impl in
    felix)
        felix_conf
        ip netns exec rrb-rr "$FELIX" bgp run --config "$WORK/felix.toml" \
            > "$WORK/felix.log" 2>&1 &
        rr=$!
        ;;
    bird)
        bird_conf
        ip netns exec rrb-rr bird -f -c "$WORK/bird.conf" -s "$WORK/bird.ctl" \
            > "$WORK/bird.stdout" 2>&1 &
        rr=$!
        ;;
    gobgp)
        gobgp_conf
        ip netns exec rrb-rr gobgpd -f "$WORK/gobgp.toml" --api-hosts 127.0.0.1:50051 \
            --pprof-disable -l warn > "$WORK/gobgp.log" 2>&1 &
        rr=$!
        ;;
    *) echo "unknown implementation $impl" >&2; return 1 ;;
    esac
    PIDS+=("$rr")
    RR=$rr
    wait_for bash -c "ip netns exec rrb-rr ss -Hltn '( sport = :179 )' | grep -q ."
    for i in 1 2; do
        ip netns exec "rrb-s$i" "$BIN/bgp-sink" --peer "10.99.$((i + 1)).1" \
            --local "10.99.$((i + 1)).2" --expect "$N" \
            > "$WORK/sink$i.out" 2> "$WORK/sink$i.err" &
        PIDS+=("$!")
    done
    wait_for two_sessions
    sleep 1
    local idle cpu0
    idle=$(status_kib "$rr" VmRSS)
    cpu0=$(cpu_ticks "$rr")
    local perf=
    if [ -n "${RR_BENCH_PERF:-}" ]; then # profile the reflector during the run
        cg=fp; [ "$RR_BENCH_PERF" = dwarf ] && cg=dwarf,16384
        perf record -q --call-graph "$cg" -p "$rr" -o "$WORK/perf-$impl.data" > /dev/null 2>&1 &
        perf=$!
        sleep 0.5
    fi
    ip netns exec rrb-inj "$BIN/bgp-inject" --peer 10.99.1.1 --local 10.99.1.2 \
        --prefixes "$N" > "$WORK/inject.out" 2> "$WORK/inject.err" &
    PIDS+=("$!")
    wait_for has_line "$WORK/inject.out"
    wait_for has_done "$WORK/sink1.out"
    wait_for has_done "$WORK/sink2.out"
    local hwm cpu1
    hwm=$(status_kib "$rr" VmHWM)
    cpu1=$(cpu_ticks "$rr")
    if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
    python3 - "$impl" "$N" "$idle" "$hwm" "$(( cpu1 - cpu0 ))" "$(getconf CLK_TCK)" \
        "$WORK/inject.out" "$WORK/sink1.out" "$WORK/sink2.out" >> "$WORK/results" <<'PY'
import json, sys
impl, n, idle, hwm, ticks, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
inj = json.loads(open(sys.argv[7]).readline())
sinks = [json.loads(open(p).readline()) for p in sys.argv[8:10]]
done = max(s["done_ns"] for s in sinks)
print(json.dumps({"impl": impl, "n": n,
    "time_s": (done - inj["start_ns"]) / 1e9,
    "ingest_s": (inj["eor_sent_ns"] - inj["start_ns"]) / 1e9,
    "first_s": (min(s["first_route_ns"] for s in sinks) - inj["start_ns"]) / 1e9,
    "idle_kib": idle, "hwm_kib": hwm, "cpu_s": ticks / hz,
    "bytes_per_route": (hwm - idle) * 1024 / n,
    "sink_prefixes": [s["prefixes"] for s in sinks]}))
PY
    tail -n 1 "$WORK/results"
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

echo "N=$N, felix $FELIX, load average before: $(cut -d' ' -f1-3 /proc/loadavg), work dir $WORK"
for impl in $IMPLS; do
    run_one "$impl"
done
python3 - "$WORK/results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bird = next((r for r in rows if r["impl"] == "bird"), None)
print()
print("| implementation | N | time (s) | ingest (s) | RR CPU (s) | idle RSS (MiB) | peak RSS (MiB) | bytes/route | time vs BIRD | bytes/route vs BIRD |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for r in rows:
    tr = f'{r["time_s"] / bird["time_s"]:.2f}×' if bird else "–"
    mr = f'{r["bytes_per_route"] / bird["bytes_per_route"]:.2f}×' if bird else "–"
    print(f'| {r["impl"]} | {r["n"]:,} | {r["time_s"]:.2f} | {r["ingest_s"]:.2f} | {r["cpu_s"]:.2f} | '
          f'{r["idle_kib"] / 1024:.1f} | {r["hwm_kib"] / 1024:.1f} | {r["bytes_per_route"]:.0f} | {tr} | {mr} |')
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
