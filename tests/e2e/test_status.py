"""`reshard status` on the real stack: a migration streaming with a live worker reads as
sentences with lag in records and seconds and the worker's current rate; `--watch --json`
streams one document per refresh until interrupted."""

import json
import signal
import subprocess
import time

from tests.e2e.helpers import prepare, reshard_cmd, spawn, wait_for, write_config_file


def test_status_once_and_watched(env, tmp_path):
    name = env.migration()
    co = prepare(env, rows=2000, migration=name)
    co.start(name)
    cfg = write_config_file(env, tmp_path)
    worker = spawn(cfg, tmp_path / "apply.log", "apply", name, "--metrics-port", "0")
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

        watch = subprocess.Popen(reshard_cmd(cfg, "status", name, "--watch", "--json", "--interval", "0.5"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        docs = [json.loads(line) for line in out.splitlines()]
        assert len(docs) >= 2, out
        assert all(d["command"] == "status" and d["name"] == name and d["lag"]["records"] == 0 for d in docs)
    finally:
        worker.terminate()
        worker.wait(timeout=40)
