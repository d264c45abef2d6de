#!/usr/bin/env bash
# Runs each libFuzzer target for a bounded time on its seed corpus
# (tests/fuzz/corpus/NAME) plus a scratch corpus in build/fuzz/. A crash,
# leak or timeout fails the run; its input is kept in build/fuzz/artifacts/.
set -u
seconds=$1; shift
out=build/fuzz
mkdir -p "$out/artifacts"
pass=0; fail=0
for t in "$@"; do
    name=$(basename "$t"); name=${name#fuzz_}
    work="$out/corpus/$name"
    mkdir -p "$work"
    log="$out/$name.log"
    if "$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
        -artifact_prefix="$out/artifacts/$name-" -print_final_stats=1 \
        "$work" "tests/fuzz/corpus/$name" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        echo "ok   fuzz_$name (${runs:-?} runs in ${seconds}s)"
        pass=$((pass + 1))
    else
        echo "---- fuzz_$name FAILED ----"; tail -n 40 "$log"
        fail=$((fail + 1))
    fi
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
