#!/usr/bin/env bash
# Runs test binaries under valgrind memcheck (`make valgrind`), and the
# loom programs they start as children too (the shop, the fault service:
# tests/support/proc.c runs them through $LOOM_TEST_WRAP). Fails when any
# of them reports a memory error or a definite leak, or a test fails.
# Usage: tests/valgrind.sh BINARY...
set -u
out=build/valgrind
rm -rf "$out"; mkdir -p "$out"
vg="valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite"
vg="$vg --show-leak-kinds=definite --num-callers=30 --trace-children=no"
export LOOM_TEST_WRAP="$vg --log-file=$PWD/$out/child.%p.log"
fail=0
start=$(date +%s)
for t in "$@"; do
    name=$(basename "$t")
    t0=$(date +%s)
    if timeout --kill-after=10 "${LOOM_VALGRIND_TIMEOUT:-1500}" \
        $vg --log-file="$out/$name.log" "$t" >"$out/$name.out" 2>&1; then
        echo "ok   $name under valgrind ($(( $(date +%s) - t0 )) s)"
    else
        echo "---- $name FAILED under valgrind (exit $?) ----"
        tail -n 40 "$out/$name.out"; tail -n 40 "$out/$name.log"
        fail=1
    fi
done
# Every log: the test binaries' and their children's.
# A process killed on purpose (SIGKILL in the fault tests) writes no summary:
# it passes when it reported no error before it died.
errors='^==[0-9]+== (Invalid |Conditional jump|Use of uninitialised|Syscall param|Mismatched|Source and destination|Argument .* of function|Jump to|Process terminating)'
bad=0; n=0; killed=0
for log in "$out"/*.log; do
    [ -e "$log" ] || continue
    n=$((n + 1))
    if grep -q "ERROR SUMMARY:" "$log"; then
        grep -q "ERROR SUMMARY: 0 errors" "$log" && ! grep -q "definitely lost: [1-9]" "$log" && continue
    elif ! grep -Eq "$errors" "$log"; then
        killed=$((killed + 1)); continue
    fi
    echo "---- $log: errors or definite leaks ----"
    grep -E -A 25 "$errors|definitely lost: [1-9]" "$log" | head -80
    bad=1
done
children=$(ls "$out"/child.*.log 2>/dev/null | wc -l)
echo "valgrind: $killed child process(es) were killed on purpose (no summary, no error before)"
echo "valgrind: $# test binaries and $children child processes checked ($n logs) in $(( $(date +%s) - start )) s:" \
     "$([ $bad -eq 0 ] && echo 'no errors, no definite leaks' || echo 'ERRORS')"
[ $fail -eq 0 ] && [ $bad -eq 0 ]
