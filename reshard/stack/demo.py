"""`reshard demo`: a real migration on the embedded stack, under a live write load.

Split ``source1`` into the stack's targets by the hash of the key, while a writer
keeps inserting, updating and deleting: snapshot at the slot's position, Debezium
streams the rest through Kafka, the applier applies it, the writer stops, reshard
proves catch-up, and verification compares the source with the union of targets.

With ``cutover`` the writer goes through the router (as an application would), the
data is verified under the live load, and the migration is cut over while it writes:
the report adds the measured write pause, and the writes after it land on the targets
(and flow back to the source through reverse replication).

Each run starts clean: earlier demo migrations are torn down (or, once cut over,
their streams dropped), and the map that puts every key on source1 is active again.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from reshard.cluster import fence
from reshard.cluster.session import connect
from reshard.config import Config
from reshard.control.states import State
from reshard.coordinator import ApplierStats, Coordinator
from reshard.errors import ConfigError
from reshard.maps.shardmap import DEFAULT_BUCKETS, ShardMap, parse_map
from reshard.observe.progress import Progress
from reshard.router import Router
from reshard.stack.workload import TABLE, Workload, create_table, seed

SOURCE = "source1"


def demo_maps(targets: list[str]) -> tuple[dict, dict]:
    """Today: everything on source1. Tomorrow: the buckets split evenly over the targets."""
    group = {"key": "bigint", "tables": {TABLE: "id"}}
    before = {"name": "demo-before", "groups": {"accounts": {**group, "hash": {
        "buckets": DEFAULT_BUCKETS, "clusters": {SOURCE: f"0-{DEFAULT_BUCKETS - 1}"}}}}}
    per = DEFAULT_BUCKETS // len(targets)
    clusters = {}
    for i, t in enumerate(targets):
        hi = DEFAULT_BUCKETS - 1 if i == len(targets) - 1 else (i + 1) * per - 1
        clusters[t] = f"{i * per}-{hi}"
    after = {"name": "demo-after", "groups": {"accounts": {**group, "hash": {
        "buckets": DEFAULT_BUCKETS, "clusters": clusters}}}}
    return before, after


def _cut(co: Coordinator, name: str) -> bool:
    return any(w["state"] == "cut" for w in co.store.waves(name))


def removal(co: Coordinator, name: str) -> str:
    """The command that removes a demo migration, in its state."""
    if _cut(co, name):
        return f"reshard complete {name} --keep-source-data --drop-fences --yes"
    return f"reshard abort {name} --yes"


def remove(co: Coordinator, name: str) -> None:
    """What ``removal`` says: drop the demo migration's streams, slots and bookkeeping."""
    if _cut(co, name):
        co.complete(name, keep_source_data=True, drop_fences=True)  # drops both streams
    else:
        co.teardown(name)


def left_running(co: Coordinator, name: str) -> dict:
    """What the demo leaves behind on purpose (a streaming migration to look at) and how to
    remove it: its connectors run and its slots keep WAL on the sources until then."""
    streams, _ = co.streams(name)
    return {"state": co.store.migration(name).state, "connectors": [s.connector for s in streams],
            "slots": [{"cluster": s.cluster, "slot": s.slot} for s in streams], "remove_with": removal(co, name)}


def reset(co: Coordinator, targets: list[str], before: ShardMap) -> list[str]:
    """Tear down earlier demo migrations, make ``before`` the active map again, and
    recreate the sample table everywhere (which also drops its fence triggers)."""
    done = []
    for m in co.store.migrations():
        if not m["settings"].get("demo") or m["state"] in (State.ABORTED, State.COMPLETE):
            continue
        remove(co, m["name"])
        done.append(m["name"])
    active = co.store.active()
    if active is not None and active[1].digest() != before.digest():
        epoch = co.store.register_map(before, "demo reset")[0]
        co.store.activate(epoch)
    for cluster in [SOURCE, *targets]:
        with connect(co.config.cluster(cluster).dsn, f"cluster {cluster}", autocommit=True) as conn:
            create_table(conn)
    return done


def run_demo(config: Config, progress: Progress, *, rows: int = 100_000, write_rate: float = 200.0,
             stream_seconds: float = 10.0, name: str | None = None, timeout: float = 180.0,
             cutover: bool = False, cleanup: bool = False) -> dict:
    if SOURCE not in config.clusters:
        raise ConfigError(f"the demo needs a cluster named {SOURCE} (the embedded stack has one)")
    targets = sorted(c for c in config.clusters if c.startswith("target"))
    if not targets:
        raise ConfigError("the demo needs at least one cluster named target1, target2, ...")
    name = name or "demo_" + datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    co = Coordinator.open(config, progress)
    report: dict = {"command": "demo", "migration": name, "source": SOURCE, "targets": targets}
    _prepare(co, name, targets, rows, report)

    router = None
    if cutover:
        epoch, active = co.store.require_active()
        fence.fence_map(config, epoch, active)
        router = Router.from_config(config, wait_switching=3.0)
    load = Workload(config.cluster(SOURCE).dsn, rate=write_rate, max_seconds=timeout + stream_seconds + 600,
                    router=router)
    load.start()
    progress.step(f"live write load started{' through the router' if router else ''}: ~{write_rate:.0f} writes/s")
    try:
        progress.step(f"{name}: snapshot copy at the slot's position, while the load keeps writing")
        report["copy"] = co.start(name).to_dict()
        applier = _BackgroundApplier(co, name, progress)
        progress.step(f"streaming changes for {stream_seconds:.0f}s with the load still running")
        applier.run_for(stream_seconds)
        if cutover and applier.alive():
            report["cutover"] = cut_over(co, name, progress, stream_seconds)
        load_stats = load.stop()
        report["load"] = load_stats.to_dict()
        progress.step(f"load stopped after {load_stats.operations:,} writes; proving catch-up")
        applier.raise_if_failed()
        report["catch_up"] = co.wait(name, timeout=timeout).to_dict()
        report["apply"] = applier.finish().to_dict()
    finally:
        load.stop()
        if router is not None:
            router.close()

    progress.step("verifying: source against the union of the targets")
    v = co.verify(name)
    report["verify"] = v.to_dict()
    report["ok"] = v.equal
    if cleanup:
        progress.step(f"removing {name} (--cleanup): its connectors, slots and copied rows")
        remove(co, name)
        report["left_running"] = None
    else:
        report["left_running"] = left_running(co, name)
    return report


def _prepare(co: Coordinator, name: str, targets: list[str], rows: int, report: dict) -> None:
    """The sample table seeded on the source (empty on the targets), the routing map reset to
    everything on the source, and the migration recorded."""
    config, progress = co.config, co.progress
    progress.step(f"preparing {TABLE} on {SOURCE} with {rows:,} rows (and an empty copy on {', '.join(targets)})")
    before_doc, after_doc = demo_maps(targets)
    before, after = parse_map(before_doc, config.clusters), parse_map(after_doc, config.clusters)
    report["reset"] = reset(co, targets, before)
    with connect(config.cluster(SOURCE).dsn, f"cluster {SOURCE}", autocommit=True) as conn:
        seed(conn, rows)
    report["moves"] = co.create(name, after, before, settings={"demo": True}).moves


class _BackgroundApplier:
    """The demo's applier, in a thread of this process; an error it raised surfaces here."""

    def __init__(self, co: Coordinator, name: str, progress: Progress):
        self.stop = threading.Event()
        self.task = progress.task("apply", unit="events")
        self.result: dict = {}
        applier = co.applier(name)

        def run() -> None:
            try:
                self.result["stats"] = applier.run(self.stop, task=self.task)
            except BaseException as exc:  # surfaced by raise_if_failed
                self.result["error"] = exc

        self.thread = threading.Thread(target=run, name="reshard-applier", daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def run_for(self, seconds: float) -> None:
        """Let it apply for ``seconds`` (less if it stops)."""
        self.thread.join(timeout=seconds)

    def raise_if_failed(self) -> None:
        if "error" in self.result:
            raise self.result["error"]

    def finish(self, timeout: float = 60.0) -> ApplierStats:
        self.stop.set()
        self.thread.join(timeout=timeout)
        self.task.close()
        self.raise_if_failed()
        return self.result["stats"]


def cut_over(co: Coordinator, name: str, progress: Progress, stream_seconds: float) -> dict:
    """Verify under the load, cut over under the load, keep writing on the targets."""
    progress.step("verifying under the live load (differing keys re-checked under row locks)")
    v = co.verify(name)
    if not v.equal:
        return {"outcome": "not attempted: verification under load found differences", "verify": v.to_dict()}
    result = co.cutover(name)
    out = {k: result.to_dict()[k] for k in ("outcome", "epoch", "pause_ms", "drain_ms", "message")}
    if result.outcome == "done":
        progress.step(f"cut over: write pause {result.pause_ms:.0f} ms; the load now writes the moved keys "
                      "on the targets, and reverse replication carries them back to the source")
        time.sleep(max(2.0, stream_seconds / 2))
    return out


def render(report: dict) -> str:
    """The short human report."""
    c, a, cu, v = report["copy"], report["apply"], report["catch_up"], report["verify"]
    lines = [
        f"reshard demo - migration {report['migration']}: {report['source']} -> {', '.join(report['targets'])}",
        f"  rows copied        {c['rows_copied']:,} in {c['seconds']:.1f}s ({c['rows_per_second']:,} rows/s)",
        f"  writes during run  {report['load']['operations']:,} (inserts, updates, deletes, key changes)",
        f"  events applied     {a['applied']:,} of {a['records']:,} records "
        f"({a['skipped_stale']:,} stale or superseded, {a['echoes']:,} echoes skipped, {a['not_moving']:,} not moving, "
        f"{a['dead_letters']} dead letters)",
        f"  time to catch up   {cu['seconds']:.2f}s after the writes stopped",
        "  verification       " + ("EQUAL" if v["equal"] else "DIFFERENT"),
    ]
    if "cutover" in report:
        cut = report["cutover"]
        lines.insert(-1, f"  cutover            {cut['outcome']}" + (
            f": write pause {cut['pause_ms']:.0f} ms (drain {cut['drain_ms']:.0f} ms), epoch {cut['epoch']} active"
            if cut.get("pause_ms") is not None else ""))
    for ch in v["checks"]:
        lines.append(
            f"    {ch['target']:<10} {ch['target_rows']:>9,} rows  checksum {ch['target_checksum'][:18]:<18} "
            f"{'= source' if ch['equal'] else '!= source ' + str(ch['source_rows']) + ' rows'}"
        )
        for d in ch["differences"][:5]:
            lines.append(f"      key {d['key']}: {d['problem']}")
    left = report.get("left_running")
    if left:
        slots = ", ".join(f"{x['slot']} on {x['cluster']}" for x in left["slots"])
        many = "s" if len(left["slots"]) > 1 else ""
        lines.append(f"  left running       migration {report['migration']} ({left['state']}): connector{many} "
                     f"{', '.join(left['connectors'])}, slot{many} {slots} (keeping WAL until removed)")
        lines.append(f"  remove it with     {left['remove_with']}  (the next `reshard demo` removes it too)")
    return "\n".join(lines)
