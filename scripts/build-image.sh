#!/usr/bin/env bash
# Build images/Dockerfile for this machine's platform (`make image`).
#
#   IMAGE=localhost/edgepart:dev ENGINE=docker|podman scripts/build-image.sh [extra build flags]
#
# With docker: a plain `docker build`. With podman (used when docker is absent): the base image is
# made locally when no registry provides it (scripts/make-base-image.sh), and pip inside the build
# uses this host's pip settings: its CA bundle, its local wheel directory and file:// indexes are
# mounted read-only (nothing of them ends up in the image).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
image=${IMAGE:-localhost/edgepart:dev}
engine=${ENGINE:-}
if [ -z "$engine" ]; then
  # docker only where its daemon answers (its CLI is often installed without one)
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then engine=docker
  elif command -v podman >/dev/null 2>&1; then engine=podman
  else echo "error: neither a running docker nor podman is installed" >&2; exit 1
  fi
fi
args=(-f "$root/images/Dockerfile" -t "$image")
if [ "$engine" = podman ]; then
  source "$root/scripts/podman-env.sh"
  base=docker.io/library/python:3.11-slim-bookworm
  if ! podman image exists "$base" && ! timeout 120 podman pull -q "$base" >/dev/null 2>&1; then
    echo "no registry provides $base: making it locally" >&2
    bash "$root/scripts/make-base-image.sh" "$base"
  fi
  conf=$(mktemp "${TMPDIR:-/tmp}/edgepart-build-pip.XXXXXX")
  trap 'rm -f "$conf"' EXIT
  echo "[global]" > "$conf"
  pip_value() { pip config list 2>/dev/null | sed -n -E "s/^[^.]+\.$1='(.*)'$/\1/p" | tail -1; }
  pybin=$(command -v python3 || true)
  if [ -n "$pybin" ] && command -v pip >/dev/null 2>&1; then
    cert=${PIP_CERT:-$(pip_value cert)}
    if [ -n "$cert" ] && [ -f "$cert" ]; then
      args+=(-v "$cert:/etc/pip-host-ca.crt:ro"); echo "cert = /etc/pip-host-ca.crt" >> "$conf"
    fi
    links=${PIP_FIND_LINKS:-$(pip_value find-links)}
    dirs=()
    for d in $links; do
      [ -d "$d" ] && args+=(-v "$d:$d:ro") && dirs+=("$d")
    done
    [ ${#dirs[@]} -gt 0 ] && echo "find-links = ${dirs[*]}" >> "$conf"
    extra=$(pip_value extra-index-url)
    kept=()
    for u in $extra; do
      d=${u#file://}
      # a local index links its files relative to it (../files/...): mount the folder it lies in
      if [ "$d" != "$u" ]; then [ -d "$d" ] && top=$(dirname "${d%/}") && args+=(-v "$top:$top:ro") && kept+=("$u")
      else kept+=("$u"); fi
    done
    [ ${#kept[@]} -gt 0 ] && echo "extra-index-url = ${kept[*]}" >> "$conf"
  fi
  args+=(-v "$conf:/etc/pip.conf:ro")
fi
"$engine" build "${args[@]}" "$@" "$root"
