#!/bin/sh
# ExaBGP API process for exabgp-gobgp.pcap: route changes a few seconds in.
sleep 4
echo "announce route 10.255.183.0/24 next-hop 10.255.4.1 as-path [ 4200000040 ] local-preference 100 med 0 path-information 0.0.0.1"
sleep 0.5
echo "withdraw route 10.255.181.0/24 next-hop 10.255.4.1 path-information 0.0.0.1"
echo "withdraw route 2001:db8:181:100::/56 next-hop fd00:255:4::1"
sleep 0.5
echo "announce route-refresh ipv4 unicast"
# Stay alive while ExaBGP runs (it restarts API processes that exit).
while kill -0 "$PPID" 2>/dev/null; do sleep 1; done
