#!/usr/bin/env bash
# Byte-for-byte comparison of two moep binaries' logits on every fixture (tests/fixtures/*): whole prompt and
# incremental, 1 rank, and with --ranks N also under mpirun with the split and contiguous placements. For
# refactors that must not change behaviour ("logits are bit-identical before and after").
# Usage: scripts/compare_logits.sh OLD_MOEP NEW_MOEP [--ranks N] [--threads T]
# Prints one line per case and exits 1 if any file differs.
set -euo pipefail
cd "$(dirname "$0")/.."
old="$1" new="$2"; shift 2
ranks=0 threads=2
while [ $# -gt 0 ]; do
  case "$1" in
    --ranks) ranks="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    *) echo "compare_logits: unknown option $1" >&2; exit 2 ;;
  esac
done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
same=0 differ=0
for fx in tests/fixtures/*/; do
  fx=${fx%/}; name=$(basename "$fx")
  [ -f "$fx/reference.json" ] || continue
  # The first case's prompt followed by its greedy tokens: a few dozen positions.
  ids=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1]))['cases'][0]; print(','.join(map(str, c['prompt'] + c['greedy'])))" "$fx/reference.json")
  runs=("1::" "1::--incremental")
  if [ "$ranks" -gt 1 ]; then runs+=("$ranks:split:" "$ranks:contiguous:" "$ranks:split:--incremental"); fi
  for r in "${runs[@]}"; do
    IFS=: read -r n placement extra <<< "$r"
    flags="--threads $threads $extra"
    [ -n "$placement" ] && flags="$flags --placement $placement"
    prefix=""
    [ "$n" -gt 1 ] && prefix="mpirun --oversubscribe --bind-to none -np $n"
    rm -f "$tmp/old.npy" "$tmp/new.npy"
    if ! $prefix "$old" logits "$fx" --ids "$ids" --out "$tmp/old.npy" $flags >"$tmp/log" 2>&1 ||
       ! $prefix "$new" logits "$fx" --ids "$ids" --out "$tmp/new.npy" $flags >"$tmp/log" 2>&1; then
      differ=$((differ + 1)); echo "FAILED  $name ranks=$n ${placement:-} $extra: $(tail -n 1 "$tmp/log")"
    elif cmp -s "$tmp/old.npy" "$tmp/new.npy"; then
      same=$((same + 1)); echo "same    $name ranks=$n ${placement:-} $extra"
    else
      differ=$((differ + 1)); echo "DIFFER  $name ranks=$n ${placement:-} $extra"
    fi
  done
done
echo "compare_logits: $same identical, $differ different ($old against $new)"
[ "$differ" -eq 0 ]
