#!/usr/bin/env bash
# Split against whole-expert (contiguous) placement under mpirun, side by side: for each round, one rank on
# its own, then every rank count with each placement in turn, each rank pinned to THREADS cores of its own.
# Prints moep bench's decode, prefill and per-rank lines, and its per-rank time split (the wait column).
#
# Usage: scripts/compare_placements.sh MODEL [RANKS] [THREADS] [ROUNDS] [-- extra moep bench flags]
#   MODEL     a checkpoint directory (e.g. one made by: moep synth /dev/shm/dbrx2 --preset dbrx --layers 2)
#   RANKS     rank counts, default "2 4" (RANKS x THREADS cores must exist)
#   THREADS   threads per rank, default 2
#   ROUNDS    rounds, default 2
#   MOEP      environment: the moep binary (default build/moep)
# Example (docs/PERFORMANCE.md, the device's Xeon):
#   scripts/compare_placements.sh /dev/shm/dbrx2 "2 4" 2 2 -- --prompt 32 --gen 16 --weights copy --paired 8
#   scripts/compare_placements.sh /dev/shm/dbrx2 "2 4" 2 2 -- --prompt 128 --gen 16 --batch 4 --weights copy --paired 0
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MOEP="${MOEP:-$ROOT/build/moep}"
MODEL="${1:?usage: $0 MODEL [RANKS] [THREADS] [ROUNDS] [-- bench flags]}"
shift
RANKS="2 4"; THREADS=2; ROUNDS=2
[[ $# -gt 0 && "$1" != "--" ]] && { RANKS="$1"; shift; }
[[ $# -gt 0 && "$1" != "--" ]] && { THREADS="$1"; shift; }
[[ $# -gt 0 && "$1" != "--" ]] && { ROUNDS="$1"; shift; }
[[ $# -gt 0 && "$1" == "--" ]] && shift
EXTRA=("$@")
[[ -x "$MOEP" ]] || { echo "moep binary not found at $MOEP (set MOEP)" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "mpirun is not installed" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cores="0"
for ((c = 1; c < THREADS; ++c)); do cores+=",$c"; done
keep='^prefill|^decode|rank [0-9]+: [0-9]|paired:|weights read per token|moep bench:| all '
for ((i = 1; i <= ROUNDS; ++i)); do
  echo "== round $i: 1 rank x $THREADS threads (cores $cores)"
  taskset -c "$cores" "$MOEP" bench "$MODEL" --threads "$THREADS" "${EXTRA[@]}" 2>&1 | grep -E "$keep" || true
  for n in $RANKS; do
    for pl in contiguous split; do
      echo "== round $i: mpirun -np $n, $THREADS threads per rank ($THREADS cores each), placement $pl"
      timeout 600 mpirun --bind-to core --map-by "slot:PE=$THREADS" --mca btl self,vader -x LD_LIBRARY_PATH -np "$n" \
        "$MOEP" bench "$MODEL" --threads "$THREADS" --placement "$pl" "${EXTRA[@]}" 2>&1 | grep -E "$keep" || true
    done
  done
done
