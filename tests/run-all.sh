#!/usr/bin/env bash
# Runs each test binary given, bounded in time, and prints one summary line.
# Exit status is non-zero when any binary fails.
set -u
pass=0; fail=0; failed=()
for t in "$@"; do
    name=$(basename "$t")
    out=$(mktemp)
    if timeout --kill-after=10 "${LOOM_TEST_TIMEOUT:-300}" "$t" >"$out" 2>&1; then
        rc=0
    else
        rc=$?
    fi
    n_pass=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -1)
    n_fail=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$out" | tail -1)
    pass=$((pass + ${n_pass:-0}))
    if [ "$rc" -ne 0 ]; then
        fail=$((fail + ${n_fail:-1}))
        failed+=("$name")
        echo "---- $name FAILED (exit $rc) ----"
        tail -n 60 "$out"
    else
        echo "ok   $name (${n_pass:-0} tests)"
    fi
    rm -f "$out"
done
[ ${#failed[@]} -eq 0 ] || echo "failed binaries: ${failed[*]}"
echo "tests: $pass passed, $fail failed"
# For `make test`'s closing summary.
[ -z "${LOOM_SUMMARY:-}" ] || echo "$pass $fail" > "$LOOM_SUMMARY"
[ "$fail" -eq 0 ]
