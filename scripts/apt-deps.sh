#!/usr/bin/env bash
# System packages for emulated devices (ip netns, tc), for the test that scrapes a deployment with a real
# Prometheus, and for building and running the image (rootful podman with runc: crun fails on cgroup
# hybrid hosts; debootstrap makes the base image without a registry). Installed only when missing and
# only as root; everything else works without them.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v tc >/dev/null 2>&1 || need+=(iproute2)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v runc >/dev/null 2>&1 || need+=(runc)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: ${need[*]} missing; emulated devices (--emulate), the Prometheus test or the container tests will be unavailable" >&2
  fi
fi
