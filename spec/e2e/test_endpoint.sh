#!/usr/bin/env bash
# `sandgate endpoint` against spec/endpoint_cases.txt, the cases the Lua
# module lua/sandgate/endpoint.lua is tested against too.
#
# usage: test_endpoint.sh path/to/sandgate
set -u
BIN=$(readlink -f "$1")
CASES=$(cd "$(dirname "$0")/.." && pwd)/endpoint_cases.txt
pass=0 fail=0
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  inputs=${line%% -> *}
  expected=${line#* -> }
  args=()
  for tok in $inputs; do
    key=${tok%%=*}
    val=${tok#*=}
    case $key in
    public_host) args+=(--public-host "$val") ;;
    proxy_port) args+=(--proxy-port "$val") ;;
    port) args+=(--port "$val") ;;
    map) args+=(--map "$val") ;;
    esac
  done
  out=$("$BIN" endpoint "${args[@]}" 2>/tmp/sg-endpoint.err)
  rc=$?
  err=$(cat /tmp/sg-endpoint.err)
  if [[ "$expected" == error:* ]]; then
    want=${expected#error: }
    if [ "$rc" -ne 0 ] && [ "$err" == "$want" ] && [ -z "$out" ]; then
      echo "ok - $inputs -> error"; pass=$((pass + 1))
    else
      echo "not ok - $inputs: wanted error '$want', got rc=$rc out='$out' err='$err'"; fail=$((fail + 1))
    fi
  elif [ "$rc" -eq 0 ] && [ "$out" == "$expected" ]; then
    echo "ok - $inputs -> $out"; pass=$((pass + 1))
  else
    echo "not ok - $inputs: wanted '$expected', got rc=$rc out='$out' err='$err'"; fail=$((fail + 1))
  fi
done <"$CASES"
rm -f /tmp/sg-endpoint.err
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
