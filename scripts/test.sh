#!/usr/bin/env bash
# felix-rs full test run: installs what the tests need on a fresh Debian
# machine (only what is missing), then runs the format check, clippy with
# -D warnings and the whole test suite. `.ci/run` calls this script.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Debian packages the tests use: tshark is the independent dissector the
# codec is checked against (tests/tests/captures.rs, felix-rs/tests/pcap.rs).
apt_packages=(tshark bird2 gobgpd frr)
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

log "cargo test"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
cargo test --workspace --locked 2>&1 | tee "$results"

left=$(ip netns list 2>/dev/null || true)
if [ -n "$left" ]; then
    echo "network namespaces left behind by the tests:" >&2
    echo "$left" >&2
    exit 1
fi

# One closing line for the whole suite: cargo's own last line is the last
# crate's doc-tests, which may be "0 passed".
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1); if ($i ~ /^ignored/) s += $(i-1) } }
     END { printf "\n%d passed, %d failed, %d skipped\n", p, f, s }' "$results"
