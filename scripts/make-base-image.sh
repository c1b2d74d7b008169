#!/usr/bin/env bash
# Make the image images/Dockerfile starts FROM without a registry: a minimal Debian bookworm with
# Python 3.11 (debootstrap, from this host's Debian mirror), imported into podman under the
# name the Dockerfile expects. Root only; about two minutes.
#
#   scripts/make-base-image.sh [NAME]      # NAME: docker.io/library/python:3.11-slim-bookworm
set -euo pipefail
name=${1:-docker.io/library/python:3.11-slim-bookworm}
source "$(dirname "$0")/podman-env.sh"
if podman image exists "$name"; then
  echo "$name is present"
  exit 0
fi
[ "$(id -u)" = 0 ] || { echo "error: debootstrap needs root" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
# the first non-security mirror this host's apt uses; bookworm has only sources.list.d/*.sources, and a
# missing file must not end the script (grep exits 2 under pipefail)
host_mirror() {
  local files=() f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && files+=("$f")
  done
  [ ${#files[@]} -gt 0 ] || return 0
  { grep -h -o -E '(URIs:|^deb) +https?://[^ ]+' "${files[@]}" || true; } | { grep -v security || true; } \
    | head -1 | awk '{print $2}'
}
mirror=${MIRROR:-$(host_mirror)}
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/edgepart-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - localhost/debian-py:bookworm >/dev/null
podman tag localhost/debian-py:bookworm "$name"
echo "made $name from $mirror"
