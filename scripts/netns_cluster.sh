#!/usr/bin/env bash
# A cluster of N "hosts" on one machine for studying moep over a real network stack: each host is a network
# namespace joined to a bridge by a veth pair, so ranks talk TCP through the kernel's network stack as they
# would between machines, and `tc tbf` on each veth limits the bandwidth of its link. (This kernel has no
# netem: for latency, use moep's --emulate-latency-us, see docs/NETWORK.md.)
#
#   scripts/netns_cluster.sh up N [RATE]   # create hosts 10.213.0.1..N; RATE e.g. 1gbit, 100mbit (tbf, both ways)
#   scripts/netns_cluster.sh run N CMD...  # mpirun -np N over the hosts (one rank each), TCP between them
#   scripts/netns_cluster.sh down          # remove everything this script made
#
# Needs root, iproute2 (ip, tc) and OpenMPI. Addresses: the bridge is 10.213.0.254/24, host i is 10.213.0.i,
# all inside namespaces this script creates; nothing leaves the machine.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
agent="$here/netns_rsh_agent.sh"

up() {
  local n="$1" rate="${2:-}"
  ip link add moep-br type bridge
  ip addr add 10.213.0.254/24 dev moep-br
  ip link set moep-br up
  for i in $(seq 1 "$n"); do
    ip netns add "moep-h$i"
    ip link add "moep-v$i" type veth peer name eth0 netns "moep-h$i"
    ip link set "moep-v$i" master moep-br
    ip link set "moep-v$i" up
    ip -n "moep-h$i" addr add "10.213.0.$i/24" dev eth0
    ip -n "moep-h$i" link set eth0 up
    ip -n "moep-h$i" link set lo up
    if [ -n "$rate" ]; then
      # Shape both directions of the link: into the host (bridge side) and out of it (host side).
      tc qdisc add dev "moep-v$i" root tbf rate "$rate" burst 256kb latency 50ms
      ip netns exec "moep-h$i" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kb latency 50ms
    fi
  done
  echo "netns cluster: $n hosts 10.213.0.1..$n${rate:+, links shaped to $rate}"
}

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep '^moep-h' || true); do ip netns del "$ns"; done
  ip link del moep-br 2>/dev/null || true
}

run() {
  local n="$1"
  shift
  local hosts
  hosts=$(seq -s, -f "10.213.0.%g" 1 "$n")
  OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
    mpirun --mca plm_rsh_agent "$agent" --host "$hosts" -np "$n" \
    --mca btl self,tcp --mca btl_tcp_if_include 10.213.0.0/24 --mca oob_tcp_if_include 10.213.0.0/24 "$@"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) down ;;
  run) shift; run "$@" ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
