#!/usr/bin/env bash
# felix-rs main job, for now: the multi-node lab does not exist yet (issue 6),
# so this builds `felix` and runs the most useful thing that exists: it
# decodes the BGP sessions captured between real daemons (BIRD, GoBGP, FRR,
# ExaBGP) in tests/captures/ and prints one JSON object per message.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust (rustup) first" >&2
    exit 2
fi
cargo build --release --locked -p felix-rs --bin felix
shopt -s nullglob
captures=(tests/captures/*.pcap)
if ((${#captures[@]} == 0)); then
    echo "no captures in tests/captures/" >&2
    exit 1
fi
for f in "${captures[@]}"; do
    printf '\n== %s\n' "$f"
    ./target/release/felix bgp decode --pcap "$f"
done
