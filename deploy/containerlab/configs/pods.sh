#!/bin/sh
# pods.sh [N]: makes N pods (default 2) on this node the way the lab does:
# a network namespace each, then the real felix-cni ADD talking to this
# node's agent. Creates the lab's IP pool first when the datastore has none.
#   docker exec clab-felix-mesh-node-1 sh /etc/felix/pods.sh 2
set -eu
count="${1:-2}"
datastore="sqlite:/var/lib/felix/felix.db"
node="$(hostname)"
if ! felix ipam --datastore "$datastore" pools list | grep -q 10.244.0.0/16; then
    felix ipam --datastore "$datastore" pools create --name lab-pool --cidr 10.244.0.0/16
fi
i=1
while [ "$i" -le "$count" ]; do
    pod="$node-p$i"
    ip netns add "$pod" 2>/dev/null || true
    printf '{"cniVersion":"1.0.0","name":"felix-lab","type":"felix-cni","mtu":1450,"agent_socket":"/run/felix/pod-api.sock"}' |
        CNI_COMMAND=ADD CNI_CONTAINERID="$pod" CNI_NETNS="/var/run/netns/$pod" CNI_IFNAME=eth0 \
        CNI_PATH=/usr/local/bin CNI_ARGS="K8S_POD_NAMESPACE=default;K8S_POD_NAME=$pod" \
        felix-cni | grep -o '"address": *"[^"]*"' | head -1 | sed "s/^/$pod /"
    i=$((i + 1))
done
