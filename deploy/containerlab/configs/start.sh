#!/bin/sh
# start.sh ADDRESS/LEN COMMAND...: starts one containerlab node. containerlab
# adds the lab link (eth1) after the container has started, so wait for it,
# give it the node's underlay address, turn forwarding on (pods are routed
# through the node), then run COMMAND (the felix agent, `felix bgp run`, BIRD).
set -eu
address="$1"
shift
i=0
until ip link show eth1 >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 300 ]; then
        echo "start.sh: no eth1 after 60 s (is the link in the topology?)" >&2
        exit 1
    fi
    sleep 0.2
done
ip addr replace "$address" dev eth1
ip link set eth1 up
echo 1 > /proc/sys/net/ipv4/ip_forward
exec "$@"
