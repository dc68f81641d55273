"""Where the monitoring tests find monitoring/ and the Prometheus binaries."""

from __future__ import annotations

from pathlib import Path

from reshard.stack.artifacts import cache_dir

MONITORING = Path(__file__).resolve().parents[1] / "monitoring"


def _binary(name: str) -> Path:
    path = cache_dir() / "prometheus" / "usr" / "bin" / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: `make monitoring-deps` unpacks Debian's prometheus package there "
                           "(`make test` does it first)")
    return path


def prometheus_binary() -> Path:
    return _binary("prometheus")


def promtool_binary() -> Path:
    return _binary("promtool")
