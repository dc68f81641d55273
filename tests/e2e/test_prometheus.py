"""A real Prometheus (Debian's package) scrapes `reshard exporter` and a `reshard apply`
worker on the embedded stack, evaluates monitoring/alerts.yml, and the no-live-applier
alert fires after the worker is stopped and clears after it is restarted. Every metric
the dashboard and the alert rules use is one Prometheus actually received."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.parse
import urllib.request

import yaml

from reshard.stack.stack import free_port
from tests.e2e.helpers import prepare, spawn, wait_for, write_config_file
from tests.monitoring import MONITORING, prometheus_binary


def _api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


def _value(port: int, query: str) -> float | None:
    result = _api(port, "query", query=query)["result"]
    return float(result[0]["value"][1]) if result else None


def _alert_state(port: int, alert: str, migration: str) -> str | None:
    for a in _api(port, "alerts")["alerts"]:
        if a["labels"].get("alertname") == alert and a["labels"].get("migration") == migration:
            return a["state"]
    return None


def _used_metrics() -> set[str]:
    """Metric names the dashboard's queries and the alert rules read."""
    exprs = [t["expr"] for p in json.loads((MONITORING / "grafana-dashboard.json").read_text())["panels"]
             for t in p["targets"]]
    exprs += [r["expr"] for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
              for r in g["rules"]]
    return {m for e in exprs for m in re.findall(r"\breshard_[a-z_]+\b", e)}


def test_prometheus_scrapes_and_the_no_live_applier_alert_fires_and_clears(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=2000, migration=name)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    apply_port, exporter_port, prom_port = free_port(), free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        # 2 s, not 1: on a loaded machine a scrape past its timeout leaves a gap in the series,
        # which resets the alert's pending minute
        "global": {"scrape_interval": "2s", "evaluation_interval": "1s"},
        "rule_files": [str(MONITORING / "alerts.yml")],
        "scrape_configs": [
            {"job_name": "reshard-exporter", "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}]},
            {"job_name": "reshard-apply", "static_configs": [{"targets": [f"127.0.0.1:{apply_port}"]}]},
        ],
    }))
    procs: list[subprocess.Popen] = []
    try:
        worker = spawn(cfg, tmp_path / "apply1.log", "apply", name, "--metrics-port", str(apply_port))
        procs.append(worker)
        procs.append(spawn(cfg, tmp_path / "exporter.log", "exporter", "--metrics-port", str(exporter_port),
                           "--interval", "1"))
        with open(tmp_path / "prometheus.log", "wb") as log:
            procs.append(subprocess.Popen(
                [str(prometheus_binary()), f"--config.file={tmp_path / 'prometheus.yml'}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=log, stderr=subprocess.STDOUT))
        with env.conn("source1") as conn:
            conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 500")
        co.wait(name, timeout=90)
        assert co.verify(name).equal

        # what Prometheus received: the exporter's view and the worker's, with the same facts
        live = f'reshard_appliers_live{{migration="{name}"}}'
        wait_for(lambda: _value(prom_port, live) == 1, 60, "Prometheus to see one live applier")
        assert _value(prom_port, f'reshard_migration_state{{migration="{name}", state="streaming"}}') == 1
        copied = sum(c["rows_copied"] for c in co.store.copy_progress(name))
        assert copied > 0 and _value(prom_port, f'sum(reshard_copy_rows_copied_total{{migration="{name}"}})') == copied
        assert _value(prom_port, f'min(reshard_copy_done{{migration="{name}"}})') == 1
        # the verification may land after the refresh that first showed the live applier
        wait_for(lambda: _value(prom_port, f'reshard_verification_equal{{migration="{name}"}}') == 1, 30,
                 "the exporter to read the verification")
        assert _value(prom_port, f'reshard_dead_letters_total{{migration="{name}"}}') == 0
        assert _value(prom_port, f'reshard_connector_state{{migration="{name}", state="RUNNING"}}') == 1
        assert _value(prom_port, f'reshard_slot_active{{migration="{name}"}}') == 1
        assert _value(prom_port, f'reshard_slot_wal_retained_bytes{{migration="{name}"}}') > 0
        wait_for(lambda: _value(prom_port, f'sum(reshard_applier_events_applied_total{{migration="{name}"}})'),
                 30, "the worker's applied events in Prometheus")
        wait_for(lambda: _value(prom_port, f'sum(reshard_consumer_lag_records{{migration="{name}"}})') == 0,
                 30, "the exporter's consumer lag to read 0 once caught up")
        assert _value(prom_port, 'sum(reshard_exporter_errors_total)') in (None, 0)

        names = set(_api(prom_port, "label/__name__/values"))
        # fences exist only once a cutover installed them, router counters once a router reports, the
        # continuous check's once `verify --continuous` ran, the throttle cap once `reshard throttle` set
        # one, the WAL-budget wait while a copy runs, the slot's keep limit where max_slot_wal_keep_size
        # is set (this stack leaves it unlimited); the rules test covers those alerts, and test_live_control
        # reads the last two from the exporter
        missing = _used_metrics() - names - {"reshard_fence_mode", "reshard_fence_installed_timestamp_seconds",
                                             "reshard_router_operations_total",
                                             "reshard_continuous_check_divergent_keys",
                                             "reshard_throttle_max_rows_per_second", "reshard_copy_wal_paused",
                                             "reshard_slot_wal_keep_limit_bytes"}
        assert not missing, f"the dashboard or the rules use metrics nothing exports: {sorted(missing)}"

        assert _alert_state(prom_port, "ReshardNoLiveApplier", name) is None
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=40) == 0
        wait_for(lambda: _value(prom_port, live) == 0, 30, "Prometheus to see no live applier")
        wait_for(lambda: _alert_state(prom_port, "ReshardNoLiveApplier", name) == "pending", 30,
                 "the alert to be pending")
        wait_for(lambda: _alert_state(prom_port, "ReshardNoLiveApplier", name) == "firing", 180,
                 "the alert to fire after its 1m")

        procs.append(spawn(cfg, tmp_path / "apply2.log", "apply", name, "--metrics-port", str(apply_port)))
        wait_for(lambda: _alert_state(prom_port, "ReshardNoLiveApplier", name) is None, 60,
                 "the alert to clear once a worker runs again")
        assert _value(prom_port, live) == 1
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
