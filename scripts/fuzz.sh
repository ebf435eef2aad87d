#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang, AddressSanitizer and UndefinedBehaviorSanitizer (in
# build-fuzz/, apart from the regular gcc build), writes their seed corpora from the fixtures and test data, and
# runs each target for SECONDS (default 60). Any finding fails the run: a crash, a sanitizer report, a leak, an
# exception other than moep::Error escaping (tests/fuzz/fuzz_util.h), an input taking over 25 s, or memory over
# 2 GB. The input that found it is kept in build-fuzz/findings/<target>/ and the log in build-fuzz/logs/.
#
# Installs Debian's clang and its sanitizer and libFuzzer runtimes (clang-14, libclang-rt-14-dev) with apt-get
# when missing, and llvm-14 for symbolized stack traces.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]       (default: 60 s each, every target)
#   scripts/fuzz.sh 3600    the 1-CPU-hour campaign per target (docs/RELIABILITY.md)
#   Reproduce a finding: build-fuzz/tests/fuzz/<target> build-fuzz/findings/<target>/crash-…
# Environment: MOEP_FUZZ_JOBS (build jobs, default nproc). MOEP_FUZZ_FORK=N: fork mode with N workers a target. MOEP_FUZZ_SEED: libFuzzer's random seed (default: a
# fresh one each run). CI sets it, so that CI's run is reproducible: the same code gets the same mutations, and a
# submission is not failed by what a luckier draw finds in code it did not touch; new ground is covered by the
# longer campaigns (docs/RELIABILITY.md). The corpus each run grows stays in build-fuzz/corpus/<target>/ and seeds
# the next run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_safetensors fuzz_config fuzz_tokenizer_json fuzz_tokenizer_text
                                     fuzz_chat_template fuzz_openai_request fuzz_gguf fuzz_placement)

packages=(clang-14 libclang-rt-14-dev llvm-14)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "fuzz.sh: installing from Debian's packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
cc=clang; cxx=clang++
command -v "$cxx" >/dev/null || { cc=clang-14; cxx=clang++-14; }

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_COMPILER="$cc" -DCMAKE_CXX_COMPILER="$cxx" \
  -DMOEP_FUZZ=ON "${launcher[@]}" >/dev/null
echo "fuzz.sh: building the fuzz targets into build-fuzz/ ($cxx)"
cmake --build build-fuzz -j"${MOEP_FUZZ_JOBS:-$(nproc)}" --target moep_fuzz
rm -rf build-fuzz/seeds
python3 tests/fuzz/make_seeds.py build-fuzz/seeds >/dev/null

symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer || true)
[ -z "$symbolizer" ] && [ -x /usr/lib/llvm-14/bin/llvm-symbolizer ] && symbolizer=/usr/lib/llvm-14/bin/llvm-symbolizer
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=0${symbolizer:+:external_symbolizer_path=$symbolizer}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
mkdir -p build-fuzz/logs
failed=()
printf '%-22s %10s %8s %8s %8s  %s\n' target executions exec/s cov ft result
for t in "${targets[@]}"; do
  bin="build-fuzz/tests/fuzz/$t"
  [ -x "$bin" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
  mkdir -p "build-fuzz/corpus/$t" "build-fuzz/findings/$t"
  log="build-fuzz/logs/$t.log"
  set +e
  # MOEP_FUZZ_FORK=N: libFuzzer's fork mode, N workers, going on past findings (each is kept; any fails the run).
  before=$(ls -A "build-fuzz/findings/$t" | grep -vc '^slow-unit' || true)
  fork=()
  [ -n "${MOEP_FUZZ_FORK:-}" ] && fork=(-fork="$MOEP_FUZZ_FORK" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  "$bin" "${fork[@]}" ${MOEP_FUZZ_SEED:+-seed="$MOEP_FUZZ_SEED"} -max_total_time="$seconds" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="build-fuzz/findings/$t/" "build-fuzz/corpus/$t" "build-fuzz/seeds/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -1)
  [ -n "$execs" ] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')  # fork mode: its last status line
  rate=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log" | tail -1)
  cov=$(grep -oE ' cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  ft=$(grep -oE ' ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
  result=ok
  # Fork mode exits 0 past its findings: a new file among the findings is one.
  after=$(ls -A "build-fuzz/findings/$t" | grep -vc '^slow-unit' || true)
  [ "$rc" -eq 0 ] && [ "$after" -gt "$before" ] && rc=1
  if [ "$rc" -ne 0 ]; then
    result="FINDING (exit $rc; log $log)"
    failed+=("$t")
  fi
  printf '%-22s %10s %8s %8s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
if [ ${#failed[@]} -gt 0 ]; then
  for t in "${failed[@]}"; do
    echo
    echo "fuzz.sh: $t found something (input in build-fuzz/findings/$t/):"
    grep -E -m1 -A25 'ERROR: |fuzz finding|runtime error|==ERROR|deadly signal|out-of-memory|timeout' \
      "build-fuzz/logs/$t.log" || tail -30 "build-fuzz/logs/$t.log"
  done
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${seconds} s each, no finding"
