#!/bin/sh
# Runs node test files of `moep serve` one after another (each starts its own server; one at a time keeps them
# from competing for the cores): run_node_tests.sh FILE.test.mjs...
# Exits 77 (ctest: skipped), saying what is missing, when Node.js or the openai package is not installed
# (scripts/test.sh installs both: nodejs and npm from Debian, then npm ci --prefix tests/server).
cd "$(dirname "$0")" || exit 1
node="${MOEP_NODE:-node}"
if ! command -v "$node" >/dev/null 2>&1; then
  echo "tests/server: skipped: Node.js is not installed (apt-get install nodejs npm, then npm ci --prefix tests/server)"
  exit 77
fi
if [ ! -d node_modules/openai ]; then
  echo "tests/server: skipped: the openai npm package is missing (run: npm ci --prefix tests/server)"
  exit 77
fi
rc=0
for f in "$@"; do
  echo "== node --test $f (ranks: ${MOEP_SERVE_RANKS:-1})"
  "$node" --test "$f" || rc=1
done
exit $rc
