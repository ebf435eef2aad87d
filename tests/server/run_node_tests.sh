#!/bin/sh
# Runs node test files of `moep serve` one after another (each starts its own server; one at a time keeps them
# from competing for the cores): run_node_tests.sh FILE.test.mjs...
# Exits 77 (ctest: skipped) when the openai package is missing: npm ci --prefix tests/server (scripts/setup.sh).
cd "$(dirname "$0")" || exit 1
node="${MOEP_NODE:-node}"
if [ ! -d node_modules/openai ]; then
  echo "tests/server: the openai package is missing; run: npm ci --prefix tests/server"
  exit 77
fi
rc=0
for f in "$@"; do
  echo "== node --test $f (ranks: ${MOEP_SERVE_RANKS:-1})"
  "$node" --test "$f" || rc=1
done
exit $rc
