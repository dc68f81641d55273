"""A running `reshard apply` serves Prometheus metrics measured on the real stack, and a
worker stopped with SIGTERM stops counting as live at once."""

from __future__ import annotations

import signal
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from reshard.control.store import ControlStore
from reshard.cutover.gates import applier_gate
from reshard.stack.stack import free_port
from tests.e2e.helpers import prepare, spawn, wait_for, write_config_file


def _scrape(port: int, migration: str) -> dict[tuple, float]:
    """(sample name, sorted labels without migration) -> value, for this migration's samples."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("migration") == migration:
                labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "migration"))
                out[(s.name, labels)] = s.value
    return out


def _sum(samples: dict, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def test_worker_metrics_count_what_was_applied_and_sigterm_deregisters_at_once(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=2000, migration=name)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    port = free_port()
    worker = spawn(cfg, tmp_path / "apply.log", "apply", name, "--metrics-port", str(port))
    try:
        with env.conn("source1") as conn:
            conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 1500")
        co.wait(name, timeout=90)
        samples = wait_for(lambda: (lambda s: s if any(n == "reshard_applier_partition_lag_records" for n, _ in s)
                                    else None)(_scrape(port, name)), 30, "librdkafka's consumer lag statistics")
        assert _sum(samples, "reshard_applier_records_total") >= 1500
        assert samples[("reshard_applier_records_total", (("stream", "fwd:source1"),))] >= 1500
        applied = _sum(samples, "reshard_applier_events_applied_total")
        assert 1500 <= applied <= _sum(samples, "reshard_applier_records_total")
        assert {dict(labels)["cluster"] for n, labels in samples if n == "reshard_applier_events_applied_total"} \
            == {"target1", "target2"}
        assert _sum(samples, "reshard_applier_batch_seconds_count") >= 1
        assert _sum(samples, "reshard_applier_dead_letters_total") == 0
        lag = samples[("reshard_applier_lag_seconds", (("stream", "fwd:source1"),))]
        assert 0 <= lag < 60
        # librdkafka's statistics come every 5 s: the first may predate the catch-up
        wait_for(lambda: all(v == 0 for (n, _), v in _scrape(port, name).items()
                             if n == "reshard_applier_partition_lag_records"), 30,
                 "librdkafka's consumer lag to read 0 once caught up")
        assert _sum(samples, "reshard_applier_up") == 1

        store = ControlStore(env.config.control_dsn)
        assert applier_gate(store, name).ok
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0
        (w,) = store.workers(name)
        assert w["stopped_at"] is not None and not w["live"]
        assert not applier_gate(store, name).ok  # at once, not a heartbeat period later
        assert "metrics_port" in w["stats"] and w["stats"]["metrics_port"] == port
    finally:
        if worker.poll() is None:
            worker.kill()
