"""The schema changes of a migration as `reshard ddl list`, `reshard status` and the exporter show them."""

from __future__ import annotations

from typing import Any

from reshard.control.store import ControlStore
from reshard.ddl.follower import destinations, feeders


def changes_view(store: ControlStore, name: str) -> dict[str, Any]:
    """Policy, capture per cluster, and every change with each op's destinations: applied
    (when, at which positions) or pending (and, at a barrier, the streams not yet passed)."""
    rec = store.migration(name)
    plan = store.plan_of(rec)
    changes = store.ddl_changes(name)
    applied = {(a["direction"], a["destination"], a["statement"]): a for a in store.ddl_applied(name)}
    out = []
    waiting: dict[str, int] = {}
    for ch in changes:
        ops = []
        for o in ch["ops"]:
            done, pending = {}, []
            for dest in destinations(plan, ch["direction"], ch["cluster"], o["table"]):
                a = applied.get((ch["direction"], dest, o["statement"]))
                if a is not None:
                    done[dest] = {"at": a["applied_at"], "positions": a["positions"]}
                elif o["phase"] != "unsupported" and ch["status"] in ("placing", "paused"):
                    blocked = [] if o["phase"] == "early" else [
                        f for f in feeders(plan, ch["direction"], dest, o["table"])
                        if not any(c["cluster"] == f and c["direction"] == ch["direction"] and c["passed_at"]
                                   and any(d["statement"] == o["statement"] for d in c["ops"]) for c in changes)]
                    pending.append({"destination": dest, "waits_for": blocked})
                    if o["phase"] == "barrier" and ch["status"] == "placing":
                        waiting[dest] = waiting.get(dest, 0) + 1
            ops.append({"what": o["what"], "phase": o["phase"], "statement": o["statement"], "applied_on": done,
                        "pending_on": pending})
        out.append({"cluster": ch["cluster"], "entry": ch["entry_id"], "direction": ch["direction"],
                    "table": ch["tbl"], "statement": ch["statement"].strip(), "lsn": ch["lsn"],
                    "status": ch["status"], "reason": ch["reason"], "recorded_at": ch["recorded_at"],
                    "passed": ch["passed_at"] is not None, "ops": ops})
    return {"policy": rec.settings.get("on_ddl", "apply"), "capture": rec.settings.get("ddl_capture") or {},
            "changes": out, "waiting_at_barrier": waiting}


def human(doc: dict[str, Any]) -> str:
    lines = [f"schema changes of {doc['migration']} (--on-ddl {doc['policy']})"]
    for cluster, why in sorted(doc["capture"].items()):
        if why:
            lines.append(f"  {cluster}: NOT captured: {why}")
    if not doc["changes"]:
        lines.append("  none captured")
    for ch in doc["changes"]:
        lines.append(f"  {ch['cluster']}#{ch['entry']} {ch['direction']} {ch['table']} at {ch['lsn']}: "
                     f"{ch['status'].upper()}  {ch['statement'][:100]}")
        if ch["reason"]:
            lines.append(f"      {ch['reason']}")
        for o in ch["ops"]:
            where = ", ".join(sorted(o["applied_on"])) or "-"
            lines.append(f"      {o['what']} [{o['phase']}] applied on: {where}")
            for p in o["pending_on"]:
                lines.append(f"        pending on {p['destination']}"
                             + (f": waits for {', '.join(p['waits_for'])} to pass it" if p["waits_for"] else ""))
    return "\n".join(lines)


def status_view(store: ControlStore, name: str) -> dict[str, Any]:
    """The part of `reshard status`: policy, capture, counts, what is paused and what waits."""
    v = changes_view(store, name)
    count = {k: sum(1 for c in v["changes"] if c["status"] == k)
             for k in ("placing", "applied", "paused", "resolved", "ignored")}
    return {"policy": v["policy"], "capture": v["capture"], "changes": count,
            "waiting_at_barrier": v["waiting_at_barrier"],
            "paused": [{k: c[k] for k in ("cluster", "entry", "table", "statement", "lsn", "reason")}
                       for c in v["changes"] if c["status"] == "paused"],
            "pending": [{"cluster": c["cluster"], "entry": c["entry"], "table": c["table"], "what": o["what"],
                         "phase": o["phase"], "pending_on": o["pending_on"]}
                        for c in v["changes"] if c["status"] == "placing" for o in c["ops"] if o["pending_on"]]}

