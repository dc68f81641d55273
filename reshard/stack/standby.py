"""A physical standby of an embedded cluster, so a test can fail a source over.

Made without ``pg_basebackup`` (the server builds of most majors carry none, and a client
of another major refuses the server) through the server's own low-level base backup API:
a physical slot on the primary holds the WAL, ``pg_backup_start``, a copy of the data
directory, ``pg_backup_stop`` (whose label file goes into the copy), then ``standby.signal``
and the streaming settings. On 17+ the standby synchronizes the primary's failover slots
(``sync_replication_slots``), and the primary's logical walsenders wait for it
(``synchronized_standby_slots``), so a failover slot is never ahead of the standby that
would replace the primary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import psycopg
from psycopg import sql

from reshard.errors import StackError
from reshard.stack.pg_binaries import server_user
from reshard.stack.postgres import PostgresCluster
from reshard.stack.process import ProcessRecord

SKIP = ("postmaster.pid", "postmaster.opts", "backup_label", "backup_label.old", "tablespace_map")
EMPTIED = ("pg_wal", "pg_replslot", "pg_stat_tmp", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots",
           "pg_subtrans")


def slot_name(standby: PostgresCluster) -> str:
    return "reshard_standby_" + "".join(ch if ch.isalnum() else "_" for ch in standby.name.lower())


def create(primary: PostgresCluster, standby: PostgresCluster) -> ProcessRecord:
    """Make ``standby`` (not initialized yet) a streaming standby of the running ``primary``,
    start it and wait until it accepts read-only sessions. Returns its process record."""
    if standby.initialized():
        raise StackError(f"{standby.name} exists already")
    slot = slot_name(standby)
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        major = conn.info.server_version // 10000
        if not conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone():
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        conn.execute("SELECT pg_backup_start('reshard standby', true)")
        try:
            _copy(primary.datadir, standby.datadir)
        finally:
            stopped = conn.execute("SELECT labelfile, spcmapfile FROM pg_backup_stop(true)").fetchone()
        if major >= 17:  # after the copy: the standby must not wait for a slot of its own
            conn.execute(sql.SQL("ALTER SYSTEM SET synchronized_standby_slots = {}").format(sql.Literal(slot)))
            conn.execute("SELECT pg_reload_conf()")
    assert stopped is not None  # pg_backup_stop returns one row
    label, spcmap = stopped
    (standby.datadir / "backup_label").write_text(label)
    if spcmap:
        (standby.datadir / "tablespace_map").write_text(spcmap)
    settings = [_conninfo(primary, standby), f"primary_slot_name = '{slot}'", "hot_standby = on",
                "hot_standby_feedback = on"]
    if major >= 17:
        settings.append("sync_replication_slots = on")
    with open(standby.datadir / "postgresql.auto.conf", "a") as f:
        f.write("\n".join(settings) + "\n")
    (standby.datadir / "standby.signal").touch()
    _own(standby.datadir)
    standby.init()  # an initialized data directory: only its port line is set
    rec = standby.start()
    standby.wait_ready(rec)
    return rec


def _conninfo(primary: PostgresCluster, standby: PostgresCluster) -> str:
    return (f"primary_conninfo = 'host=127.0.0.1 port={primary.port} user=postgres dbname=postgres "
            f"application_name={slot_name(standby)}'")


def follow(standby: PostgresCluster, primary: PostgresCluster) -> None:
    """Point an existing standby at its primary's port now (the stack may have moved it)."""
    conf = standby.datadir / "postgresql.auto.conf"
    lines = [line for line in conf.read_text().splitlines() if not line.startswith("primary_conninfo")]
    conf.write_text("\n".join([*lines, _conninfo(primary, standby)]) + "\n")


def _copy(src: Path, dst: Path) -> None:
    """The running primary's data directory (files that vanish meanwhile, such as temporary
    ones, are skipped: WAL replay from the backup's start makes the copy consistent)."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        if rel.parts and rel.parts[0] in EMPTIED:
            dirs.clear()
            continue
        for name in files:
            if rel == Path(".") and name in SKIP:
                continue
            try:
                shutil.copy2(Path(root) / name, dst / rel / name)
            except FileNotFoundError:
                pass
    (dst / "pg_wal" / "archive_status").mkdir(parents=True, exist_ok=True)


def _own(datadir: Path) -> None:
    user = server_user()
    os.chmod(datadir, 0o700)
    if user:
        for path in [datadir, *datadir.rglob("*")]:
            shutil.chown(path, user, user)
