#!/usr/bin/env bash
# The README's test command: installs the dependencies, builds sandgate twice
# (release, and with AddressSanitizer + UndefinedBehaviorSanitizer) and runs
# every test against both builds: C unit tests, busted specs, the end-to-end
# scenarios in network namespaces (root), and a bounded libFuzzer run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
jobs=$(nproc)
status=0

echo "== release build (build/) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure) || status=1

echo "== sanitizer build (build-asan/) =="
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSANDGATE_SANITIZE=ON \
  -DSG_FUZZ_SECONDS=${SG_FUZZ_SECONDS:-30} >/dev/null
cmake --build build-asan -j"$jobs"


(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -E '^fuzz/') || status=1
exit $status
