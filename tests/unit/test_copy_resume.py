"""How a run of the copy starts on a source, from what earlier runs recorded (snapshotter/resume.py)."""

import pytest

from reshard.errors import MigrationError
from reshard.snapshotter.resume import chunk_count, source_start


def start(**kw):
    args = {"slot_exists": True, "slot_lsn": "0/200", "recorded_lsn": "0/100", "pending_units": 0, **kw}
    return source_start("m1", "reshard_m1", "source1", **args)


def test_a_first_run_creates_the_slot_and_copies_at_its_snapshot():
    s = start(slot_exists=False, slot_lsn=None, recorded_lsn=None, pending_units=2)
    assert s.create_slot and not s.fresh_snapshot and s.consistent_lsn is None


def test_a_rerun_keeps_the_recorded_position_and_copies_what_is_left_at_a_fresh_snapshot():
    s = start(pending_units=1)
    assert not s.create_slot and s.fresh_snapshot and s.consistent_lsn == "0/100"  # not the slot's newer position


def test_a_rerun_with_every_unit_done_copies_nothing():
    assert start(pending_units=0) == type(start())(create_slot=False, consistent_lsn="0/100", fresh_snapshot=False)


def test_a_crash_before_the_position_was_recorded_starts_the_stream_at_the_slot():
    assert start(recorded_lsn=None, pending_units=3).consistent_lsn == "0/200"


def test_a_slot_gone_after_its_position_was_recorded_cannot_be_resumed():
    with pytest.raises(MigrationError, match="replication slot reshard_m1 on source1 is gone .* abort this migration"):
        start(slot_exists=False, slot_lsn=None)


@pytest.mark.parametrize(("rows", "workers", "batch", "chunks"), [
    (0, 4, 1000, 1), (999, 4, 1000, 1), (1001, 4, 1000, 2), (10**6, 4, 1000, 4), (10**6, 1, 1000, 1)])
def test_a_unit_is_split_into_one_chunk_per_worker_but_none_under_a_batch(rows, workers, batch, chunks):
    assert chunk_count(rows, workers, batch) == chunks
