#!/usr/bin/env bash
# System packages for emulated devices (ip netns, tc) and for the test that scrapes a deployment with
# a real Prometheus. Installed only when missing and only as root; everything else works without them.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: ${need[*]} missing; emulated devices (--emulate) or the Prometheus test will be unavailable" >&2
  fi
fi
