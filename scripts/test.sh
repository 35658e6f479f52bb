#!/usr/bin/env bash
# felix-rs full test run: installs what the tests need on a fresh Debian
# machine (only what is missing), then runs the format check, clippy with
# -D warnings and the whole test suite. `.ci/run` calls this script.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Debian packages the tests use: tshark is the independent dissector the
# codec is checked against (tests/tests/captures.rs, felix-rs/tests/pcap.rs).
# etcd-server runs the ipam datastore tests against a real etcd; protoc and
# the well-known .proto files (libprotobuf-dev) build the etcd-client crate.
apt_packages=(tshark bird2 gobgpd frr etcd-server etcd-client protobuf-compiler libprotobuf-dev openssl)
# The CNI tests: containernetworking-plugins (the reference portmap, ptp,
# bridge and host-local plugins), iputils-ping (the pod ping matrix),
# iptables (portmap's backend), podman + runc + busybox-static (a real
# runtime driving felix-cni, cni-plugin/tests/podman.rs).
apt_packages+=(containernetworking-plugins iputils-ping iptables nftables podman runc busybox-static)
# The route-programmer tests (felix-rs/tests/routes.rs, tunnels.rs): ip, bridge, sysctl.
apt_packages+=(iproute2 procps)
# The deploy/ manifest tests (felix-rs/tests/manifests.rs): yamllint.
apt_packages+=(yamllint)
# The lab tests read the agents' /metrics (tests/tests/lab_mesh.rs): curl.
apt_packages+=(curl)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    if [ "$(id -u)" -ne 0 ]; then sudo=sudo; else sudo=; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (rustup) first" >&2
    exit 2
fi
for c in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$c"; then
        log "adding rustup component $c"
        rustup component add "$c"
    fi
done

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The tests run under cargo-nextest (one process per test, so one test's
# daemons and namespaces never share a process with another's), with up to
# two retries: the real-daemon tests depend on timing on a loaded 2-core
# machine. A test that needed a retry is reported as FLAKY in the output
# (and counted below), never silently passed.
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# The plugin binaries as shipped (deploy/Containerfile, bench/cni.sh):
# statically linked, with no program interpreter, and they start.
log "felix-cni / felix-ipam as shipped (scripts/build-cni.sh)"
cni=$(bash scripts/build-cni.sh)
for b in felix-cni felix-ipam; do
    if readelf -lW "$cni/$b" | grep -q INTERP; then
        echo "$cni/$b is dynamically linked" >&2
        exit 1
    fi
    CNI_COMMAND=VERSION "$cni/$b" </dev/null | grep -q '"supportedVersions"'
done

log "doc tests"
cargo test --workspace --locked --doc

log "cargo nextest"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
# This build makes target/debug/felix and felix-cni (cargo builds a
# package's binaries for its integration tests): the lab tests take them
# instead of building them again with other features (tests/tests/lab_common).
FELIX_TEST_BINARIES_BUILT=1 \
    cargo nextest run --workspace --locked --retries 2 --no-fail-fast 2>&1 | tee "$results"

left=$(ip netns list 2>/dev/null || true)
if [ -n "$left" ]; then
    echo "network namespaces left behind by the tests:" >&2
    echo "$left" >&2
    exit 1
fi

# One closing line for the whole suite, from nextest's summary.
summary=$(grep -E '^ *Summary \[' "$results" | tail -n 1)
passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$summary")
failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$summary")
skipped=$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p' <<<"$summary")
flaky=$(sed -nE 's/.*\(([0-9]+) flaky\).*/\1/p' <<<"$summary")
[ -z "$flaky" ] || printf '\n%s of the tests passed only on a retry: see FLAKY above\n' "$flaky"
printf '\n%d passed, %d failed, %d skipped\n' "${passed:-0}" "${failed:-0}" "${skipped:-0}"
