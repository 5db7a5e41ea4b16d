#!/usr/bin/env bash
# The whole test suite (unit + end-to-end on real QEMU VMs), after installing what it needs.
# Ends with one line "N passed, N failed".
#
# Two vitest processes side by side (vitest.config.ts says why): the tests on real VMs (project
# e2e), and the unit tests followed by the end-to-end tests on simulated labs (projects unit, cli).
# Each line of their output is prefixed with its half; each writes a JSON report, summed at the end.
# Arguments go to both (e.g. a file filter; a half it leaves empty passes with no tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --test

work=$(mktemp -d /tmp/pgi-test-XXXXXX)
trap 'rm -rf "$work"' EXIT
half() { # name, then vitest's project flags
  local name=$1
  shift
  set +e
  npx vitest run --passWithNoTests --reporter=default --reporter=json --outputFile.json="$work/$name.json" "$@" 2>&1 |
    sed -u "s/^/[$name] /"
  echo "${PIPESTATUS[0]}" > "$work/$name.rc"
}
half vm --project e2e "$@" &
vm=$!
half unit --project unit --project cli "$@" &
unit=$!
wait "$vm" "$unit" || true

node -e '
  const fs = require("fs")
  let passed = 0, failed = 0, skipped = 0
  for (const f of process.argv.slice(1)) {
    let r
    try {
      r = JSON.parse(fs.readFileSync(f, "utf8"))
    } catch {
      // a half that wrote no report (vitest itself failed): count it as one failure
      console.log(`no test report from ${f.replace(/.*\//, "")}`)
      failed += 1
      continue
    }
    passed += r.numPassedTests
    failed += r.numFailedTests
    // a file that failed outside its tests (an import, a hook) has no failed test to count: one each
    failed += r.testResults.filter((t) => t.status === "failed" && !t.assertionResults.some((a) => a.status === "failed")).length
    skipped += r.numPendingTests + (r.numTodoTests ?? 0)
  }
  // skipped tests (e.g. the rollout e2e without PGI_E2E_ROLLOUT=1) on their own line: the last
  // line is exactly "N passed, N failed"
  if (skipped) console.log(`(${skipped} skipped)`)
  console.log(`${passed} passed, ${failed} failed`)
' "$work/vm.json" "$work/unit.json" || echo "0 passed, 1 failed"
rc=0
for name in vm unit; do
  r=$(cat "$work/$name.rc" 2>/dev/null || echo 1)
  [ "$r" = 0 ] || rc=$r
done
exit "$rc"
