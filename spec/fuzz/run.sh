#!/usr/bin/env bash
# Runs a libFuzzer binary for a bounded time on a copy of the seed corpus, so
# that inputs it discovers never land in the source tree.
set -euo pipefail
bin=$1 seeds=$2 seconds=${3:-30}
work=$(mktemp -d /tmp/sgfuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
cp -r "$seeds"/. "$work/"
"$bin" -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 "$work" 2>&1 | tail -n 15
