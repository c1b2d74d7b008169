# Sourced by the container scripts: settings rootful podman needs on hosts like the project's
# build machines (runc where crun cannot run in cgroup hybrid mode; ulimits within the host's
# hard limits). Writes them to a file of its own only when CONTAINERS_CONF is not set already.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  conf="${TMPDIR:-/tmp}/edgepart-containers.conf"
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=65536
  [ "$nofile" -gt 65536 ] && nofile=65536
  {
    echo "[containers]"
    echo "default_ulimits = [\"nofile=${nofile}:${nofile}\", \"nproc=32768:32768\"]"
    if command -v runc >/dev/null 2>&1; then
      echo "[engine]"
      echo "runtime = \"runc\""
    fi
  } > "$conf"
  export CONTAINERS_CONF="$conf"
fi
