"""`reshard status` for people: one migration's document (Coordinator.status) as text, once
or live (``--watch``), with the rates and ETAs that only two successive readings give.

Every figure is read, not guessed: copy rows come from the targets' committed cursors,
lag in records from Kafka, lag in seconds and the current apply rate from the workers'
own heartbeats. The copy's total is the planner's estimate and says so; an ETA is
the remaining work over the rate measured between two readings, and is labelled as such.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from reshard.observe.progress import human_seconds


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


@dataclass
class Rates:
    """What changed between two readings ``seconds`` apart."""

    seconds: float
    copy_rows_per_s: dict[tuple[str, str], float] = field(default_factory=dict)
    lag_drain_per_s: float | None = None  # records of lag gone per second (negative: growing)


def rates(prev: dict | None, cur: dict, seconds: float) -> Rates | None:
    if prev is None or seconds <= 0:
        return None
    r = Rates(seconds)
    before = {(c["move_id"], c["table"]): c["rows_copied"] for c in prev.get("copy", [])}
    for c in cur.get("copy", []):
        key = (c["move_id"], c["table"])
        if key in before:
            r.copy_rows_per_s[key] = (c["rows_copied"] - before[key]) / seconds
    a, b = (prev.get("lag") or {}).get("records"), (cur.get("lag") or {}).get("records")
    if a is not None and b is not None:
        r.lag_drain_per_s = (a - b) / seconds
    return r


def _copy_line(c: dict, r: Rates | None) -> str:
    done, est = c["rows_copied"], c.get("rows_estimate") or 0
    head = f"  copy {c['move_id']} {c['table']}: "
    if c["done"]:
        return head + f"{done:,} rows, done" + (f" (estimated {est:,})" if est else "")
    if est:
        pct = min(99, int(100 * done / est)) if est else 0
        body = f"{done:,} of about {est:,} rows ({pct}%, the total is an estimate)"
    else:
        body = f"{done:,} rows"
    rate = r.copy_rows_per_s.get((c["move_id"], c["table"])) if r else None
    if rate:
        left = max(0, est - done) / rate if est and rate > 0 else None
        body += f", {rate:,.0f} rows/s" + (f", ETA ~{human_seconds(left)}" if left is not None else "")
    if c.get("throttle"):
        body += f" ({c['throttle']})"
    return head + body


def _tasks(tasks: list[str]) -> str:
    if not tasks:
        return "no tasks"
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t] = counts.get(t, 0) + 1
    return ", ".join(f"{n} task{'s' if n > 1 else ''} {state}" for state, n in counts.items())


def _event_line(e: dict) -> str:
    at = datetime.fromisoformat(e["at"]).strftime("%H:%M:%S")
    detail = e.get("detail") or {}
    keys = ("state", "step", "cluster", "attempt", "seconds", "equal", "lsn", "error")
    facts = ", ".join(f"{k} {detail[k]}" for k in keys if detail.get(k) is not None)
    return f"    {at} {e['event']}" + (f" ({facts})" if facts else "")


def _ddl_lines(d: dict) -> list[str]:
    """The status view's lines for people (nothing when no change was captured and capture works)."""
    lines = [f"  schema changes NOT captured on {cluster}: {why}"
             for cluster, why in sorted(d["capture"].items()) if why]
    n = d["changes"]
    if any(n.values()):
        lines.append(f"  schema changes (--on-ddl {d['policy']}): {n['applied']} applied, {n['placing']} being placed, "
                     f"{n['paused']} paused" + (f", {n['resolved']} resolved by hand" if n["resolved"] else "")
                     + (f", {n['ignored']} ignored" if n["ignored"] else ""))
    for p in d["pending"]:
        for where in p["pending_on"]:
            lines.append(f"    {p['what']} on {where['destination']}: "
                         + (f"waits for {', '.join(where['waits_for'])} to pass it" if where["waits_for"]
                            else "being applied"))
    for p in d["paused"]:
        lines.append(f"    PAUSED at {p['cluster']}#{p['entry']} ({p['table']}, {p['lsn']}): {p['statement'][:80]}: "
                     f"{p['reason']}")
    return lines


def human(d: dict, r: Rates | None = None) -> str:
    lines = [f"migration {d['migration']}: {d['state']}  (map epoch {d['from_epoch']} -> {d['to_epoch']})"]
    if d.get("error"):
        lines.append(f"  error: {d['error']}")
    for part, why in (d.get("unreachable") or {}).items():
        lines.append(f"  could not reach {part}: {why}")
    for m in d["moves"]:
        lines.append(f"  move {m['id']}: {m['keys']}")
    lines += [_copy_line(c, r) for c in d["copy"]]
    for s in d["streams"]:
        way = "forward from" if s["direction"] == "fwd" else "reverse from"
        lines.append(f"  stream {way} {s['cluster']}: slot {s['slot']} from {s['from_lsn']}, connector "
                     f"{s['connector']} {s['state']} ({_tasks(s['tasks'])})")
        lineage = s.get("slot_lineage") or {}
        if lineage.get("lineage") == "lost":
            lines.append(f"    SLOT LOST: {lineage['why']} (exit 16 from wait and cutover; see the failover runbook)")
        elif lineage.get("lineage") == "carried":
            lines.append(f"    failed over: {lineage['why']}")
    for sb in d.get("standbys", []):
        synced = ", ".join(f"{slot} {'synced' if ok else 'NOT synced'}" for slot, ok in sb["synced"].items())
        ready = "ready" if not sb["missing"] else "NOT READY, lacks: " + "; ".join(sb["missing"])
        lines.append(f"  standby {sb['host']}:{sb['port']} of {sb['cluster']}: {ready}" + (f" ({synced})" if synced else ""))
    if d.get("ddl"):
        lines += _ddl_lines(d["ddl"])
    live = d.get("control") or {}
    if live.get("paused"):
        lines.append(f"  PAUSED by `reshard pause`: {', '.join(live['paused'])} (`reshard resume {d['migration']}`)")
    if live.get("throttle"):
        lines.append("  throttle set by `reshard throttle`: "
                     + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(live["throttle"].items())))
    for w in d.get("waves", []):
        pause = f", write pause {w['pause_ms']:.0f} ms" if w.get("pause_ms") is not None else ""
        lines.append(f"  wave {w['wave']}: {w['state']} at epoch {w['epoch']}{pause}")
    if d.get("last_attempt"):
        a = d["last_attempt"]
        lines.append(f"  last {a['kind']} (attempt {a['attempt']}): {a['state']}")
    v = d.get("verification")
    if v:
        lines.append(f"  last verification ({v['mode']}, {v['at'][:19]}): "
                     + ("equal" if v["equal"] else f"DIVERGENT {v['differences']}"))
    rt = d.get("routers") or {}
    if rt.get("reporting"):
        c = rt["counters"]
        lines.append(f"  routers: {rt['reporting']} reporting, {c.get('reads', 0):,} reads, {c.get('writes', 0):,} "
                     f"writes, {c.get('errors', 0):,} errors, {c.get('fence_rejections', 0):,} fence rejections")
    sh = rt.get("shadow") or {}
    if sh.get("setting") or sh.get("tables"):
        lines.append(f"  shadow reads: sample {sh['setting']['sample']:g}" if sh.get("setting") else
                     "  shadow reads: off")
        for t, n in sorted((sh.get("tables") or {}).items()):
            lines.append(f"    {t}: {n.get('sampled', 0):,} compared, {n.get('matched', 0):,} matched, "
                         f"{n.get('lag', 0):,} settled as lag, {n.get('mismatches', 0):,} MISMATCHED"
                         + (f", {n['dropped']:,} dropped" if n.get("dropped") else ""))
    live = [w for w in d["workers"] if w.get("live")]
    lag = d.get("lag") or {}
    seconds = [v for w in live for v in ((w["stats"].get("lag_seconds") or {}).values())]
    if "records" in lag:
        line = f"  lag: {lag['records']:,} Kafka records not yet applied"
        if seconds:
            line += f", newest applied change {max(seconds):.1f}s after its commit"
        if r is not None and r.lag_drain_per_s is not None and lag["records"]:
            if r.lag_drain_per_s > 0:
                line += f"; draining {r.lag_drain_per_s:,.0f}/s, caught up in ~{human_seconds(lag['records'] / r.lag_drain_per_s)} (estimate)"
            else:
                line += "; not draining"
        lines.append(line)
    for s in lag.get("streams", []):
        lines.append(f"  slot {s['slot']} on {s['cluster']}: {human_bytes(s['lag_bytes'])} unconfirmed, "
                     f"{human_bytes(s['retained_bytes'])} of WAL retained" + ("" if s["active"] else ", not streaming"))
    for w in d["workers"]:
        st = w["stats"]
        seen = ("stopped" if w["stopped_at"] is not None else "running" if w.get("live")
                else f"stopped or stuck: last report {w['idle_s']:.0f}s ago")
        now = st.get("recent_events_per_second")
        lines.append(f"  worker {w['worker']} ({seen}): {st.get('applied', 0):,} applied"
                     + (f", {now:,.0f} events/s now" if now is not None and w.get("live") else "")
                     + f", {st.get('dead_letters', 0)} dead letters"
                     + (f", metrics on :{st['metrics_port']}" if st.get("metrics_port") else ""))
    if d.get("events"):
        lines.append("  last events:")
        lines += [_event_line(e) for e in d["events"]]
    return "\n".join(lines)


def watch(read: Callable[[], dict], interval: float, *, dump: Callable[[dict], str] | None = None,
          console=None) -> None:
    """Read and show the status every ``interval`` seconds until Ctrl-C: a live view on a
    terminal (rich), or one JSON document per line, as ``dump`` writes it."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    prev, prev_t = None, 0.0
    console = console or Console(stderr=False)
    live = None if dump else Live(console=console, auto_refresh=False, transient=False)
    try:
        if live is not None:
            live.start()
        while True:
            t = time.monotonic()
            doc = read()
            r = rates(prev, doc, t - prev_t)
            if dump is not None:
                print(dump(doc), flush=True)
            else:
                head = f"{time.strftime('%H:%M:%S')}  every {interval:g}s, Ctrl-C to stop\n"
                assert live is not None  # made when there is no dump
                live.update(Text(head + human(doc, r)), refresh=True)
            prev, prev_t = doc, t
            time.sleep(max(0.0, interval - (time.monotonic() - t)))
    except KeyboardInterrupt:
        pass
    finally:
        if live is not None:
            live.stop()
