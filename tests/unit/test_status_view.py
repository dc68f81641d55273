"""The human status: figures as sentences (no Python reprs), estimates labelled, copy
progress never past 100 %, rates and ETAs only from two readings."""

from reshard.observe.status_view import human, human_bytes, rates


def _doc(copied: int, done: bool = False, lag_records: int = 500) -> dict:
    return {
        "migration": "m1", "state": "streaming", "from_epoch": 1, "to_epoch": 2, "error": None, "unreachable": {},
        "moves": [{"id": "m-1", "keys": "buckets 0-2047 source1 -> target1"}],
        "copy": [{"move_id": "m-1", "table": "public.accounts", "rows_copied": copied, "rows_estimate": 20000,
                  "done": done, "throttle": None}],
        "streams": [{"direction": "fwd", "cluster": "source1", "slot": "s1", "connector": "c1", "from_lsn": "0/1",
                     "state": "RUNNING", "tasks": ["RUNNING"]}],
        "waves": [], "last_attempt": None,
        "lag": {"records": lag_records, "topics": {"t": lag_records},
                "streams": [{"stream": "fwd:source1", "cluster": "source1", "slot": "s1", "active": True,
                             "lag_bytes": 2048, "retained_bytes": 5 * 1024 * 1024}]},
        "workers": [{"worker": "w1", "live": True, "stopped_at": None, "idle_s": 0.5,
                     "stats": {"applied": 1200, "dead_letters": 0, "recent_events_per_second": 350.0,
                               "lag_seconds": {"fwd:source1": 0.8}, "metrics_port": 9710}}],
        "events": [{"id": 1, "at": "2026-11-22T00:00:01+00:00", "event": "state", "detail": {"state": "streaming"}}],
    }


def test_finished_copy_past_its_estimate_says_done_not_over_100_percent():
    text = human(_doc(20013, done=True))
    assert "20,013 rows, done (estimated 20,000)" in text
    assert "%" not in text.split("copy")[1].splitlines()[0]


def test_no_python_reprs_and_the_facts_are_sentences():
    text = human(_doc(5000))
    assert "[" not in text and "{" not in text
    assert "5,000 of about 20,000 rows (25%, the total is an estimate)" in text
    assert "connector c1 RUNNING (1 task RUNNING)" in text
    assert "500 Kafka records not yet applied, newest applied change 0.8s after its commit" in text
    assert "2.0 KiB unconfirmed, 5.0 MiB of WAL retained" in text
    assert "1,200 applied, 350 events/s now" in text and "00:00:01 state (state streaming)" in text


def test_rates_and_etas_come_from_two_readings():
    r = rates(_doc(5000, lag_records=500), _doc(7000, lag_records=300), 2.0)
    assert r.copy_rows_per_s[("m-1", "public.accounts")] == 1000 and r.lag_drain_per_s == 100
    text = human(_doc(7000, lag_records=300), r)
    assert "1,000 rows/s, ETA ~13s" in text
    assert "draining 100/s, caught up in ~3s (estimate)" in text
    assert rates(None, _doc(1), 1.0) is None


def test_unreachable_parts_are_named():
    d = _doc(1)
    d["unreachable"] = {"kafka": "Kafka at 127.0.0.1:1 did not answer"}
    assert "could not reach kafka: Kafka at 127.0.0.1:1 did not answer" in human(d)


def test_bytes():
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(None) == "?"


def test_routers_and_shadow_reads_are_sentences():
    doc = _doc(5000)
    doc["state"] = "shadowing"
    doc["routers"] = {"reporting": 2, "counters": {"reads": 12000, "writes": 3400, "errors": 3, "fence_rejections": 7},
                      "shadow": {"setting": {"sample": 0.01, "tables": {}}, "tables": {"public.accounts": {
                          "sampled": 120, "matched": 117, "differed": 3, "lag": 2, "mismatches": 1, "dropped": 0}}}}
    text = human(doc)
    assert "routers: 2 reporting, 12,000 reads, 3,400 writes, 3 errors, 7 fence rejections" in text
    assert "shadow reads: sample 0.01" in text
    assert "public.accounts: 120 compared, 117 matched, 2 settled as lag, 1 MISMATCHED" in text
    assert "dropped" not in text
