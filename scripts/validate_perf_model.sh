#!/usr/bin/env bash
# Validates the performance model against measured runs: synthesizes model shapes (moep synth), calibrates
# this machine for each rank count (moep calibrate), runs moep bench for every rank count, batch and
# emulated latency, and prints predicted against measured tokens/s (moep plan --validate), writing the table
# to a file. Exits non-zero if the model misses its target (median |error| <= 10%, worst <= 20%).
#
# Usage: scripts/validate_perf_model.sh [options]
#   --build-dir DIR     moep build to use (default: build-perf); built first with --build
#   --build             configure and build DIR (Release) before running
#   --ranks "1 2"       rank counts (one rank per "node"; all on this host)
#   --threads T         threads per rank (default 1); each rank is pinned to T cores
#   --cores N           cores to use (default: nproc); ranks x threads must not exceed it, so ranks do not
#                       fight over cores
#   --batches "1 4"     decode batch sizes
#   --latencies "0 50 200 1000"   emulated latency per exchange step (us), for runs with 2+ ranks
#   --models "a b"      which synthetic shapes (default: mixtral-s dbrx-s qwen3-s; qwen2-s has a shared expert;
#                       mixtral-m dbrx-m qwen3-m qwen2-m are
#                       larger, for CPUs with large caches; see below)
#   --prompt P --gen G  tokens per run (default 32, 32)
#   --repeat R          R passes per rank count and model, each a calibration followed by every bench once
#                       (default 3). A bench's figure is the fastest of its R runs (noise only ever slows a
#                       run); its prediction is the mean step time over the R calibrations: on a shared host
#                       the machine's state drifts over minutes, and the passes spread both over that time
#   --guard             keep the cores this run does not use busy with an idle spinner (no memory traffic),
#                       so that other work on a shared machine cannot use them and disturb the measurement
#                       (with --nice, the spinners get that priority too); pointless on a dedicated machine
#   --nice N            run calibrate and bench at this nice level (e.g. -15 on a shared machine; needs root).
#                       Linux groups the processes of a session (autogroup), and nice only ranks processes
#                       within a group, so the script also sets its session's autogroup nice: start it with
#                       setsid so that only its own processes are in that group.
#   --weights MODE      where the runs keep the weights (moep's --weights; default map): with map, ranks on
#                       this host share the page cache as the model assumes (replicated_hardware below), and
#                       calibration measures 4 KiB pages to match; copy puts each rank's weights on 2 MiB pages
#   --splits "replicated split"   --attention and --head of the runs with 2+ ranks (both the same; default
#                       replicated); with both, the table also says whether the model's faster choice (what
#                       `auto` takes) was the faster run
#   --placement P       expert placement of the runs with 2+ ranks (moep's --placement: contiguous, round-robin,
#                       split; default split, the engine's), recorded in the manifest so that the model predicts the same
#   --work DIR          scratch for models, profiles and bench JSON (default: /tmp/moep-validate)
#   --out FILE          where to write the table (default: WORK/validation.md)
#
# Examples:
#   scripts/validate_perf_model.sh                                   # this 2-core machine, 1-2 ranks
#   scripts/validate_perf_model.sh --build --build-dir build --ranks "1 2 4" --threads 4 --cores 16 \
#       --out docs/validation-16core.md                              # a 16-core machine, pinned
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="$ROOT/build-perf"
DO_BUILD=0
RANKS="1 2"
THREADS=1
CORES="$(nproc)"
BATCHES="1 4"
LATENCIES="0 50 200 1000"
MODELS="mixtral-s dbrx-s qwen3-s"
PROMPT=32
GEN=32
WORK=/tmp/moep-validate
OUT=""
REPEAT=3
NICE=0
GUARD=0
WEIGHTS=map
PLACEMENT=split
SPLITS=replicated

while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) BUILD_DIR="$(realpath -m "$2")"; shift 2 ;;
    --build) DO_BUILD=1; shift ;;
    --weights) WEIGHTS="$2"; shift 2 ;;
    --placement) PLACEMENT="$2"; shift 2 ;;
    --splits) SPLITS="$2"; shift 2 ;;
    --ranks) RANKS="$2"; shift 2 ;;
    --threads) THREADS="$2"; shift 2 ;;
    --cores) CORES="$2"; shift 2 ;;
    --batches) BATCHES="$2"; shift 2 ;;
    --latencies) LATENCIES="$2"; shift 2 ;;
    --models) MODELS="$2"; shift 2 ;;
    --prompt) PROMPT="$2"; shift 2 ;;
    --gen) GEN="$2"; shift 2 ;;
    --work) WORK="$(realpath -m "$2")"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --nice) NICE="$2"; shift 2 ;;
    --guard) GUARD=1; shift ;;
    --out) OUT="$(realpath -m "$2")"; shift 2 ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "validate_perf_model.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-$WORK/validation.md}"
mkdir -p "$WORK"
if [[ "$NICE" -lt 0 && -w /proc/self/autogroup ]]; then
  echo "$NICE" > /proc/self/autogroup || true
  echo "== this session's scheduling group: $(cat /proc/self/autogroup)" >&2
fi

if [[ $DO_BUILD -eq 1 ]]; then
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD_DIR" -j"$CORES" --target moep
fi
MOEP="$BUILD_DIR/moep"
[[ -x "$MOEP" ]] || { echo "validate_perf_model.sh: no moep binary at $MOEP (use --build)" >&2; exit 2; }
for cmd in synth bench calibrate plan; do
  "$MOEP" "$cmd" --help >/dev/null 2>&1 || { echo "validate_perf_model.sh: this moep has no '$cmd' command" >&2; exit 2; }
done
for n in $RANKS; do
  if (( n * THREADS > CORES )); then
    echo "validate_perf_model.sh: $n ranks x $THREADS threads exceeds --cores $CORES" >&2; exit 2
  fi
done

# Launches N ranks, each pinned to THREADS cores of its own (one rank runs under taskset). With --guard, the
# other cores (up to --cores) run idle spinners for the duration.
launch() {
  local n="$1"; shift
  local guards=()
  if [[ $GUARD -eq 1 ]]; then
    for ((c = n * THREADS; c < CORES; ++c)); do
      nice -n "$NICE" taskset -c "$c" bash -c 'while :; do :; done' &
      guards+=($!)
    done
  fi
  local status=0
  launch_ranks "$n" "$@" || status=$?
  for g in "${guards[@]}"; do kill "$g" 2>/dev/null; wait "$g" 2>/dev/null; done
  return $status
}
launch_ranks() {
  local n="$1"; shift
  if [[ "$n" -eq 1 ]]; then
    nice -n "$NICE" taskset -c "0-$((THREADS - 1))" "$@"
  else
    nice -n "$NICE" mpirun --allow-run-as-root --oversubscribe --mca btl self,vader \
      --mca btl_vader_single_copy_mechanism none --bind-to core --map-by "slot:PE=$THREADS" -np "$n" "$@"
  fi
}

# The fastest of several bench JSON files (decode tokens/s), with the fastest prefill and median step of them.
best_of() {
  local out="$1"; shift
  jq -s 'sort_by(.decode_tokens_per_s) | last as $b | ($b + {prefill_tokens_per_s: (map(.prefill_tokens_per_s) | max),
         decode_step_ms_p50: (map(.decode_step_ms_p50) | min), runs: length,
         decode_runs_tokens_per_s: (map(.decode_tokens_per_s))})' "$@" > "$out"
}

# Synthetic shapes: a Mixtral-like (8 experts, top-2), a DBRX-like (16 experts, top-4, DBRX's expert layout)
# and a Qwen3-MoE-like (64 small experts, top-8) model. Each is larger than the caches.
synth_args() {
  case "$1" in
    mixtral-s) echo "--arch mixtral --layers 4 --d-model 1024 --ffn 2816 --experts 8 --top-k 2 --heads 16 --kv-heads 4 --vocab 32000" ;;
    dbrx-s) echo "--arch dbrx --layers 2 --d-model 2048 --ffn 2048 --experts 16 --top-k 4 --heads 16 --kv-heads 4 --vocab 32000" ;;
    qwen3-s) echo "--arch qwen3_moe --layers 4 --d-model 1024 --ffn 512 --experts 64 --top-k 8 --heads 16 --kv-heads 4 --head-dim 64 --vocab 32000" ;;
    # A Qwen1.5-MoE-like model with a shared expert (not in the default set): 60 experts, top-4, shared ffn 4x.
    qwen2-s) echo "--arch qwen2_moe --layers 4 --d-model 1024 --ffn 704 --experts 60 --top-k 4 --shared-ffn 2816 --heads 16 --kv-heads 16 --vocab 32000" ;;
    # Larger shapes for machines whose last-level cache would hold a good part of the small ones (server CPUs
    # with 100+ MB of L3): 2.3 GB, 3.3 GB and 1.7 GB of bf16 weights.
    mixtral-m) echo "--arch mixtral --layers 4 --d-model 2048 --ffn 5632 --experts 8 --top-k 2 --heads 16 --kv-heads 4 --vocab 32000" ;;
    dbrx-m) echo "--arch dbrx --layers 2 --d-model 4096 --ffn 4096 --experts 16 --top-k 4 --heads 32 --kv-heads 8 --vocab 32000" ;;
    qwen3-m) echo "--arch qwen3_moe --layers 4 --d-model 2048 --ffn 768 --experts 64 --top-k 8 --heads 16 --kv-heads 4 --head-dim 128 --vocab 32000" ;;
    qwen2-m) echo "--arch qwen2_moe --layers 4 --d-model 2048 --ffn 1408 --experts 60 --top-k 4 --shared-ffn 5632 --heads 16 --kv-heads 16 --vocab 32000" ;;
    *) echo "validate_perf_model.sh: unknown model shape '$1'" >&2; exit 2 ;;
  esac
}

echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; ranks: $RANKS; threads/rank: $THREADS" >&2
for m in $MODELS; do
  if [[ ! -f "$WORK/$m/config.json" ]]; then
    echo "== synth $m" >&2
    # shellcheck disable=SC2046
    "$MOEP" synth "$WORK/$m" $(synth_args "$m") --dtype bf16 --no-tokenizer >&2
  fi
done
# New checkpoints are still being written back to disk for a while; that must not overlap the timings.
sync

# Per rank count and model, REPEAT passes: a calibration, then every bench once. The benches of a pass run
# right after its calibration, and the passes spread calibrations and benches over the same stretch of time.
cases=()
for n in $RANKS; do
  for m in $MODELS; do
    # Calibrated per model shape: the kernels' speed per byte depends on the matrices' row length, and
    # `--expert-shape` makes the calibration's matrices as wide as the model's (d_model columns).
    read -r d_model ffn < <(synth_args "$m" | sed -E 's/.*--d-model ([0-9]+).*--ffn ([0-9]+).*/\1 \2/')
    lats="0"
    splits="replicated"
    [[ "$n" -gt 1 ]] && lats="$LATENCIES" && splits="$SPLITS"
    profs=()
    for r in $(seq 1 "$REPEAT"); do
      prof="$WORK/profile-$m-${n}x${THREADS}-pass$r.json"
      echo "== pass $r of $REPEAT: calibrate $n rank(s) x $THREADS thread(s), matrices of $m ($d_model x $ffn)" >&2
      launch "$n" "$MOEP" calibrate --threads "$THREADS" --dtype bf16 --expert-shape "$d_model,$ffn" --weights "$WEIGHTS" \
        --name "validate-$m-${n}x${THREADS}-pass$r" --out "$prof" >&2
      profs+=("$prof")
      for b in $BATCHES; do
        for lat in $lats; do
          for sp in $splits; do
          bj="$WORK/bench-$m-${n}x${THREADS}-b$b-l$lat-$sp.json"
          echo "== pass $r of $REPEAT: bench $m, $n rank(s), batch $b, emulated latency $lat us, attention and head $sp" >&2
          launch "$n" "$MOEP" bench "$WORK/$m" --prompt "$PROMPT" --gen "$GEN" --batch "$b" --threads "$THREADS" --weights "$WEIGHTS" \
            --placement "$PLACEMENT" --emulate-latency-us "$lat" --attention "$sp" --head "$sp" --json "$bj.run$r" | grep -E '^(prefill|decode):' >&2
          done
        done
      done
    done
    hw_list="$(printf '"%s",' "${profs[@]}")"
    hw_list="[${hw_list%,}]"
    for b in $BATCHES; do
      for lat in $lats; do
       for sp in $splits; do
        bj="$WORK/bench-$m-${n}x${THREADS}-b$b-l$lat-$sp.json"
        runs=()
        for r in $(seq 1 "$REPEAT"); do runs+=("$bj.run$r"); done
        best_of "$bj" "${runs[@]}"
        net="$hw_list"
        [[ "$n" -eq 1 ]] && net="\"\""
        # The ranks share this host's page cache: weights every rank holds are read from one copy, about as
        # fast as by one rank alone, so they are timed with the 1-rank profile (when this run made one).
        rep=""
        [[ "$n" -gt 1 && "$WEIGHTS" == map && -f "$WORK/profile-$m-1x${THREADS}-pass1.json" ]] && rep=", \"replicated_hardware\": \"$WORK/profile-$m-1x${THREADS}-pass1.json\""
        cases+=("{\"label\": \"$m\", \"model\": \"$WORK/$m\", \"hardware\": $hw_list, \"network\": $net, \"bench\": \"$bj\", \"emulate_latency_us\": $lat, \"placement\": \"$PLACEMENT\", \"prompt\": $PROMPT, \"gen\": $GEN$rep}")
       done
      done
    done
  done
done

# The commit is the one the moep binary was built from (its bench JSON), not the checkout's HEAD: a binary
# carried to another machine may be older or newer than the tree it runs beside.
commit="$(jq -r '.commit // "unknown"' "$bj" 2>/dev/null || echo unknown)"
machine="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, $(hostname); $THREADS thread(s) per rank, pinned; moep commit $commit; $(date -u +%Y-%m-%d)"
{
  echo "{\"machine\": \"$machine\", \"cases\": ["
  for i in "${!cases[@]}"; do
    [[ $i -gt 0 ]] && echo ","
    echo "${cases[$i]}"
  done
  echo "]}"
} > "$WORK/manifest.json"

echo "== predicted vs measured (table also in $OUT)" >&2
{
  echo "Command: scripts/validate_perf_model.sh --ranks \"$RANKS\" --threads $THREADS --cores $CORES --batches \"$BATCHES\" --latencies \"$LATENCIES\" --models \"$MODELS\" --prompt $PROMPT --gen $GEN --repeat $REPEAT --nice $NICE --weights $WEIGHTS --placement $PLACEMENT --splits \"$SPLITS\"$([[ $GUARD -eq 1 ]] && echo " --guard")"
  echo
} > "$OUT.head"
set +e
"$MOEP" plan --validate "$WORK/manifest.json" --out "$OUT.body"
status=$?
set -e
cat "$OUT.head" "$OUT.body" > "$OUT" 2>/dev/null || true
rm -f "$OUT.head" "$OUT.body"
exit $status
