#!/usr/bin/env bash
# mypy on reshard as it installs: the stage folders only exist as reshard.snapshotter,
# reshard.cdc_applier and reshard.cutover in an installed tree (setuptools' package-dir
# mapping), which mypy cannot follow in an editable install. Settings: pyproject.toml.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$repo/build"  # a stale build/ from an older layout would be installed too
tree=$(mktemp -d)
trap 'rm -rf "$tree" "$repo/build"' EXIT
"$repo/.venv/bin/pip" install --quiet --no-deps --target "$tree" "$repo" 2>/dev/null
cd "$tree"
"$repo/.venv/bin/mypy" --config-file "$repo/pyproject.toml" -p reshard
