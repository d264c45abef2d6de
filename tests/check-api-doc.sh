#!/bin/sh
# Fails when a function libloom exports is not listed in docs/api.md (as
# `name`), so the reference page cannot go stale. Usage: check-api-doc.sh LIB
lib=${1:-libloom.so.0}
missing=$(nm -D --defined-only "$lib" | awk '$2 == "T" && $3 ~ /^loom_/ {print $3}' | sort -u |
          while read -r f; do grep -q "\`$f\`" docs/api.md || echo "$f"; done)
if [ -n "$missing" ]; then
    echo "check-api: exported but not in docs/api.md:"
    echo "$missing"
    exit 1
fi
echo "check-api: every exported loom_ function is in docs/api.md ($(nm -D --defined-only "$lib" | grep -c ' T loom_') functions)"
