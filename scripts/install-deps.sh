#!/usr/bin/env bash
# Installs everything sandgate needs to build, run and test, from Debian 12
# packages only. Idempotent: packages already present are left alone, and
# apt's lists are refreshed only when something is missing.
set -euo pipefail

# "a|b": either package will do. OpenResty's LuaJIT branch (luajit2) replaces
# Debian's LuaJIT when nginx's Lua module is installed (the benchmark peers
# need it); sandgate builds and runs with either.
BUILD_DEPS=(build-essential cmake pkg-config
  "libluajit-5.1-dev|libluajit2-5.1-dev" "luajit|luajit2" libuv1-dev libc-ares-dev libnftnl-dev libmnl-dev
  node-llhttp lua-cjson libssl-dev)
TEST_DEPS=(lua-busted clang dnsmasq-base dnsutils iproute2 nftables conntrack curl python3-yaml
  python3 python3-websockets procps)

want=("${BUILD_DEPS[@]}")
[[ ${1:-} == --build-only ]] || want+=("${TEST_DEPS[@]}")

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in "${want[@]}"; do
  found=
  IFS='|' read -ra alts <<<"$p"
  for a in "${alts[@]}"; do installed "$a" && found=1 && break; done
  [[ -n $found ]] || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#want[@]} packages present"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing ${missing[*]}; run as root (or with sudo)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Of "a|b", the first that installs without removing anything: with nginx's Lua
# module present, Debian's LuaJIT would have to replace OpenResty's.
pick=()
for p in "${missing[@]}"; do
  IFS='|' read -ra alts <<<"$p"
  choice=${alts[0]}
  if ((${#alts[@]} > 1)); then
    for a in "${alts[@]}"; do
      if ! apt-get install -s -qq --no-install-recommends "$a" 2>/dev/null | grep -q '^Remv '; then
        choice=$a
        break
      fi
    done
  fi
  pick+=("$choice")
done
echo "install-deps: installing ${pick[*]}"
apt-get install -y -qq --no-install-recommends "${pick[@]}" >/dev/null
echo "install-deps: done"
