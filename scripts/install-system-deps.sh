#!/usr/bin/env bash
# Install what reshard needs from Debian's packages, only if it is missing:
# PostgreSQL 15 server binaries, a Java 17+ runtime, Maven, Python >= 3.11 with venv, and a C
# compiler with Python's headers for the applier's two small extensions (reshard runs without
# them, slower: pip builds them optionally).
# Idempotent: on a machine that has everything it only checks and exits.
set -euo pipefail

need=()
have_pg=0
for d in /usr/lib/postgresql/*/bin; do
  v=$(basename "$(dirname "$d")")
  if [[ "$v" =~ ^[0-9]+$ ]] && (( v >= 15 )) && [[ -x "$d/initdb" && -x "$d/postgres" ]]; then have_pg=1; fi
done
(( have_pg )) || need+=(postgresql-15)
if ! java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then need+=(openjdk-17-jre-headless); fi
command -v mvn >/dev/null || need+=(maven)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)  # the echo filter and the converter are compiled
command -v runuser >/dev/null || need+=(util-linux)
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "reshard needs Python >= 3.11 as python3 (found: $(python3 -V 2>&1 || echo none))" >&2
  exit 1
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v gcc >/dev/null || need+=(gcc)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need+=(python3-dev)

if (( ${#need[@]} == 0 )); then
  echo "system dependencies: all present"
  exit 0
fi

SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "missing ${need[*]} and not root (no sudo): install them first" >&2; exit 1; }
  SUDO=sudo
fi
# The Debian package would create and start a cluster of its own on port 5432; reshard
# runs its own clusters (started and stopped by recorded pid), so ask it not to.
if [[ ! -e /etc/postgresql-common/createcluster.conf ]]; then
  $SUDO mkdir -p /etc/postgresql-common
  echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
fi
echo "installing from Debian's packages: ${need[*]}"
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
