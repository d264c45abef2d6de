#!/usr/bin/env bash
# make check-abi: compares the ABI of the built libloom.so with the committed
# baseline of the last release (tests/abi/libloom.abi, written by
# `make abi-baseline`), under the policy of docs/abi.md. Growth the policy
# allows (appended fields of extensible structs, new functions, new enum
# values) passes; anything else fails with what to do.
#   tests/abi/check-abi.sh LIBRARY BASELINE
set -uo pipefail
lib=$1 base=$2
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
command -v abidiff >/dev/null ||
    { echo "check-abi: abidiff not found (make deps installs abigail-tools)"; exit 1; }
[ -f "$base" ] || { echo "check-abi: no baseline $base (make abi-baseline writes it)"; exit 1; }

old_soname=$(sed -n "s/.*<abi-corpus [^>]*soname='\([^']*\)'.*/\1/p" "$base" | head -1)
new_soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
if [ "$old_soname" != "$new_soname" ]; then
    echo "check-abi: SONAME changed ($old_soname -> $new_soname): a new ABI, nothing to compare."
    echo "check-abi: record it with 'make abi-baseline' when you release it."
    exit 0
fi

# New functions are allowed (--no-added-syms); what is left must be empty.
report=$(abidiff --headers-dir2 "$top/include" --drop-private-types --no-added-syms \
                 --suppressions "$here/extensible.abignore" "$base" "$lib" 2>&1)
rc=$?
# abidiff's exit status is a bit field: 1 error, 2 usage, 4 an ABI change,
# 8 an incompatible one.
if [ $((rc & 3)) -ne 0 ]; then
    echo "check-abi: abidiff failed (exit $rc):"
    echo "$report"
    exit 1
fi
# The suppressions let the listed structs grow at the end, but libabigail
# would also let them grow by an embedded struct (loom_filter) growing, and
# let a member's type change: so members that moved, vanished or changed
# type fail on their own, from the unsuppressed report.
full=$(abidiff --headers-dir2 "$top/include" --drop-private-types "$base" "$lib" 2>&1)
moved=$(grep -E "offset changed from|data member deletion|type name changed from" <<<"$full")
if [ -n "$moved" ]; then
    report=$full
    rc=8
fi
if [ $rc -ne 0 ]; then
    echo "$report"
    echo
    echo "check-abi: FAIL: $lib breaks the ABI of $old_soname against $base."
    echo "  Programs built against the last release would misbehave with this library."
    echo "  Either keep the ABI (docs/abi.md: append fields at the end of extensible"
    echo "  structs, add functions instead of changing them, never reorder or remove), or,"
    echo "  for an intended break: bump LOOM_VERSION_MAJOR in include/loom/version.h"
    echo "  (the SONAME follows it), then 'make abi-baseline' and commit tests/abi/libloom.abi."
    exit 1
fi
added=$(sed -n 's/.*Functions changes summary:.* \([0-9]*\) Added function.*/\1/p' <<<"$full")
echo "check-abi: $(basename "$lib") keeps the ABI of $old_soname ($base; ${added:-0} added functions)"
