#!/usr/bin/env bash
# Route programming benchmark (issue 6).
#
#   bench/route-programming.sh [N] [ROUNDS]     (root; N defaults to 100000, ROUNDS to 3)
#
# In a fresh network namespace (felixbench-PID, removed at the end), with a
# veth `under0` on 192.0.2.1/24: N remote /26 routes via the gateway
# 192.0.2.2 are installed and then removed, by `ip -batch` (one file of
# `route add` lines, one of `route del` lines) and by felix's RouteProgrammer
# (set_desired + reconcile, then an empty table + reconcile), alternating who
# goes first per round. Prints the per-round times and a table of medians
# with the felix / ip ratio; the target is felix <= 1.3x ip -batch.
# Results: docs/benchmarks.md ("Route programming").
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
exec cargo bench -q -p felix-rs --bench route_programming -- "${1:-100000}" "${2:-3}"
