"""`reshard status` on the real stack: a migration streaming with a live worker reads as
sentences with lag in records and seconds and the worker's current rate; `--watch --json`
streams one document per refresh until interrupted; Kafka's own kafka-consumer-groups
(shipped with the stack) describes the appliers' group; `reshard report` plots what the
worker recorded."""

import json
import signal
import subprocess

from tests.e2e.helpers import prepare, reshard_cmd, spawn, wait_for, write_config_file


def test_status_once_and_watched(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=2000, migration=name)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    worker = spawn(cfg, tmp_path / "apply.log", "apply", name, "--metrics-port", "0", "--sample-interval", "2")
    try:
        with env.conn("source1") as conn:
            conn.execute("UPDATE public.accounts SET balance = balance + 1 WHERE id <= 1500")
        co.wait(name, timeout=90)
        wait_for(lambda: any(w["live"] and w["stats"].get("lag_seconds") for w in co.store.workers(name)), 30,
                 "the worker's heartbeat with its lag")

        once = subprocess.run(reshard_cmd(cfg, "status", name), capture_output=True, text=True, timeout=60)
        assert once.returncode == 0, once.stderr
        text = once.stdout
        assert f"migration {name}: streaming" in text
        assert "0 Kafka records not yet applied, newest applied change" in text
        assert "(running): " in text and "events/s now" in text and "last events:" in text
        assert "rows, done" in text and "[" not in text and "{" not in text  # no Python reprs

        groups = subprocess.run(reshard_cmd(cfg, "stack", "consumer-groups", "--describe", "--group",
                                            f"reshard-{name}-applier"), capture_output=True, text=True, timeout=120)
        assert groups.returncode == 0, groups.stderr
        assert f"reshard.{name}.fwd.source1.public.accounts" in groups.stdout and "LAG" in groups.stdout

        # started as a background job is (SIGINT ignored, as a shell without job control
        # leaves it): the watch must still stop on SIGINT, and on SIGTERM
        for sig in (signal.SIGINT, signal.SIGTERM):
            out_file = tmp_path / f"watch-{sig.name}.out"
            with open(out_file, "wb") as out_fh:
                watch = subprocess.Popen(reshard_cmd(cfg, "status", name, "--watch", "--json", "--interval", "0.5"),
                                         stdout=out_fh, stderr=subprocess.PIPE, text=True,
                                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                wait_for(lambda out_file=out_file: out_file.read_bytes().count(b"\n") >= 2, 60,
                         "two documents from status --watch --json")
                watch.send_signal(sig)
                _out, err = watch.communicate(timeout=30)
            assert watch.returncode == 0, err
        docs = [json.loads(line) for line in out_file.read_text().splitlines()]
        assert len(docs) >= 2, docs
        assert all(d["command"] == "status" and d["migration"] == name and d["lag"]["records"] == 0 for d in docs)

        # the worker recorded samples as it ran: a PNG of its rate and lag
        png = tmp_path / "life.png"
        made = subprocess.run(reshard_cmd(cfg, "report", name, "--out", str(png), "--json"), capture_output=True,
                              text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        doc = json.loads(made.stdout)
        assert doc["samples"] >= 2 and doc["workers"] == 1 and doc["max_events_per_second"] > 0
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    finally:
        worker.terminate()
        worker.wait(timeout=40)
