#!/usr/bin/env bash
# Regenerates the BGP captures in this directory: real daemons (BIRD 2,
# GoBGP, FRR bgpd, ExaBGP, all from Debian) talk in network namespaces
# joined by veth pairs while tshark records TCP port 179.
#
# Needs root (namespaces), bird2, gobgpd, frr, exabgp and tshark.
# Usage: sudo tests/captures/regenerate.sh [CAPTURE...]
#   CAPTURE is one of: bird-gobgp bird-frr gobgp-frr exabgp-gobgp bird-rr
#   (default: all). Output goes next to this script unless OUT=DIR is set.
#
# Everything it creates (namespaces fxc-*, daemons, a work directory under
# /tmp) is removed on exit, success or not.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CONF=$HERE/configs
OUT=${OUT:-$HERE}
WORK=$(mktemp -d /tmp/fxcap.XXXXXX)
chmod 755 "$WORK"

NAMESPACES=()
PIDS=()      # processes started directly (tshark, gobgpd, exabgp)
PIDFILES=()  # daemons that fork (bird, bgpd)

log() { printf '== %s\n' "$*" >&2; }

cleanup() {
  local rc=$?
  set +e
  local p f
  if [[ $rc -ne 0 ]]; then
    for f in "$WORK"/*.ctl; do
      [[ -S $f ]] && birdc -s "$f" show protocols all >&2
    done
  fi
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for f in "${PIDFILES[@]}"; do
    [[ -s $f ]] && kill "$(cat "$f")" 2>/dev/null
  done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for f in "${PIDFILES[@]}"; do
    [[ -s $f ]] && kill -9 "$(cat "$f")" 2>/dev/null
  done
  for n in "${NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null; done
  if [[ $rc -ne 0 ]]; then
    log "failed (exit $rc); daemon logs:"
    for f in "$WORK"/*.log "$WORK"/*/*.log; do
      [[ -f $f ]] && { echo "--- $f" >&2; tail -n 30 "$f" >&2; }
    done
  fi
  if [[ -n ${KEEP_WORK:-} ]]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

need() { command -v "$1" >/dev/null || { echo "missing: $1" >&2; exit 1; }; }
for t in ip bird birdc gobgpd gobgp /usr/lib/frr/bgpd vtysh exabgp tshark; do need "$t"; done
[[ $(id -u) -eq 0 ]] || { echo "run as root" >&2; exit 1; }

# --- namespaces and links ---------------------------------------------------

mkns() {
  ip netns add "$1"
  NAMESPACES+=("$1")
  ip -n "$1" link set lo up
  # No duplicate address detection: addresses (link-local included) are
  # usable at once, so the sessions start without waiting.
  ip netns exec "$1" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
}

# veth NS_A IF_A MAC_A NS_B IF_B MAC_B
# Fixed MACs give fixed EUI-64 link-local addresses. gso_max_segs 1 makes
# the kernel hand the capture real MTU-sized segments instead of one GSO
# super-packet, so large messages really span several frames.
veth() {
  ip -n "$1" link add "$2" address "$3" type veth peer name "$5" address "$6" netns "$4"
  ip -n "$1" link set "$2" gso_max_segs 1 up
  ip -n "$4" link set "$5" gso_max_segs 1 up
}

addr() { # NS IF ADDR...
  local ns=$1 dev=$2; shift 2
  local a
  for a in "$@"; do ip -n "$ns" addr add "$a" dev "$dev" nodad 2>/dev/null || ip -n "$ns" addr add "$a" dev "$dev"; done
}

# --- capture ----------------------------------------------------------------

CAPTURE_PID=
start_capture() { # NS IF NAME
  local err=$WORK/$3.tshark.log
  ip netns exec "$1" tshark -i "$2" -f 'tcp port 179' -w "$WORK/$3.pcap" -F pcap -q 2>"$err" &
  CAPTURE_PID=$!
  PIDS+=("$CAPTURE_PID")
  local i
  for i in $(seq 100); do
    grep -q "Capturing on" "$err" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "tshark did not start" >&2
  return 1
}

stop_capture() { # NAME
  sleep 0.5
  kill -INT "$CAPTURE_PID"
  wait "$CAPTURE_PID" || true
  cp "$WORK/$1.pcap" "$OUT/$1.pcap"
  chmod 644 "$OUT/$1.pcap"
  local size
  size=$(stat -c %s "$OUT/$1.pcap")
  log "$1.pcap: $size bytes; BGP messages by type:"
  tshark -r "$OUT/$1.pcap" -Y bgp -T fields -e bgp.type 2>/dev/null | tr ',' '\n' | sort | uniq -c >&2
  if ((size > 200000)); then echo "$1.pcap is larger than 200 KB" >&2; return 1; fi
}

# --- daemons ----------------------------------------------------------------

start_bird() { # NS CONF NAME
  local f=$WORK/$3.pid
  PIDFILES+=("$f")
  ip netns exec "$1" bird -c "$2" -s "$WORK/$3.ctl" -P "$f"
}
bird_cmd() { # NAME COMMAND...
  local n=$1; shift
  birdc -s "$WORK/$n.ctl" "$@"
}

start_gobgp() { # NS CONF PORT NAME
  ip netns exec "$1" gobgpd -f "$2" --api-hosts "127.0.0.1:$3" --pprof-disable >"$WORK/$4.log" 2>&1 &
  PIDS+=("$!")
  local i
  for i in $(seq 100); do
    ip netns exec "$1" gobgp -p "$3" global >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "gobgpd $4 did not start" >&2
  return 1
}
gobgp_cmd() { # NS PORT ARGS...
  local ns=$1 port=$2; shift 2
  ip netns exec "$ns" gobgp -p "$port" "$@"
}

start_frr() { # NS CONF NAME
  local d=$WORK/$3
  mkdir -p "$d"
  cp "$2" "$d/bgpd.conf"
  chown -R frr:frr "$d"
  PIDFILES+=("$d/bgpd.pid")
  ip netns exec "$1" /usr/lib/frr/bgpd -d -f "$d/bgpd.conf" -i "$d/bgpd.pid" -z "$d/zserv.api" \
    --vty_socket "$d" -Z -n -u frr -g frr --log "file:$d/bgpd.log"
}
frr_cmd() { # NAME VTYSH-COMMAND...
  local d=$WORK/$1; shift
  local args=() c
  for c in "$@"; do args+=(-c "$c"); done
  vtysh --vty_socket "$d" -d bgpd "${args[@]}"
}

start_exabgp() { # NS CONF NAME
  env exabgp_log_level=WARNING exabgp_log_destination="$WORK/$3.log" \
    exabgp_daemon_user=root exabgp_api_cli=false \
    ip netns exec "$1" exabgp "$2" >"$WORK/$3.out" 2>&1 &
  PIDS+=("$!")
}

# wait_for DESCRIPTION SECONDS COMMAND...: retries COMMAND every 0.2 s.
wait_for() {
  local what=$1 secs=$2; shift 2
  local i
  for i in $(seq $((secs * 5))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "timed out waiting for $what" >&2
  return 1
}
bird_established() { bird_cmd "$1" show protocols "$2" | grep -q Established; }
gobgp_established() { gobgp_cmd "$1" "$2" neighbor "$3" | grep -qi 'BGP state = established'; }
frr_established() { frr_cmd "$1" "show bgp neighbors $2" | grep -q 'BGP state = Established'; }

# --- captures ---------------------------------------------------------------

capture_bird_gobgp() {
  local name=bird-gobgp c=$CONF/bird-gobgp
  log "$name"
  mkns fxc-bg-bird
  mkns fxc-bg-gobgp
  veth fxc-bg-bird bg0 02:00:0a:ff:01:01 fxc-bg-gobgp bg1 02:00:0a:ff:01:02
  addr fxc-bg-bird bg0 10.255.1.1/24 fd00:255:1::1/64
  addr fxc-bg-gobgp bg1 10.255.1.2/24 fd00:255:1::2/64
  start_capture fxc-bg-bird bg0 "$name"

  local G=(fxc-bg-gobgp 50101)
  start_gobgp fxc-bg-gobgp "$c/gobgpd.toml" 50101 bg-gobgp
  # Two paths for 10.255.120.0/24 (path ids 1 and 2 on the ADD-PATH session).
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.120.0/24 identifier 1 origin igp med 5 community 65002:120,no-export large-community 4200000002:120:1
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.120.0/24 identifier 2 origin egp aspath 65100 med 50 community 65002:121
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.121.0/24 identifier 1 aspath 65100,4200000100 community 65002:1,65002:2,no-advertise rt 65002:121
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.122.0/25 identifier 1 origin incomplete large-community 4200000002:1:1,4200000002:1:2 aggregator 4200000002:10.255.1.2
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.123.0/24 identifier 1
  gobgp_cmd "${G[@]}" global rib add -a ipv6 2001:db8:120::/48 origin igp med 7 community 65002:120 large-community 4200000002:6:1
  gobgp_cmd "${G[@]}" global rib add -a ipv6 2001:db8:121:8000::/49 aspath 65100
  start_bird fxc-bg-bird "$c/bird.conf" bg-bird

  wait_for "bird-gobgp IPv4 session" 30 bird_established bg-bird gobgp4
  wait_for "bird-gobgp IPv6 session" 30 bird_established bg-bird gobgp6
  sleep 3
  # Withdrawals both ways: one path of an ADD-PATH prefix, one whole prefix.
  gobgp_cmd "${G[@]}" global rib del -a ipv4 10.255.120.0/24 identifier 2
  gobgp_cmd "${G[@]}" global rib del -a ipv6 2001:db8:121:8000::/49
  bird_cmd bg-bird disable st4b
  bird_cmd bg-bird disable st6b
  sleep 1
  # ROUTE-REFRESH from BIRD on both sessions. (GoBGP keeps an Adj-RIB-In:
  # `gobgp neighbor X softresetin` re-runs its policy without sending one.)
  bird_cmd bg-bird reload in gobgp4
  sleep 1
  bird_cmd bg-bird reload in gobgp6
  sleep 4
  # Administrative shutdown with a shutdown communication (RFC 8203) from
  # each side: BIRD on IPv4, GoBGP on IPv6.
  bird_cmd bg-bird disable gobgp4 '"felix capture: bird maintenance"'
  gobgp_cmd "${G[@]}" neighbor fd00:255:1::1 disable --reason "felix capture: gobgp maintenance"
  sleep 0.2
  bird_cmd bg-bird disable gobgp6
  sleep 0.5
  stop_capture "$name"
}

capture_bird_frr() {
  local name=bird-frr c=$CONF/bird-frr
  log "$name"
  mkns fxc-bf-bird
  mkns fxc-bf-frr
  veth fxc-bf-bird bf0 02:00:0a:ff:02:01 fxc-bf-frr bf1 02:00:0a:ff:02:02
  addr fxc-bf-bird bf0 10.255.2.1/24
  addr fxc-bf-frr bf1 10.255.2.2/24
  start_capture fxc-bf-bird bf0 "$name"

  local d=$WORK/bf-bird
  mkdir -p "$d"
  cp "$c/bird.conf" "$d/bird.conf"
  local i j
  for i in $(seq 200 203); do
    for j in $(seq 0 255); do echo "route 10.$i.$j.0/24 blackhole;"; done
  done >"$d/bulk-routes.conf"
  start_frr fxc-bf-frr "$c/bgpd.conf" bf-frr
  start_bird fxc-bf-bird "$d/bird.conf" bf-bird
  wait_for "bird-frr session" 30 bird_established bf-bird frr
  sleep 3
  # ROUTE-REFRESH each way; both speak enhanced route refresh (RFC 7313),
  # so the answers come between BoRR and EoRR markers.
  bird_cmd bf-bird reload in frr
  sleep 1
  frr_cmd bf-frr "clear bgp ipv4 unicast 10.255.2.1 soft in"
  sleep 2
  # A withdrawal from FRR.
  frr_cmd bf-frr "configure terminal" "router bgp 65003" "address-family ipv4 unicast" "no network 10.255.152.0/22"
  sleep 4
  # FRR shuts the session down with a shutdown communication.
  frr_cmd bf-frr "configure terminal" "router bgp 65003" "neighbor 10.255.2.1 shutdown message felix capture: frr maintenance"
  # Keep BIRD from reconnecting (it would after about a second).
  sleep 0.2
  bird_cmd bf-bird disable frr
  sleep 0.5
  stop_capture "$name"
}

capture_gobgp_frr() {
  local name=gobgp-frr c=$CONF/gobgp-frr
  log "$name"
  mkns fxc-gf-gobgp
  mkns fxc-gf-frr
  veth fxc-gf-gobgp gf0 02:00:0a:ff:03:01 fxc-gf-frr gf1 02:00:0a:ff:03:02
  addr fxc-gf-gobgp gf0 10.255.3.1/24 fd00:255:3::1/64
  addr fxc-gf-frr gf1 10.255.3.2/24 fd00:255:3::2/64
  start_capture fxc-gf-gobgp gf0 "$name"

  local G=(fxc-gf-gobgp 50103)
  start_gobgp fxc-gf-gobgp "$c/gobgpd.toml" 50103 gf-gobgp
  # iBGP: LOCAL_PREF and MED go to the peer; two paths for 10.255.160.0/24.
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.160.0/24 identifier 1 local-pref 160 med 16 community 65020:160
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.160.0/24 identifier 2 local-pref 90 med 26 community 65020:161 large-community 65020:160:2
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.161.0/24 identifier 1 origin incomplete aspath 65101,65102 local-pref 100
  gobgp_cmd "${G[@]}" global rib add -a ipv6 2001:db8:160::/48 identifier 1 nexthop fd00:255:3::1 local-pref 160 community 65020:6
  gobgp_cmd "${G[@]}" global rib add -a ipv6 2001:db8:161::/56 identifier 1 nexthop fd00:255:3::1 med 3
  start_frr fxc-gf-frr "$c/bgpd.conf" gf-frr
  wait_for "gobgp-frr session" 30 gobgp_established "${G[@]}" 10.255.3.2
  sleep 3
  # Route changes from GoBGP: a new prefix, an implicit replace, withdrawals.
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.162.0/24 identifier 1 local-pref 120 community 65020:162
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.161.0/24 identifier 1 origin incomplete aspath 65101,65102 local-pref 110
  gobgp_cmd "${G[@]}" global rib del -a ipv4 10.255.160.0/24 identifier 2
  gobgp_cmd "${G[@]}" global rib del -a ipv6 2001:db8:161::/56 identifier 1
  sleep 1
  # ROUTE-REFRESH from FRR for both families.
  frr_cmd gf-frr "clear bgp ipv4 unicast 10.255.3.1 soft in"
  sleep 1
  frr_cmd gf-frr "clear bgp ipv6 unicast 10.255.3.1 soft in"
  sleep 3
  # A hard reset from FRR (Cease, Administrative Reset); the session comes
  # back up and everything is sent again.
  frr_cmd gf-frr "clear bgp ipv4 unicast 10.255.3.1"
  sleep 1
  wait_for "gobgp-frr session after reset" 30 gobgp_established "${G[@]}" 10.255.3.2
  sleep 3
  # GoBGP shuts it down without a shutdown communication. (bgpd killed with
  # SIGTERM would just close the TCP connection, no NOTIFICATION.)
  gobgp_cmd "${G[@]}" neighbor 10.255.3.2 disable
  sleep 0.5
  stop_capture "$name"
}

capture_exabgp_gobgp() {
  local name=exabgp-gobgp c=$CONF/exabgp-gobgp
  log "$name"
  mkns fxc-eg-exa
  mkns fxc-eg-gobgp
  veth fxc-eg-exa eg0 02:00:0a:ff:04:01 fxc-eg-gobgp eg1 02:00:0a:ff:04:02
  addr fxc-eg-exa eg0 10.255.4.1/24 fd00:255:4::1/64
  addr fxc-eg-gobgp eg1 10.255.4.2/24 fd00:255:4::2/64
  start_capture fxc-eg-exa eg0 "$name"

  local G=(fxc-eg-gobgp 50104)
  start_gobgp fxc-eg-gobgp "$c/gobgpd.toml" 50104 eg-gobgp
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.190.0/24 community 65041:190
  gobgp_cmd "${G[@]}" global rib add -a ipv6 2001:db8:190::/48 nexthop fd00:255:4::2
  sed "s|@CONF@|$c|g" "$c/exabgp.conf" >"$WORK/exabgp.conf"
  start_exabgp fxc-eg-exa "$WORK/exabgp.conf" eg-exa
  wait_for "exabgp-gobgp session" 30 gobgp_established "${G[@]}" 10.255.4.1
  # The API process announces, withdraws and asks for a route refresh
  # 4-5 s after the session is up.
  sleep 7
  # GoBGP resets the session (Cease, Administrative Reset, with a
  # communication). ExaBGP itself closes the TCP connection without any
  # NOTIFICATION when stopped (SIGTERM) or told `teardown`.
  gobgp_cmd "${G[@]}" neighbor 10.255.4.1 reset --reason "felix capture: gobgp reset"
  sleep 0.3
  kill "${PIDS[-1]}"
  sleep 1
  stop_capture "$name"
}

capture_bird_rr() {
  local name=bird-rr c=$CONF/bird-rr
  log "$name"
  mkns fxc-rr-bird
  mkns fxc-rr-gobgp
  mkns fxc-rr-frr
  veth fxc-rr-bird rr0 02:00:0a:ff:05:01 fxc-rr-gobgp rr1 02:00:0a:ff:05:02
  veth fxc-rr-bird rr2 02:00:0a:ff:06:01 fxc-rr-frr rr3 02:00:0a:ff:06:02
  addr fxc-rr-bird rr0 10.255.5.1/24
  addr fxc-rr-gobgp rr1 10.255.5.2/24
  addr fxc-rr-bird rr2 10.255.6.1/24
  addr fxc-rr-frr rr3 10.255.6.2/24
  start_capture fxc-rr-bird rr0 "$name"

  local G=(fxc-rr-gobgp 50105)
  start_gobgp fxc-rr-gobgp "$c/gobgpd.toml" 50105 rr-gobgp
  gobgp_cmd "${G[@]}" global rib add -a ipv4 10.255.220.0/24 local-pref 220 community 65030:220
  start_frr fxc-rr-frr "$c/bgpd.conf" rr-frr
  start_bird fxc-rr-bird "$c/bird.conf" rr-bird
  wait_for "bird-rr session to GoBGP" 30 bird_established rr-bird gobgp
  wait_for "bird-rr session to FRR" 30 bird_established rr-bird frr
  sleep 3
  # A reflected withdrawal, then a reflected announcement.
  frr_cmd rr-frr "configure terminal" "router bgp 65030" "address-family ipv4 unicast" "no network 10.255.211.0/24"
  sleep 1
  frr_cmd rr-frr "configure terminal" "router bgp 65030" "address-family ipv4 unicast" "network 10.255.212.0/24 route-map frr_210"
  sleep 4
  bird_cmd rr-bird disable gobgp '"felix capture: rr maintenance"'
  sleep 0.5
  stop_capture "$name"
}

ALL=(bird-gobgp bird-frr gobgp-frr exabgp-gobgp bird-rr)
WANT=("$@")
[[ ${#WANT[@]} -gt 0 ]] || WANT=("${ALL[@]}")
for w in "${WANT[@]}"; do
  case $w in
    bird-gobgp) capture_bird_gobgp ;;
    bird-frr) capture_bird_frr ;;
    gobgp-frr) capture_gobgp_frr ;;
    exabgp-gobgp) capture_exabgp_gobgp ;;
    bird-rr) capture_bird_rr ;;
    *) echo "unknown capture: $w" >&2; exit 2 ;;
  esac
done
log "done"
