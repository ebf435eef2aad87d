#!/usr/bin/env bash
# Side by side with llama.cpp on the same weights: synthesizes the DBRX-dimension model (moep synth), converts
# it to GGUF bf16 with llama.cpp's converter (needs python3 with torch and transformers), builds llama.cpp's
# llama-bench (CPU only), then alternates llama-bench and moep bench, both pinned to the same cores: llama.cpp
# with its weights mapped from the file and read into its own memory (--mmap 1 / 0), moep likewise
# (--weights map / copy). Prints both tools' lines. Nothing is downloaded: LLAMA_SRC is a llama.cpp source tree
# you provide (docs/PERFORMANCE.md names the commit used).
#
# Usage: scripts/compare_llamacpp.sh LLAMA_SRC MOEP_BINARY [WORK_DIR] [THREADS] [REPEATS]
#   e.g. scripts/compare_llamacpp.sh ~/llama.cpp build/moep /dev/shm 2 2
set -euo pipefail
LLAMA_SRC=$(realpath "$1")
MOEP=$(realpath "$2")
WORK=${3:-/tmp/moep-vs-llamacpp}
THREADS=${4:-2}
REPEATS=${5:-2}
CORES="0-$((THREADS - 1))"
mkdir -p "$WORK"
[ -d "$WORK/dbrx2" ] || "$MOEP" synth "$WORK/dbrx2" --preset dbrx --layers 2
[ -f "$WORK/dbrx2-bf16.gguf" ] ||
  python3 "$LLAMA_SRC/convert_hf_to_gguf.py" "$WORK/dbrx2" --outtype bf16 --outfile "$WORK/dbrx2-bf16.gguf"
cmake -S "$LLAMA_SRC" -B "$WORK/llama-build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
  -DLLAMA_CURL=OFF >/dev/null
cmake --build "$WORK/llama-build" --target llama-bench >/dev/null
LB=$(find "$WORK/llama-build" -name llama-bench -type f -perm -u+x | head -1)
for i in $(seq 1 "$REPEATS"); do
  for mmap in 1 0; do
    echo "== llama.cpp, --mmap $mmap, $THREADS threads on cores $CORES, run $i"
    taskset -c "$CORES" "$LB" -m "$WORK/dbrx2-bf16.gguf" -p 32 -n 16 -t "$THREADS" -r 3 -mmp "$mmap" | grep -E '^\| dbrx'
    weights=$([ "$mmap" = 1 ] && echo map || echo copy)
    echo "== moep, --weights $weights, $THREADS threads on cores $CORES, run $i"
    taskset -c "$CORES" "$MOEP" bench "$WORK/dbrx2" --prompt 32 --gen 16 --threads "$THREADS" --paired 8 --weights "$weights" |
      grep -E '^prefill|^decode|paired:'
  done
done
