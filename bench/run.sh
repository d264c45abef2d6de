#!/usr/bin/env bash
# Runs the loom benchmarks: `make bench` calls this after installing the
# tools (wrk, nginx, mosquitto, nats-server, valgrind, perf) and building
# everything with release flags into build/bench. Prints the tables and
# writes docs/performance.md; takes about 8 minutes on 2 CPUs.
#
#   bench/run.sh                      everything
#   BENCH_SCALE=0.3 BENCH_REPS=1 bench/run.sh     a quick smoke run
#   BENCH_ONLY=invoke,http bench/run.sh           some scenarios only
#
# See bench/run.py for the scenarios and the other BENCH_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."

# 1000 concurrent connections need file descriptors on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n 16384 2>/dev/null || ulimit -n 4096 2>/dev/null || true

for tool in python3 wrk nginx; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is missing: run 'make bench'" >&2; exit 1; }
done
exec python3 bench/run.py "$@"
