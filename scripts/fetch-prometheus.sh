#!/usr/bin/env bash
# Prometheus and promtool for the monitoring tests (alert rules, dashboard, a real server
# scraping the embedded stack), from Debian's `prometheus` package, unpacked into
# $RESHARD_CACHE/prometheus (default ~/.cache/reshard) rather than installed: installing
# it would start a Prometheus service listening on every interface.
# Idempotent: when both binaries are there it only says so.
set -euo pipefail

dest="${RESHARD_CACHE:-$HOME/.cache/reshard}/prometheus"
if [[ -x "$dest/usr/bin/prometheus" && -x "$dest/usr/bin/promtool" ]]; then
  echo "prometheus: present in $dest"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
if ! apt-get download -q prometheus >/dev/null 2>&1; then
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -q >/dev/null
  apt-get download -q prometheus
fi
rm -rf "$dest.partial"
mkdir -p "$dest.partial"
dpkg-deb -x prometheus_*.deb "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
"$dest/usr/bin/prometheus" --version 2>&1 | head -1
