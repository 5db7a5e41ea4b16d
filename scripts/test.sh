#!/usr/bin/env bash
# The whole test suite (unit + end-to-end on real QEMU VMs), after installing what it needs.
# Ends with one line "N passed, N failed".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test

report=$(mktemp /tmp/pgi-vitest-XXXXXX.json)
set +e
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
rc=$?
set -e
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  // skipped tests (e.g. the rollout e2e without PGI_E2E_ROLLOUT=1) on their own line: the last
  // line is exactly "N passed, N failed"
  if (r.numPendingTests) console.log(`(${r.numPendingTests} skipped)`);
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed`);
' "$report" || echo "0 passed, 1 failed"
rm -f "$report"
exit "$rc"
