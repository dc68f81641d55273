"""The snapshot copy against a raw COPY pipe doing the same work, in alternating rounds.

Setup on the embedded stack: N accounts on source1, split 1 -> 2 by hash (every row
moves; each target receives half), or with ``--targets 1`` all moved to target1 (one
unit: reshard splits it into ``--copy-workers`` key-range chunks, the raw pipe is one
pipe, pgcopydb does the same work). Each round runs, in turn:

- reshard: `reshard start --throttle off` of a fresh migration (slot with exported
  snapshot, keyset batches committed with their cursors), the copy timed from its first
  batch to its last commit, and the whole step (publication, slot, connector, copy) too
  (the pipe has no throttle either); with ``--throttle off,default`` also with the default
  adaptive throttle, which on this idle source should hold nothing back
  (bench/copy_impact.py measures what it spares an application);
- raw pipe: for each target, `psql -c "COPY (SELECT … WHERE <the same predicate>) TO
  STDOUT" | psql -c "COPY … FROM STDIN"`, the two halves in parallel;
- pgcopydb (Debian's, if installed: `apt-get install pgcopydb`): `pgcopydb copy
  table-data` of the whole table into target1 (`--table-jobs 2`, which splits one table
  into parts by ctid). It cannot filter rows, so with two targets its work differs: the
  same rows, one destination instead of two.

Targets are emptied between runs. Printed: median rows/s of each and the ratio, with the
peak RSS of the reshard process.

    .venv/bin/python bench/copy_throughput.py [--rows 1000000] [--rounds 3] [--targets 1|2]
        [--copy-workers 2] [--shape wide|narrow] [--throttle off[,default]] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    SHAPES,
    add_pg_version,
    fresh_databases,
    load_average,
    median,
    seed_split,
    stack_config,
)
from reshard.config import write_config  # noqa: E402
from reshard.coordinator import Coordinator  # noqa: E402
from reshard.maps.planner import plan  # noqa: E402
from reshard.maps.shardmap import parse_map  # noqa: E402
from reshard.stack.workload import TABLE  # noqa: E402

DB = "bench_copy"
NAME = "benchcopy"
CLUSTERS = ["target1", "target2"]


def empty_targets(config, targets: list[str]) -> None:
    for t in targets:
        with psycopg.connect(config.cluster(t).dsn, autocommit=True) as conn:
            conn.execute(f"TRUNCATE {TABLE}")
            if conn.execute("SELECT to_regclass('reshard.copy_cursor')").fetchone()[0]:
                conn.execute("DELETE FROM reshard.copy_cursor")
                conn.execute("DELETE FROM reshard.applied_rows")
            conn.execute("CHECKPOINT")


def raw_pipe(config, predicates: dict[str, str]) -> float:
    """Seconds for every target's share, piped in parallel through psql (one pipe each)."""
    src = config.cluster("source1").dsn
    procs = []
    t0 = time.monotonic()
    for target, pred in predicates.items():
        out = f"COPY (SELECT * FROM {TABLE} WHERE {pred}) TO STDOUT"
        into = f"COPY {TABLE} FROM STDIN"
        procs.append(subprocess.Popen(
            'psql -X -q -v ON_ERROR_STOP=1 -d "$SRC" -c "$OUT" | psql -X -q -v ON_ERROR_STOP=1 -d "$DST" -c "$INTO"',
            shell=True, env={**os.environ, "SRC": src, "DST": config.cluster(target).dsn, "OUT": out, "INTO": into}))
    for p in procs:
        if p.wait() != 0:
            raise SystemExit("the raw COPY pipe failed")
    return time.monotonic() - t0


def uri(dsn: str) -> str:
    c = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgresql://{c.get('user', 'postgres')}@{c.get('host', '127.0.0.1')}:{c.get('port', 5432)}/{c['dbname']}"


def pgcopydb(config, workdir: Path) -> float:
    """Seconds for `pgcopydb copy table-data` of the whole table into target1."""
    filters = workdir / "filters.ini"
    filters.write_text(f"[include-only-table]\n{TABLE}\n")
    shutil.rmtree(workdir / "pgcopydb", ignore_errors=True)
    t0 = time.monotonic()
    out = subprocess.run(["pgcopydb", "copy", "table-data", "--source", uri(config.cluster("source1").dsn),
                          "--target", uri(config.cluster("target1").dsn), "--dir", str(workdir / "pgcopydb"),
                          "--filters", str(filters), "--table-jobs", "2"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pgcopydb failed:\n{out.stderr[-3000:]}")
    return time.monotonic() - t0


def reshard_copy(cfg: Path, maps: Path, name: str, workers: int, tmp: Path,
                 throttle: str = "off") -> tuple[float, float, int, int]:
    """(copy seconds, whole-step seconds, rows, peak RSS in KiB) of `reshard start`, as it
    reports them: the copy from its first batch to its last commit (boundary queries
    included), the step with the publication, the slot and the connector's registration."""
    out = subprocess.run(["/usr/bin/time", "-f", "%M", sys.executable, "-m", "reshard.cli", "--config", str(cfg),
                          "--progress", "off", "start", name, "--to", str(maps), "--copy-workers", str(workers),
                          "--throttle", throttle, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"reshard start failed:\n{out.stderr}")
    doc = json.loads(out.stdout)
    rss = int(out.stderr.strip().splitlines()[-1])
    return doc["copy_seconds"], doc["seconds"], doc["rows_copied"], rss


def setup(db: str, name: str, rows: int, targets: list[str], major: int | None = None, shape: str = "wide"):
    """Fresh databases, ``rows`` accounts (of ``shape``) on source1 to move to ``targets``, a config
    file and the target map on disk; a throwaway migration activates today's map. Returns
    (config, config path, map path, coordinator, before map, after map)."""
    config = fresh_databases(stack_config(major), db, name)
    before, after = seed_split(config, rows, targets, shape)
    tmp = Path(tempfile.mkdtemp(prefix="reshard-bench-"))
    cfg = tmp / "reshard.yaml"
    write_config(config, cfg)
    maps = tmp / "after.yaml"
    maps.write_text(yaml.safe_dump(after))
    co = Coordinator.open(config)
    co.create(f"{name}0", parse_map(after, config.clusters), parse_map(before, config.clusters))
    co.teardown(f"{name}0")
    return config, cfg, maps, co, before, after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copy-workers", type=int, default=2)
    ap.add_argument("--targets", type=int, choices=[1, 2], default=2,
                    help="2: split 1 -> 2 (two units); 1: everything to target1 (one unit, chunked)")
    ap.add_argument("--shape", choices=SHAPES, default="wide",
                    help="wide: the demo's accounts (jsonb, a TOASTed text); narrow: id bigint, a int, b text of 96 "
                         "characters, c numeric(12,2), d timestamptz, where per-row costs show")
    ap.add_argument("--throttle", default="off",
                    help="reshard's --throttle for its runs, comma-separated to run each in every round: off, "
                         "default (adaptive), or both (off,default)")
    ap.add_argument("--json", action="store_true")
    add_pg_version(ap)
    args = ap.parse_args()
    targets = CLUSTERS[: args.targets]
    throttles = args.throttle.split(",")
    if not set(throttles) <= {"off", "default"}:
        ap.error("--throttle takes off, default or off,default")

    config, cfg, maps, co, before, after = setup(DB, NAME, args.rows, targets, args.pg_version, args.shape)
    tmp = cfg.parent
    p = plan(parse_map(before, config.clusters), parse_map(after, config.clusters))
    predicates = {m.target: p.predicate_sql(m, TABLE).as_string(None) for m in p.moves}
    rounds = []
    runs = {"off": "reshard", "default": "reshard_default"}  # the figure's key per --throttle
    kinds = [runs[t] for t in throttles] + ["raw"] + (["pgcopydb"] if shutil.which("pgcopydb") else [])
    for r in range(args.rounds):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        row: dict = {"round": r + 1}
        for kind in order:
            empty_targets(config, targets)
            if kind == "raw":
                secs = raw_pipe(config, predicates)
                row["raw_rows_per_s"] = round(args.rows / secs)
            elif kind == "pgcopydb":
                row["pgcopydb_rows_per_s"] = round(args.rows / pgcopydb(config, tmp))
            else:
                name = f"{NAME}{r + 1}{'d' if kind == 'reshard_default' else ''}"
                throttle = "adaptive" if kind == "reshard_default" else "off"
                secs, step_secs, rows, rss = reshard_copy(cfg, maps, name, args.copy_workers, tmp, throttle)
                if rows != args.rows:
                    raise SystemExit(f"reshard copied {rows} rows, expected {args.rows}")
                row.update({f"{kind}_rows_per_s": round(rows / secs),
                            f"{kind}_step_rows_per_s": round(rows / step_secs),
                            f"{kind}_peak_rss_mb": round(rss / 1024)})
                co.teardown(name)
        row["load"] = load_average()
        rounds.append(row)
        ours = ", ".join(f"{k} {row[k + '_rows_per_s']:,} rows/s (whole step {row[k + '_step_rows_per_s']:,}; "
                         f"peak RSS {row[k + '_peak_rss_mb']} MB)" for k in kinds if k.startswith("reshard"))
        print(f"round {r + 1}: {ours}, raw COPY pipe {row['raw_rows_per_s']:,} rows/s, pgcopydb "
              f"{row.get('pgcopydb_rows_per_s', '-')} rows/s; load {row['load']}",
              file=sys.stderr, flush=True)
    raw = median([x["raw_rows_per_s"] for x in rounds])
    doc = {"benchmark": "copy_throughput", "version": 2, "rows": args.rows, "rounds": args.rounds,
           "targets": args.targets, "shape": args.shape, "copy_workers": args.copy_workers,
           "cpus": os.cpu_count(), "raw_pipe_rows_per_s": raw, "all": rounds}
    for kind in kinds:
        if kind.startswith("reshard"):
            ours, step = (median([x[f"{kind}_{f}"] for x in rounds]) for f in ("rows_per_s", "step_rows_per_s"))
            doc.update({f"{kind}_rows_per_s": ours, f"{kind}_step_rows_per_s": step,
                        f"{kind}_ratio": round(ours / raw, 2), f"{kind}_step_ratio": round(step / raw, 2),
                        f"{kind}_peak_rss_mb": max(x[f"{kind}_peak_rss_mb"] for x in rounds)})
    if "pgcopydb" in kinds:
        doc["pgcopydb_rows_per_s"] = median([x["pgcopydb_rows_per_s"] for x in rounds])
    if args.json:
        print(json.dumps(doc, indent=2))
        return
    how = "split 1 -> 2" if args.targets == 2 else "moved 1 -> 1 (one unit)"
    print(f"copy of {args.rows:,} {args.shape} rows {how}, medians of {args.rounds} alternating rounds "
          f"({os.cpu_count()} CPUs)")
    print(f"  raw COPY pipe ({args.targets} pipe(s))          {raw:>10,.0f} rows/s")
    for kind in kinds:
        if kind.startswith("reshard"):
            label = "--throttle off" if kind == "reshard" else "default throttle"
            print(f"  reshard start, {label:<17} {doc[kind + '_rows_per_s']:>10,.0f} rows/s  "
                  f"/ pipe {doc[kind + '_ratio']}  (whole step {doc[kind + '_step_ratio']}; "
                  f"peak RSS {doc[kind + '_peak_rss_mb']} MB)")
    if "pgcopydb" in kinds:
        print(f"  pgcopydb (whole table, 1 target)  {doc['pgcopydb_rows_per_s']:>10,.0f} rows/s")


if __name__ == "__main__":
    main()
