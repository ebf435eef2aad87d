#!/bin/sh
# mpirun's "rsh agent" for scripts/netns_cluster.sh: starts the daemon command inside the network namespace
# that owns the host address it is given (10.213.0.i -> moep-hi).
host="$1"
shift
case "$host" in
  10.213.0.*) ns="moep-h${host##*.}" ;;
  *) echo "netns_rsh_agent: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" sh -c "$*"
