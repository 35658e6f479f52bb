#!/usr/bin/env bash
# Builds the CNI plugin binaries `felix-cni` and `felix-ipam` the way they
# are shipped: release, statically linked (glibc static-pie, `-C
# target-feature=+crt-static`), and prints the directory that holds them.
#
#   dir=$(bash scripts/build-cni.sh) && install -m 755 "$dir"/felix-cni "$dir"/felix-ipam /opt/cni/bin/
#
# Why static: the runtime starts one plugin process per pod and verb, and a
# dynamically linked Rust binary pays at every start for the loader, its
# relocations and libgcc_s (whose constructor runs CPUID, which traps to the
# hypervisor in a VM: ~14 us each here). Static, felix-cni answers VERSION in
# 1.06 ms of CPU instead of 1.37 (/bin/true: 0.98) and an ADD costs ~0.3 ms
# less CPU (docs/benchmarks.md, "CNI ADD CPU, issue 5, 2026-11-23 session 2").
# Cargo has no per-package stable way to ask for this, hence the explicit
# --target: with it, RUSTFLAGS reach the target's crates only (not build
# scripts or proc macros, which cannot be static) and the output lands in
# target/<host triple>/release, apart from the ordinary dynamic build the
# tests use.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
HOST=$(rustc -vV | sed -n 's/^host: //p')
(cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked -q -p felix-cni --target "$HOST" >&2)
echo "$ROOT/target/$HOST/release"
