"""`reshard report`: a PNG of a migration's life, from what its appliers recorded as it ran.

Each applier records a sample every few seconds (``reshard.apply_samples``: its totals and
its lag). The apply rate is the difference of successive totals over their time, summed
over the workers; lag in seconds is the largest any worker measured at that time, lag in
records the sum of the workers' partition lags. Cutovers and rollbacks are marked where
they finished. Nothing is interpolated or estimated: a gap in the plot is a time without
a running applier. Needs matplotlib (``pip install 'reshard[report]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from reshard.errors import ConfigError, MigrationError

BUCKET_S = 10.0  # samples of several workers are summed per bucket of this many seconds


@dataclass
class Series:
    at: list[datetime] = field(default_factory=list)
    events_per_s: list[float] = field(default_factory=list)
    lag_seconds: list[float | None] = field(default_factory=list)
    lag_records: list[int | None] = field(default_factory=list)


def series(samples: list[dict]) -> Series:
    """Per BUCKET_S bucket: the summed apply rate (successive totals per worker), the
    largest lag in seconds and the summed lag in records."""
    prev: dict[str, dict] = {}
    buckets: dict[int, dict] = {}
    for s in samples:
        key = int(s["at"].timestamp() // BUCKET_S)
        b = buckets.setdefault(key, {"at": s["at"], "rate": 0.0, "lag_s": None, "lag_r": None, "workers": set()})
        p = prev.get(s["worker"])
        if p is not None:
            dt = (s["at"] - p["at"]).total_seconds()
            if dt > 0 and s["applied"] >= p["applied"]:  # a restarted worker starts its totals again
                b["rate"] += (s["applied"] - p["applied"]) / dt
        if s["lag_seconds"] is not None:
            b["lag_s"] = max(b["lag_s"] or 0.0, s["lag_seconds"])
        if s["lag_records"] is not None and s["worker"] not in b["workers"]:
            b["lag_r"] = (b["lag_r"] or 0) + s["lag_records"]
        b["workers"].add(s["worker"])
        prev[s["worker"]] = s
    out = Series()
    for key in sorted(buckets):
        b = buckets[key]
        out.at.append(b["at"])
        out.events_per_s.append(b["rate"])
        out.lag_seconds.append(b["lag_s"])
        out.lag_records.append(b["lag_r"])
    return out


def write_png(store, name: str, path: Path) -> dict:
    """Plot migration ``name`` into ``path``; returns what was plotted."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("`reshard report` draws with matplotlib: pip install 'reshard[report]'") from None
    rows = store.samples(name)
    if len(rows) < 2:
        raise MigrationError(f"migration {name} has {len(rows)} applier sample(s): a report needs an applier "
                             "that ran for at least two sample intervals (`reshard apply --sample-interval`)")
    s = series(rows)
    switches = [(a["finished_at"], a["kind"]) for a in store.attempts(name)
                if a["state"] == "done" and a["kind"] in ("cutover", "rollback") and a["finished_at"]]
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    top.plot(s.at, s.events_per_s, color="tab:blue")
    top.set_ylabel("events applied / s")
    mid.plot(s.at, [v if v is not None else float("nan") for v in s.lag_seconds], color="tab:red")
    mid.set_ylabel("lag (s, commit to applied)")
    low.plot(s.at, [v if v is not None else float("nan") for v in s.lag_records], color="tab:orange")
    low.set_ylabel("lag (Kafka records)")
    low.set_xlabel("time (UTC)")
    for ax in (top, mid, low):
        ax.grid(True, alpha=0.3)
        for when, _kind in switches:
            ax.axvline(when, color="black", linestyle="--", linewidth=0.8)
    for when, kind in switches:
        top.annotate(kind, (when, top.get_ylim()[1]), fontsize=8, ha="left", va="top")
    fig.suptitle(f"reshard migration {name}: {len(rows)} samples from "
                 f"{len({r['worker'] for r in rows})} applier worker(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return {"path": str(path), "samples": len(rows), "workers": len({r["worker"] for r in rows}),
            "from": rows[0]["at"].isoformat(), "to": rows[-1]["at"].isoformat(),
            "max_events_per_second": round(max(s.events_per_s), 1),
            "max_lag_seconds": max((v for v in s.lag_seconds if v is not None), default=None),
            "switches": [{"kind": k, "at": w.isoformat()} for w, k in switches]}
